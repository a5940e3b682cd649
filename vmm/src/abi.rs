//! The contract with the bundled guest lives in the `tinyvmm-abi` crate (`vmm/abi`), shared with
//! the guest so every number is defined once; see its docs for the guest memory layout.
pub use tinyvmm_abi::*;
