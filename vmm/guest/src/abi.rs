//! The contract with tinyvmm: the `tinyvmm-abi` crate, shared with the VMM.
pub use tinyvmm_abi::*;
