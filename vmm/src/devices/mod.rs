//! One module per device. Every device implements [`crate::bus::PortDevice`] and treats
//! what the guest writes as hostile: no value the guest controls can make it panic.

pub mod debug;
pub mod ide;
pub mod pic;
pub mod pit;
pub mod pmtimer;
pub mod rtl8139;
pub mod serial;

/// Assembles up to 4 little-endian bytes into a value (a shorter access zero-extends).
#[inline]
pub(crate) fn le_value(data: &[u8]) -> u32 {
    let mut v = [0u8; 4];
    let n = data.len().min(4);
    v[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(v)
}

/// Fills a read buffer with a value's low bytes, little-endian.
#[inline]
pub(crate) fn put_value(data: &mut [u8], v: u32) {
    let b = v.to_le_bytes();
    for (i, d) in data.iter_mut().enumerate() {
        *d = b.get(i).copied().unwrap_or(0);
    }
}
