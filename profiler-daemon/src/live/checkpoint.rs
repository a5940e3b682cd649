//! Crash safety of `kvmprof record`: while it runs, the profile so far is written to the
//! output file every [`INTERVAL`], marked `partial` (see `model::Meta::partial`), so a
//! `record` killed by SIGKILL or the OOM killer leaves its last checkpoint, which `report`
//! reads and calls partial. The final file (Ctrl-C, SIGTERM, --duration, the VM's exit)
//! replaces it, unmarked.
//!
//! Each write is `recording::save`: a temporary file beside the output, then a rename, so a
//! reader sees the previous checkpoint or the next, never half of one. A checkpoint reads the
//! in-kernel maps without resetting anything, so the final counts are the same with or
//! without checkpoints.
//!
//! Cost bound: a checkpoint re-writes the whole profile (with `--records`, every record so
//! far), so the next one waits at least [`MAX_SHARE`]⁻¹ times as long as this one took: at
//! most about a tenth of `record`'s time goes to checkpoints, however large the file grows.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::session::Session;
use crate::model::recording;

/// The longest a `record` runs between checkpoints (unless one takes long, see above).
pub const INTERVAL: Duration = Duration::from_secs(2);
/// A checkpoint may take at most this share of the time between two.
const MAX_SHARE: u32 = 10;

pub struct Checkpointer {
    path: PathBuf,
    next: Instant,
    /// Checkpoints written.
    pub written: u64,
    /// A checkpoint failed (and was warned about, once).
    failed: bool,
}

impl Checkpointer {
    pub fn new(path: &Path) -> Checkpointer {
        Checkpointer { path: path.to_path_buf(), next: Instant::now() + INTERVAL, written: 0, failed: false }
    }

    /// Writes a checkpoint when one is due. A failed one (a full disk) leaves the previous
    /// checkpoint, or an older file at the path, as it was; recording goes on (the disk may
    /// have room again for the final file), with one warning the first time.
    pub fn tick(&mut self, session: &mut Session, quiet: bool) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        let written = session.snapshot().map_err(anyhow::Error::from).and_then(|mut p| {
            p.meta.partial = true;
            Ok(recording::save(&p, &self.path)?)
        });
        match written {
            Ok(()) => self.written += 1,
            Err(e) if !self.failed && !quiet => {
                self.failed = true;
                eprintln!("kvmprof: warning: checkpoint not written ({e:#}); recording goes on, the final write may fail too");
            }
            Err(_) => self.failed = true,
        }
        let took = now.elapsed();
        self.next = Instant::now() + INTERVAL.max(took * MAX_SHARE);
    }
}
