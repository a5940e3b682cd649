//! IDE/ATA PIO driver, shaped like Linux 2.6's `ide_do_rw_disk`: one command per call,
//! 48-bit LBA, so each command writes the 11 task-file registers (5 "previous" HOB bytes,
//! 5 current bytes, device) plus the command register, like the paper's trace.
//!
//! Exits per call (`out`/`in` instructions, all in `ide_do_rw_disk` because the port
//! helpers are inlined, data transfer in `ide_output_data`/`ide_input_data`):
//! - unbatched: 0x1f7 in (ready), 0x1f1..0x1f5 out x2 each, 0x1f6 out, 0x1f7 out (command),
//!   0x1f7 in (DRQ), 0x1f0 `rep outsw`/`rep insw`, 0x1f7 in (done). KVM's emulator
//!   exits once per word for `rep outsw` but merges `rep insw` into one exit per sector.
//! - batched: one doorbell (0x510) carrying the first 14 accesses, then 0x1f0 and 0x1f7 in.

use crate::batch::PioQueue;
use crate::io::{inb, insw, outb, outsw};

pub const DATA: u16 = 0x1f0;
pub const ERROR: u16 = 0x1f1;
pub const FEATURE: u16 = 0x1f1;
pub const NSECT: u16 = 0x1f2;
pub const LBAL: u16 = 0x1f3;
pub const LBAM: u16 = 0x1f4;
pub const LBAH: u16 = 0x1f5;
pub const DEVICE: u16 = 0x1f6;
pub const STATUS: u16 = 0x1f7;
pub const COMMAND: u16 = 0x1f7;
pub const CONTROL: u16 = 0x3f6;

pub const ST_BSY: u8 = 0x80;
pub const ST_DF: u8 = 0x20;
pub const ST_DRQ: u8 = 0x08;
pub const ST_ERR: u8 = 0x01;

pub const CMD_READ_EXT: u8 = 0x24;
pub const CMD_WRITE_EXT: u8 = 0x34;
pub const CMD_FLUSH_EXT: u8 = 0xea;
pub const CMD_IDENTIFY: u8 = 0xec;
/// LBA mode, master drive.
const DEV_LBA: u8 = 0x40;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
}

/// Why a command failed: the stage (1 = not ready, 2 = no DRQ, 3 = completion), the
/// status register and the error register.
#[derive(Clone, Copy)]
pub struct IdeError {
    pub stage: u8,
    pub status: u8,
    pub error: u8,
}

#[repr(C, align(8))]
pub struct Sector(pub [u16; 256]);

/// Bounded wait for BSY to clear; tinyvmm's disk is synchronous so it returns at once.
#[inline(always)]
fn wait_not_busy(first: u8) -> u8 {
    let mut st = first;
    let mut tries = 0u32;
    while st & ST_BSY != 0 && tries < 1_000_000 {
        st = inb(STATUS);
        tries += 1;
    }
    st
}

fn fail(stage: u8, status: u8) -> IdeError {
    let error = if status & ST_ERR != 0 { inb(ERROR) } else { 0 };
    IdeError { stage, status, error }
}

/// Sets nIEN: the guest polls, it takes no disk interrupts.
pub fn ide_init() {
    outb(CONTROL, 0x02);
}

/// Recovery from an unknown state: select the master, pulse SRST (software reset), leave
/// nIEN set.
pub fn ide_reset() {
    outb(DEVICE, DEV_LBA);
    outb(CONTROL, 0x06);
    outb(CONTROL, 0x02);
}

/// Reads and writes one sector at `lba` with a 48-bit command.
#[inline(never)]
pub fn ide_do_rw_disk(dir: Dir, lba: u64, buf: &mut Sector, q: Option<&mut PioQueue>) -> Result<(), IdeError> {
    let cmd = if dir == Dir::Write { CMD_WRITE_EXT } else { CMD_READ_EXT };
    let b = |shift: u32| (lba >> shift) as u8;
    let st = match q {
        None => {
            // ERR may linger from the previous command; only BSY blocks a new one.
            let st = wait_not_busy(inb(STATUS));
            if st & ST_BSY != 0 {
                return Err(fail(1, st));
            }
            outb(FEATURE, 0);
            outb(NSECT, 0);
            outb(LBAL, b(24));
            outb(LBAM, b(32));
            outb(LBAH, b(40));
            outb(FEATURE, 0);
            outb(NSECT, 1);
            outb(LBAL, b(0));
            outb(LBAM, b(8));
            outb(LBAH, b(16));
            outb(DEVICE, DEV_LBA);
            outb(COMMAND, cmd);
            wait_not_busy(inb(STATUS))
        }
        Some(q) => {
            q.clear();
            let ready = q.inb(STATUS);
            q.outb(FEATURE, 0);
            q.outb(NSECT, 0);
            q.outb(LBAL, b(24));
            q.outb(LBAM, b(32));
            q.outb(LBAH, b(40));
            q.outb(FEATURE, 0);
            q.outb(NSECT, 1);
            q.outb(LBAL, b(0));
            q.outb(LBAM, b(8));
            q.outb(LBAH, b(16));
            q.outb(DEVICE, DEV_LBA);
            q.outb(COMMAND, cmd);
            let drq = q.inb(STATUS);
            let rc = q.submit();
            if rc != 0 {
                return Err(IdeError { stage: 0, status: 0, error: rc as u8 });
            }
            let st = q.entries[ready].value as u8;
            if st & ST_BSY != 0 {
                return Err(fail(1, st));
            }
            wait_not_busy(q.entries[drq].value as u8)
        }
    };
    if st & (ST_ERR | ST_DF) != 0 || st & ST_DRQ == 0 {
        return Err(fail(2, st));
    }
    match dir {
        Dir::Write => ide_output_data(&buf.0),
        Dir::Read => ide_input_data(&mut buf.0),
    }
    let st = wait_not_busy(inb(STATUS));
    if st & (ST_ERR | ST_DF) != 0 {
        return Err(fail(3, st));
    }
    Ok(())
}

#[inline(never)]
pub fn ide_output_data(words: &[u16]) {
    outsw(DATA, words);
}

#[inline(never)]
pub fn ide_input_data(words: &mut [u16]) {
    insw(DATA, words);
}

/// IDENTIFY DEVICE; returns the capacity in sectors (48-bit if supported).
#[inline(never)]
pub fn ide_identify() -> Result<u64, IdeError> {
    outb(DEVICE, DEV_LBA);
    outb(COMMAND, CMD_IDENTIFY);
    let st = wait_not_busy(inb(STATUS));
    if st & ST_ERR != 0 || st & ST_DRQ == 0 {
        return Err(fail(2, st));
    }
    let mut id = Sector([0; 256]);
    ide_input_data(&mut id.0);
    let w = &id.0;
    if w[83] & (1 << 10) != 0 {
        Ok(w[100] as u64 | (w[101] as u64) << 16 | (w[102] as u64) << 32 | (w[103] as u64) << 48)
    } else {
        Ok(w[60] as u64 | (w[61] as u64) << 16)
    }
}

/// FLUSH CACHE EXT: tinyvmm fsyncs the image file before it clears BSY.
#[inline(never)]
pub fn ide_flush() -> Result<(), IdeError> {
    outb(DEVICE, DEV_LBA);
    outb(COMMAND, CMD_FLUSH_EXT);
    let st = wait_not_busy(inb(STATUS));
    if st & (ST_ERR | ST_DF) != 0 {
        return Err(fail(3, st));
    }
    Ok(())
}
