//! A TAP device as the NIC's backend: Ethernet frames in both directions through
//! `/dev/net/tun` (`IFF_TAP | IFF_NO_PI`), non-blocking, polled from the VMM's event loop.
//! The interface is created by name (or attached to, if it exists and this process may) and
//! removed when the last descriptor closes, unless it was made persistent elsewhere.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::devices::rtl8139::NetBackend;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded? are you root?)")]
    Open(#[source] std::io::Error),
    #[error("cannot create or attach TAP device {name} (needs CAP_NET_ADMIN; is it in use by another process?)")]
    Attach {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Creates (or attaches to) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.into()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::Open)?;
        let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags: IFF_TAP | IFF_NO_PI, _pad: [0; 22] };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and writes back the name into) a `struct ifreq`, which
        // `IfReq` lays out in full (40 bytes); the fd is the open tun device.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
        if rc < 0 {
            return Err(TapError::Attach { name: name.into(), source: std::io::Error::last_os_error() });
        }
        Ok(Tap { file, name: name.into() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl NetBackend for Tap {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        match self.file.write(frame) {
            Ok(n) if n == frame.len() => Ok(()),
            Ok(n) => Err(std::io::Error::other(format!("short TAP write: {n} of {} bytes", frame.len()))),
            Err(e) => Err(e),
        }
    }

    fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}
