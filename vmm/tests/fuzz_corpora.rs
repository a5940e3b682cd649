//! Replays the committed fuzz seeds and regression inputs (`fuzz/seeds/TARGET`,
//! `fuzz/regressions/TARGET`) through the same harnesses the cargo-fuzz targets run
//! (`vmm::fuzz`): each ends with its invariant checks (IDE write and read-back, PIC, PIT,
//! counters). `scripts/fuzz.sh` does the fuzzing.
use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else { continue };
        for e in dir {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            if std::panic::catch_unwind(|| harness(&data)).is_err() {
                panic!("{target}: {} broke the harness's invariant", p.display());
            }
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn port_io_seeds_keep_every_device_working() {
    replay("port_io", vmm::fuzz::port_io);
    // The empty sequence too: the checks alone.
    vmm::fuzz::port_io(&[]);
}

#[test]
fn batch_hypercall_seeds_replay_all_or_nothing() {
    replay("batch_hypercall", vmm::fuzz::batch_hypercall);
    vmm::fuzz::batch_hypercall(&[]);
}
