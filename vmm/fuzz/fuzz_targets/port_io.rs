#![no_main]
//! See vmm::fuzz::port_io for the input and the invariant checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzz::port_io(data));
