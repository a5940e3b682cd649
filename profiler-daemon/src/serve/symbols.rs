//! Guest symbols for the VMs, loaded once per distinct source and shared: fifty VMs of one
//! image share one symbolizer. Loading a real vmlinux takes seconds, so it runs on its own
//! thread; the collector keeps polling the maps meanwhile (the VM has no function series
//! until its symbols are ready).
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;

use symbolizer::{GuestSymbols, Symbolizer};

enum Slot {
    Loading(Receiver<Result<Symbolizer, String>>),
    Ready(Arc<Symbolizer>),
    Failed(String),
}

/// What a lookup says now.
pub enum Lookup {
    Loading,
    Ready(Arc<Symbolizer>),
    /// Why the symbols cannot be loaded (one line).
    Failed(String),
}

#[derive(Default)]
pub struct SymbolCache {
    // A handful of sources per host: a list is enough (GuestSymbols is not Hash).
    slots: Vec<(GuestSymbols, Slot)>,
}

impl SymbolCache {
    /// The symbolizer of `src`, starting its load on first use.
    pub fn get(&mut self, src: &GuestSymbols) -> Lookup {
        let i = match self.slots.iter().position(|(s, _)| s == src) {
            Some(i) => i,
            None => {
                let (tx, rx) = channel();
                let s = src.clone();
                let spawned = std::thread::Builder::new().name("kvmprof-symbols".into()).spawn(move || {
                    let r = match s.load() {
                        Ok(Some(sym)) => Ok(sym),
                        Ok(None) => Err("no vmlinux or kallsyms given".to_string()),
                        Err(e) => Err(super::collector::error_line(&e)),
                    };
                    let _ = tx.send(r);
                });
                let slot = match spawned {
                    Ok(_) => Slot::Loading(rx),
                    Err(e) => Slot::Failed(format!("cannot start a thread to load symbols: {e}")),
                };
                self.slots.push((src.clone(), slot));
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[i].1;
        if let Slot::Loading(rx) = slot {
            match rx.try_recv() {
                Ok(Ok(sym)) => *slot = Slot::Ready(Arc::new(sym)),
                Ok(Err(e)) => *slot = Slot::Failed(e),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => *slot = Slot::Failed("the symbol loader stopped".into()),
            }
        }
        match slot {
            Slot::Loading(_) => Lookup::Loading,
            Slot::Ready(s) => Lookup::Ready(s.clone()),
            Slot::Failed(e) => Lookup::Failed(e.clone()),
        }
    }

    /// Forget the sources that failed (a config reload: a missing file may be there now).
    /// Loaded ones stay: VMs keep sharing them.
    pub fn clear_failed(&mut self) {
        self.slots.retain(|(_, s)| !matches!(s, Slot::Failed(_)));
    }
}
