#![no_main]
//! See profiler_daemon::fuzz::guest_memory_map for the input and the invariant checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| profiler_daemon::fuzz::guest_memory_map(data));
