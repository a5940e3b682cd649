//! IDE/ATA disk on the primary channel, PIO only: task file 0x1F0-0x1F7, control 0x3F6.
//!
//! Commands: IDENTIFY DEVICE (0xEC), READ SECTORS (0x20/0x21), READ SECTORS EXT (0x24),
//! WRITE SECTORS (0x30/0x31), WRITE SECTORS EXT (0x34), FLUSH CACHE (0xE7) and FLUSH
//! CACHE EXT (0xEA); 28-bit LBA takes bits 24-27 from the device register, 48-bit LBA the
//! "previous" (HOB) bytes of each register. CHS addressing, a missing slave and any other
//! command end with ERR and ABRT; an LBA range past the image's end with ERR and IDNF.
//!
//! The image is a raw file. Each sector is written with `pwrite` as soon as its 512th byte
//! arrives and FLUSH CACHE `fsync`s: nothing is kept only in memory. The device is
//! synchronous, so BSY is never seen by the guest.

use crate::bus::PortDevice;
use std::fs::File;
use std::os::unix::fs::FileExt;

pub const SECTOR: usize = 512;

pub const ST_BSY: u8 = 0x80;
pub const ST_DRDY: u8 = 0x40;
pub const ST_DF: u8 = 0x20;
pub const ST_DSC: u8 = 0x10;
pub const ST_DRQ: u8 = 0x08;
pub const ST_ERR: u8 = 0x01;

pub const ERR_UNC: u8 = 0x40;
pub const ERR_IDNF: u8 = 0x10;
pub const ERR_ABRT: u8 = 0x04;

const DEV_SLAVE: u8 = 0x10;
const DEV_LBA: u8 = 0x40;
const CTL_SRST: u8 = 0x04;
const CTL_HOB: u8 = 0x80;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Xfer {
    Idle,
    /// Data from the device: IDENTIFY (lba None) or sectors.
    In { lba: Option<u64>, remaining: u32 },
    /// Data to the device, written to the image at `lba` when a sector is complete.
    Out { lba: u64, remaining: u32 },
}

/// The counters of `--stats-json`'s `ide` object, defined once in the ABI crate.
pub use crate::abi::stats::IdeStats;

/// The six task-file bytes, with their 48-bit "previous" copies.
#[derive(Default, Clone, Copy)]
struct Reg {
    cur: u8,
    hob: u8,
}

impl Reg {
    fn write(&mut self, v: u8) {
        self.hob = self.cur;
        self.cur = v;
    }
}

pub struct Ide {
    file: File,
    sectors: u64,
    feature: Reg,
    nsect: Reg,
    lbal: Reg,
    lbam: Reg,
    lbah: Reg,
    device: u8,
    control: u8,
    status: u8,
    error: u8,
    buf: Box<[u8; SECTOR]>,
    pos: usize,
    xfer: Xfer,
    pub stats: IdeStats,
}

