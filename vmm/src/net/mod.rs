//! Networking for the NIC ([`crate::devices::rtl8139`]) and its experiments: a TAP backend
//! ([`tap`]), the test network of namespaces standing for the paper's machines ([`lab`]),
//! and host-side UDP peers that speak the guest's stream format ([`peer`]).
pub mod lab;
pub mod peer;
pub mod tap;
