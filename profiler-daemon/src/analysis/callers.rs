//! Callers (the paper's Table 3): the caller address is the return address in the caller
//! (where the trapping function returns to), as read from the guest stack at `[RBP + 8]` by the
//! eBPF programs at each exit. Its function is looked up at `address - 1`, i.e. at the call
//! instruction: a call that is the last instruction of a function (a call to a `noreturn`
//! function) returns to the first byte of the next one.
use crate::model::Exit;

/// The function that made the call returning to `caller`.
pub fn caller_function(caller: u64, resolve: &dyn Fn(u64) -> Option<String>) -> Option<String> {
    resolve(caller.checked_sub(1)?)
}

/// `(exits with an unknown caller, all exits)`.
pub fn unknown_callers(exits: &[Exit]) -> (u64, u64) {
    let total = exits.iter().map(|e| e.stats.count).sum();
    let unknown = exits.iter().filter(|e| e.caller.is_none()).map(|e| e.stats.count).sum();
    (unknown, total)
}
