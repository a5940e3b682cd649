#![no_main]
//! See profiler_daemon::fuzz::recording for the input and the invariant checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| profiler_daemon::fuzz::recording(data));
