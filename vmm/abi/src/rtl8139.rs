//! The RTL8139 register interface: what tinyvmm's NIC (`vmm::devices::rtl8139`) models and
//! the bundled guest's driver programs, defined once for both.

/// Register offsets.
pub mod reg {
    pub const IDR0: u16 = 0x00;
    pub const TSD0: u16 = 0x10;
    pub const TSAD0: u16 = 0x20;
    pub const RBSTART: u16 = 0x30;
    pub const CR: u16 = 0x37;
    pub const CAPR: u16 = 0x38;
    pub const CBR: u16 = 0x3a;
    pub const IMR: u16 = 0x3c;
    pub const ISR: u16 = 0x3e;
    pub const TCR: u16 = 0x40;
    pub const RCR: u16 = 0x44;
    /// Size of the register window.
    pub const SIZE: u16 = 0x100;
}

/// `CR` bits.
pub mod cr {
    pub const BUFE: u8 = 0x01;
    pub const TE: u8 = 0x04;
    pub const RE: u8 = 0x08;
    pub const RST: u8 = 0x10;
}

/// `ISR`/`IMR` bits.
pub mod isr {
    pub const ROK: u16 = 0x0001;
    pub const RER: u16 = 0x0002;
    pub const TOK: u16 = 0x0004;
    pub const TER: u16 = 0x0008;
    pub const RXOVW: u16 = 0x0010;
    /// System error: a DMA address outside guest RAM.
    pub const SERR: u16 = 0x8000;
}

/// `TSD` bits: size in 0..=12, OWN (the NIC is done with the buffer), TOK, TABT.
pub mod tsd {
    pub const SIZE_MASK: u32 = 0x1fff;
    pub const OWN: u32 = 1 << 13;
    pub const TOK: u32 = 1 << 15;
    pub const TABT: u32 = 1 << 30;
}

/// `RCR` bits the device honours: accept all, physical match, multicast, broadcast; WRAP;
/// RBLEN (bits 11-12: ring of 8 KiB << n, plus 16 bytes).
pub mod rcr {
    pub const AAP: u32 = 0x01;
    pub const APM: u32 = 0x02;
    pub const AM: u32 = 0x04;
    pub const AB: u32 = 0x08;
    pub const WRAP: u32 = 0x80;
}

/// Receive header status bit: received OK.
pub const RX_STATUS_ROK: u16 = 0x0001;
/// Largest frame sent or received (Ethernet without FCS; the chip's TSD size field allows
/// up to 8 KiB, more than any frame on this link).
pub const MAX_FRAME: usize = 1514;
/// Room past the ring's end the chip may write into when `RCR.WRAP` is set (Linux's
/// `8139too` allocates the ring with this much more: 16 + 2048 bytes).
pub const WRAP_SLACK: u32 = 16 + 2048;
