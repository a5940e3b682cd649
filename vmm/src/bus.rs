//! The port-I/O bus: one trait for every device, and a 64 Ki-entry table from port to
//! device so the hot path costs one index and one match.

use crate::devices::{debug::DebugPorts, ide::Ide, pic::Pic, pit::Pit, pmtimer::PmTimer, rtl8139::Rtl8139, serial::Uart};

/// A device on the port bus. `data.len()` is the access size (1, 2 or 4). Reads of
/// ports a device does not implement return all ones, like an ISA bus.
pub trait PortDevice {
    fn read(&mut self, port: u16, data: &mut [u8]);
    fn write(&mut self, port: u16, data: &[u8]);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Slot {
    None,
    Serial,
    Pit,
    Pic,
    PmTimer,
    Ide,
    Debug,
    Nic,
}

/// All devices of the VM. The doorbell port is not here: the vCPU loop owns it, because a
/// hypercall needs guest memory and replays onto this bus.
pub struct PortBus {
    map: Box<[Slot; 65536]>,
    pub serial: Uart,
    pub pit: Pit,
    pub pic: Pic,
    pub pmtimer: PmTimer,
    pub ide: Option<Ide>,
    pub debug: DebugPorts,
    /// The NIC (`--net`), once [`attach_nic`](Self::attach_nic) put it on the bus.
    pub nic: Option<Rtl8139>,
    /// Accesses to ports no device claims (counted, answered with all ones).
    pub unclaimed: u64,
}

impl PortBus {
    pub fn new(serial: Uart, pit: Pit, pic: Pic, pmtimer: PmTimer, ide: Option<Ide>, debug: DebugPorts) -> Self {
        let mut map = vec![Slot::None; 65536].into_boxed_slice().try_into().expect("64 Ki slots");
        let mut claim = |ports: std::ops::RangeInclusive<u16>, s: Slot| {
            for p in ports {
                let m: &mut Box<[Slot; 65536]> = &mut map;
                m[p as usize] = s;
            }
        };
        claim(0x3f8..=0x3ff, Slot::Serial);
        claim(0x40..=0x43, Slot::Pit);
        claim(0x20..=0x21, Slot::Pic);
        claim(0xa0..=0xa1, Slot::Pic);
        claim(crate::abi::PORT_PMTMR..=crate::abi::PORT_PMTMR + 3, Slot::PmTimer);
        if ide.is_some() {
            claim(0x1f0..=0x1f7, Slot::Ide);
            claim(0x3f6..=0x3f6, Slot::Ide);
        }
        claim(crate::abi::PORT_NULL..=crate::abi::PORT_NULL, Slot::Debug);
        claim(crate::abi::PORT_EXIT..=crate::abi::PORT_EXIT, Slot::Debug);
        PortBus { map, serial, pit, pic, pmtimer, ide, debug, nic: None, unclaimed: 0 }
    }

    /// Puts the NIC on the bus at its I/O base (ports no other device claims).
    pub fn attach_nic(&mut self, nic: Rtl8139) {
        for p in nic.ports() {
            if self.map[p as usize] == Slot::None {
                self.map[p as usize] = Slot::Nic;
            }
        }
        self.nic = Some(nic);
    }

    #[inline]
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        match self.map[port as usize] {
            Slot::Serial => self.serial.read(port, data),
            Slot::Pit => self.pit.read(port, data),
            Slot::Pic => self.pic.read(port, data),
            Slot::PmTimer => self.pmtimer.read(port, data),
            Slot::Ide => match self.ide.as_mut() {
                Some(d) => d.read(port, data),
                None => data.fill(0xff),
            },
            Slot::Debug => self.debug.read(port, data),
            Slot::Nic => match self.nic.as_mut() {
                Some(d) => d.read(port, data),
                None => data.fill(0xff),
            },
            Slot::None => {
                self.unclaimed += 1;
                data.fill(0xff)
            }
        }
    }

    #[inline]
    pub fn write(&mut self, port: u16, data: &[u8]) {
        match self.map[port as usize] {
            Slot::Serial => self.serial.write(port, data),
            Slot::Pit => self.pit.write(port, data),
            Slot::Pic => self.pic.write(port, data),
            Slot::PmTimer => self.pmtimer.write(port, data),
            Slot::Ide => {
                if let Some(d) = self.ide.as_mut() {
                    d.write(port, data)
                }
            }
            Slot::Debug => self.debug.write(port, data),
            Slot::Nic => {
                if let Some(d) = self.nic.as_mut() {
                    d.write(port, data)
                }
            }
            Slot::None => self.unclaimed += 1,
        }
    }
}