impl Ide {
    /// `file` must be open for reading and writing; a trailing partial sector is not
    /// addressable.
    pub fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Ide {
            file,
            sectors: len / SECTOR as u64,
            feature: Reg::default(),
            nsect: Reg::default(),
            lbal: Reg::default(),
            lbam: Reg::default(),
            lbah: Reg::default(),
            device: 0,
            control: 0,
            status: ST_DRDY | ST_DSC,
            error: 0,
            buf: Box::new([0; SECTOR]),
            pos: 0,
            xfer: Xfer::Idle,
            stats: IdeStats::default(),
        })
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn slave(&self) -> bool {
        self.device & DEV_SLAVE != 0
    }

    fn finish(&mut self) {
        self.xfer = Xfer::Idle;
        self.pos = 0;
        self.status = ST_DRDY | ST_DSC;
    }

    fn fail(&mut self, error: u8) {
        self.xfer = Xfer::Idle;
        self.pos = 0;
        self.error = error;
        self.status = ST_DRDY | ST_DSC | ST_ERR;
        self.stats.errors += 1;
    }

    fn lba28(&self) -> (u64, u32) {
        let lba = u64::from(self.device & 0x0f) << 24
            | u64::from(self.lbah.cur) << 16
            | u64::from(self.lbam.cur) << 8
            | u64::from(self.lbal.cur);
        let n = if self.nsect.cur == 0 { 256 } else { u32::from(self.nsect.cur) };
        (lba, n)
    }

    fn lba48(&self) -> (u64, u32) {
        let lba = u64::from(self.lbah.hob) << 40
            | u64::from(self.lbam.hob) << 32
            | u64::from(self.lbal.hob) << 24
            | u64::from(self.lbah.cur) << 16
            | u64::from(self.lbam.cur) << 8
            | u64::from(self.lbal.cur);
        let n = u32::from(self.nsect.hob) << 8 | u32::from(self.nsect.cur);
        (lba, if n == 0 { 65536 } else { n })
    }

    fn in_range(&self, lba: u64, n: u32) -> bool {
        lba.checked_add(u64::from(n)).is_some_and(|end| end <= self.sectors)
    }

    fn load_sector(&mut self, lba: u64) -> bool {
        let off = lba * SECTOR as u64;
        match self.file.read_exact_at(&mut self.buf[..], off) {
            Ok(()) => {
                self.stats.sectors_read += 1;
                true
            }
            Err(_) => false,
        }
    }

    fn command(&mut self, cmd: u8) {
        if self.slave() {
            return; // No slave: the command goes nowhere, as on a real single-drive cable.
        }
        self.stats.commands += 1;
        self.error = 0;
        self.pos = 0;
        match cmd {
            0xec => {
                self.fill_identify();
                self.xfer = Xfer::In { lba: None, remaining: 1 };
                self.status = ST_DRDY | ST_DSC | ST_DRQ;
            }
            0x20 | 0x21 | 0x24 | 0x30 | 0x31 | 0x34 => {
                if self.device & DEV_LBA == 0 {
                    return self.fail(ERR_ABRT);
                }
                let (lba, n) = if cmd == 0x24 || cmd == 0x34 { self.lba48() } else { self.lba28() };
                if !self.in_range(lba, n) {
                    return self.fail(ERR_IDNF);
                }
                if cmd & 0x10 == 0 {
                    if !self.load_sector(lba) {
                        return self.fail(ERR_UNC);
                    }
                    self.xfer = Xfer::In { lba: Some(lba), remaining: n };
                } else {
                    self.xfer = Xfer::Out { lba, remaining: n };
                }
                self.status = ST_DRDY | ST_DSC | ST_DRQ;
            }
            0xe7 | 0xea => {
                if self.file.sync_all().is_err() {
                    return self.fail(ERR_ABRT);
                }
                self.stats.flushes += 1;
                self.finish();
            }
            _ => self.fail(ERR_ABRT),
        }
    }

    fn fill_identify(&mut self) {
        let mut w = [0u16; 256];
        let lba28 = self.sectors.min(0x0fff_ffff);
        let string = |w: &mut [u16; 256], start: usize, words: usize, s: &str| {
            let mut bytes = s.bytes().chain(std::iter::repeat(b' '));
            for i in 0..words {
                let hi = bytes.next().unwrap_or(b' ');
                let lo = bytes.next().unwrap_or(b' ');
                w[start + i] = u16::from(hi) << 8 | u16::from(lo);
            }
        };
        w[0] = 0x0040;
        w[1] = 16383;
        w[3] = 16;
        w[6] = 63;
        string(&mut w, 10, 10, "TINYVMM0001");
        string(&mut w, 23, 4, "0.1");
        string(&mut w, 27, 20, "tinyvmm PIO disk");
        w[47] = 0x8001;
        w[49] = 1 << 9; // LBA
        w[53] = 0x0001;
        w[60] = lba28 as u16;
        w[61] = (lba28 >> 16) as u16;
        w[80] = 0x007e; // ATA/ATAPI-1..6
        w[82] = 1 << 14;
        w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10; // FLUSH EXT, FLUSH, LBA48
        w[84] = 1 << 14;
        w[86] = 1 << 13 | 1 << 12 | 1 << 10;
        w[87] = 1 << 14;
        for i in 0..4 {
            w[100 + i] = (self.sectors >> (16 * i)) as u16;
        }
        for (i, v) in w.iter().enumerate() {
            self.buf[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn data_read(&mut self, data: &mut [u8]) {
        let Xfer::In { lba, remaining } = self.xfer else {
            data.fill(0xff);
            return;
        };
        let n = data.len().min(SECTOR - self.pos);
        data[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        data[n..].fill(0xff);
        self.pos += n;
        if self.pos < SECTOR {
            return;
        }
        self.pos = 0;
        let remaining = remaining.saturating_sub(1);
        match lba {
            Some(l) if remaining > 0 => {
                if self.load_sector(l + 1) {
                    self.xfer = Xfer::In { lba: Some(l + 1), remaining };
                } else {
                    self.fail(ERR_UNC);
                }
            }
            _ => self.finish(),
        }
    }

    fn data_write(&mut self, data: &[u8]) {
        let Xfer::Out { lba, remaining } = self.xfer else { return };
        let n = data.len().min(SECTOR - self.pos);
        self.buf[self.pos..self.pos + n].copy_from_slice(&data[..n]);
        self.pos += n;
        if self.pos < SECTOR {
            return;
        }
        self.pos = 0;
        if self.file.write_all_at(&self.buf[..], lba * SECTOR as u64).is_err() {
            return self.fail(ERR_ABRT);
        }
        self.stats.sectors_written += 1;
        let remaining = remaining.saturating_sub(1);
        if remaining > 0 {
            self.xfer = Xfer::Out { lba: lba + 1, remaining };
        } else {
            self.finish();
        }
    }

    fn read_status(&self) -> u8 {
        if self.slave() {
            0
        } else {
            self.status
        }
    }
}

impl PortDevice for Ide {
    fn read(&mut self, port: u16, data: &mut [u8]) {
        if port == 0x1f0 {
            return self.data_read(data);
        }
        let hob = self.control & CTL_HOB != 0;
        let pick = |r: Reg| if hob { r.hob } else { r.cur };
        let v = match port {
            0x1f1 => {
                if hob {
                    self.feature.hob
                } else {
                    self.error
                }
            }
            0x1f2 => pick(self.nsect),
            0x1f3 => pick(self.lbal),
            0x1f4 => pick(self.lbam),
            0x1f5 => pick(self.lbah),
            0x1f6 => self.device | 0xa0,
            0x1f7 | 0x3f6 => self.read_status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(d) = data.first_mut() {
            *d = v;
        }
    }

    fn write(&mut self, port: u16, data: &[u8]) {
        if port == 0x1f0 {
            return self.data_write(data);
        }
        let Some(&v) = data.first() else { return };
        if (0x1f1..=0x1f6).contains(&port) {
            self.control &= !CTL_HOB; // Any task-file write clears HOB (ATA-6).
        }
        match port {
            0x1f1 => self.feature.write(v),
            0x1f2 => self.nsect.write(v),
            0x1f3 => self.lbal.write(v),
            0x1f4 => self.lbam.write(v),
            0x1f5 => self.lbah.write(v),
            0x1f6 => self.device = v,
            0x1f7 => self.command(v),
            0x3f6 => {
                let was_reset = self.control & CTL_SRST != 0;
                self.control = v;
                if v & CTL_SRST != 0 {
                    self.xfer = Xfer::Idle;
                    self.status = ST_BSY;
                } else if was_reset {
                    self.finish();
                    self.error = 0x01; // Diagnostic code: no error.
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn disk(sectors: usize) -> (tempfile::TempDir, std::path::PathBuf, Ide) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0u8; sectors * SECTOR]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let ide = Ide::new(f).unwrap();
        (dir, path, ide)
    }

    fn outb(d: &mut Ide, port: u16, v: u8) {
        d.write(port, &[v]);
    }
    fn inb(d: &mut Ide, port: u16) -> u8 {
        let mut b = [0u8];
        d.read(port, &mut b);
        b[0]
    }

    #[test]
    fn lba28_multi_sector_write_reaches_file_then_reads_back() {
        let (_t, path, mut d) = disk(64);
        for (p, v) in [(0x1f2, 2), (0x1f3, 5), (0x1f4, 0), (0x1f5, 0), (0x1f6, 0x40), (0x1f7, 0x30)] {
            outb(&mut d, p, v);
        }
        assert_eq!(inb(&mut d, 0x1f7), ST_DRDY | ST_DSC | ST_DRQ);
        for i in 0..512u16 {
            d.write(0x1f0, &i.to_le_bytes());
        }
        assert_eq!(inb(&mut d, 0x1f7), ST_DRDY | ST_DSC);
        let img = std::fs::read(&path).unwrap();
        assert_eq!(&img[5 * 512..5 * 512 + 4], &[0, 0, 1, 0]);
        assert_eq!(&img[7 * 512 - 2..7 * 512], &511u16.to_le_bytes());
        for (p, v) in [(0x1f2, 1), (0x1f3, 6), (0x1f7, 0x20)] {
            outb(&mut d, p, v);
        }
        let mut w = [0u8; 2];
        d.read(0x1f0, &mut w);
        assert_eq!(u16::from_le_bytes(w), 256);
        outb(&mut d, 0x1f7, 0xe7);
        assert_eq!(d.stats.flushes, 1);
    }

    #[test]
    fn lba48_uses_hob_bytes_and_checks_range() {
        let (_t, _p, mut d) = disk(8);
        // LBA 1 << 24 with 48-bit registers: out of range -> IDNF.
        for (p, v) in [(0x1f2, 0), (0x1f3, 1), (0x1f4, 0), (0x1f5, 0), (0x1f2, 1), (0x1f3, 0), (0x1f4, 0), (0x1f5, 0), (0x1f6, 0x40), (0x1f7, 0x24)] {
            outb(&mut d, p, v);
        }
        assert_eq!(inb(&mut d, 0x1f7), ST_DRDY | ST_DSC | ST_ERR);
        assert_eq!(inb(&mut d, 0x1f1), ERR_IDNF);
        outb(&mut d, 0x3f6, CTL_HOB);
        assert_eq!(inb(&mut d, 0x1f3), 1);
        // The same registers with HOB bytes zero: LBA 0, in range.
        for (p, v) in [(0x1f3, 0), (0x1f3, 7), (0x1f7, 0x24)] {
            outb(&mut d, p, v);
        }
        assert_eq!(inb(&mut d, 0x1f7), ST_DRDY | ST_DSC | ST_DRQ);
        // Count 0 in 48-bit means 65536 sectors: out of range on an 8-sector disk.
        for (p, v) in [(0x1f2, 0), (0x1f2, 0), (0x1f3, 0), (0x1f3, 0), (0x1f7, 0x34)] {
            outb(&mut d, p, v);
        }
        assert_eq!(inb(&mut d, 0x1f1), ERR_IDNF);
    }

    #[test]
    fn identify_reports_capacity_chs_and_unknown_commands_abort() {
        let (_t, _p, mut d) = disk(100);
        outb(&mut d, 0x1f6, 0x40);
        outb(&mut d, 0x1f7, 0xec);
        let mut id = [0u8; 512];
        d.read(0x1f0, &mut id);
        let word = |i: usize| u16::from_le_bytes([id[2 * i], id[2 * i + 1]]);
        assert_eq!(word(60), 100);
        assert_eq!(word(100), 100);
        assert_ne!(word(83) & (1 << 10), 0);
        outb(&mut d, 0x1f7, 0x99);
        assert_eq!(inb(&mut d, 0x1f1), ERR_ABRT);
        outb(&mut d, 0x1f6, 0x00); // CHS
        outb(&mut d, 0x1f7, 0x20);
        assert_eq!(inb(&mut d, 0x1f1), ERR_ABRT);
        outb(&mut d, 0x1f6, 0x50); // slave: absent
        assert_eq!(inb(&mut d, 0x1f7), 0);
    }

    /// Arbitrary accesses (any register, size and value; reads and writes) from an
    /// xorshift seed.
    fn garbage(d: &mut Ide, seed: u32, n: usize) {
        let mut x = seed;
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let port = [0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6][(x % 9) as usize];
            let size = [1usize, 2, 4][(x >> 8) as usize % 3];
            let mut b = (x >> 4).to_le_bytes();
            if x & 0x100 != 0 {
                d.write(port, &b[..size]);
            } else {
                d.read(port, &mut b[..size]);
            }
        }
    }

    /// What a driver does from an unknown state: select the master, a software reset (SRST
    /// pulse), then one
    /// sector written with WRITE SECTORS EXT and read back with READ SECTORS EXT. Checks
    /// every status, the image file and the data read back, exactly.
    fn reset_write_read_back(d: &mut Ide, path: &std::path::Path, lba: u8, seed: u16) {
        let data: Vec<u16> = (0..256u16).map(|i| i.wrapping_mul(0x9e37) ^ seed).collect();
        let (written, read) = (d.stats.sectors_written, d.stats.sectors_read);
        outb(d, 0x1f6, 0x40); // Select the master (the garbage may have left the slave).
        outb(d, 0x3f6, CTL_SRST | 0x02);
        assert_eq!(inb(d, 0x3f6), ST_BSY, "in reset");
        outb(d, 0x3f6, 0x02);
        assert_eq!(inb(d, 0x1f7), ST_DRDY | ST_DSC, "ready after the reset");
        assert_eq!(inb(d, 0x1f1), 0x01, "diagnostic code: no error");
        let task_file = |d: &mut Ide, cmd: u8| {
            for (p, v) in [(0x1f2, 0), (0x1f3, 0), (0x1f4, 0), (0x1f5, 0), (0x1f2, 1), (0x1f3, lba), (0x1f4, 0), (0x1f5, 0), (0x1f6, 0x40), (0x1f7, cmd)] {
                outb(d, p, v);
            }
        };
        task_file(d, 0x34);
        assert_eq!(inb(d, 0x1f7), ST_DRDY | ST_DSC | ST_DRQ, "write: DRQ");
        for w in &data {
            d.write(0x1f0, &w.to_le_bytes());
        }
        assert_eq!(inb(d, 0x1f7), ST_DRDY | ST_DSC, "write: done");
        assert_eq!(d.stats.sectors_written, written + 1);
        let img = std::fs::read(path).unwrap();
        let want: Vec<u8> = data.iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = usize::from(lba) * SECTOR;
        assert!(img[at..at + SECTOR] == want[..], "the image holds the sector");
        task_file(d, 0x24);
        assert_eq!(inb(d, 0x1f7), ST_DRDY | ST_DSC | ST_DRQ, "read: DRQ");
        let mut back = [0u8; SECTOR];
        for chunk in back.chunks_exact_mut(4) {
            d.read(0x1f0, chunk);
        }
        assert!(back[..] == want[..], "read back what was written");
        assert_eq!(inb(d, 0x1f7), ST_DRDY | ST_DSC, "read: done");
        assert_eq!(d.stats.sectors_read, read + 1);
        // Nothing more to transfer: the data port reads all ones.
        assert_eq!(inb(d, 0x1f0), 0xff);
    }

    #[test]
    fn garbage_never_panics_and_a_reset_then_write_and_read_back_work() {
        let (_t, path, mut d) = disk(4);
        reset_write_read_back(&mut d, &path, 3, 0);
        for (i, seed) in [0x1234_5678u32, 0xdead_beef, 0x0bad_f00d, 7, 0x8000_0001].into_iter().enumerate() {
            garbage(&mut d, seed, 20000);
            reset_write_read_back(&mut d, &path, (i % 4) as u8, seed as u16);
        }
    }

    #[test]
    fn garbage_that_ends_mid_transfer_or_in_reset_is_recovered() {
        let (_t, path, mut d) = disk(4);
        // A write command left with half a sector in the buffer.
        for (p, v) in [(0x1f2, 1), (0x1f3, 1), (0x1f6, 0x40), (0x1f7, 0x30)] {
            outb(&mut d, p, v);
        }
        for w in 0..100u16 {
            d.write(0x1f0, &w.to_le_bytes());
        }
        reset_write_read_back(&mut d, &path, 1, 0x5555);
        assert_eq!(d.stats.sectors_written, 1, "the half sector was dropped, not written");
        // A read command left mid-sector, HOB on, the slave selected, and SRST held.
        for (p, v) in [(0x1f2, 1), (0x1f3, 2), (0x1f6, 0x40), (0x1f7, 0x20)] {
            outb(&mut d, p, v);
        }
        inb(&mut d, 0x1f0);
        outb(&mut d, 0x1f6, 0x50);
        outb(&mut d, 0x3f6, CTL_HOB | CTL_SRST);
        reset_write_read_back(&mut d, &path, 2, 0xaaaa);
    }
}
