//! Two tiny ports: the guest's exit port (0x501, one byte = exit status, as QEMU's
//! isa-debug-exit) and a null device on 0x80 that only counts writes (the benchmark's
//! target port).

use crate::abi::{PORT_EXIT, PORT_NULL};
use crate::bus::PortDevice;

#[derive(Default)]
pub struct DebugPorts {
    /// Set when the guest writes its exit status; the vCPU loop stops on it.
    pub exit_status: Option<u8>,
    pub null_writes: u64,
}

impl PortDevice for DebugPorts {
    fn read(&mut self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write(&mut self, port: u16, data: &[u8]) {
        match port {
            PORT_EXIT => self.exit_status = Some(data.first().copied().unwrap_or(0)),
            PORT_NULL => self.null_writes += 1,
            _ => {}
        }
    }
}
