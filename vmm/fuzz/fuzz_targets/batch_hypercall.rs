#![no_main]
//! See vmm::fuzz::batch_hypercall for the input and the invariant checked.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vmm::fuzz::batch_hypercall(data));
