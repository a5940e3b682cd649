//! Network backends for the NIC ([`crate::devices::rtl8139`]): a TAP device.
pub mod tap;
