//! One trace line, parsed in place: byte slices into the line, no allocation (the importer
//! reads millions of lines per second into one reused buffer).
use memchr::memmem::Finder;
use std::sync::LazyLock;

/// One parsed trace line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub comm: &'a [u8],
    pub tid: u32,
    pub tgid: Option<u32>,
    pub ts_ns: u64,
    pub name: &'a [u8],
    pub args: &'a [u8],
}

static MARKER: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b": kvm"));

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|c| c.is_ascii_whitespace()).count();
    &b[n..]
}

fn trim_end(b: &[u8]) -> &[u8] {
    let n = b.iter().rev().take_while(|c| c.is_ascii_whitespace()).count();
    &b[..b.len() - n]
}

pub fn trim(b: &[u8]) -> &[u8] {
    trim_end(trim_start(b))
}

/// A decimal u32 (digits only).
pub fn dec_u32(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 10 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    u32::try_from(v).ok()
}

/// A hexadecimal u64, with or without `0x` (as `profiler_common::parse_hex`).
pub fn hex(b: &[u8]) -> Option<u64> {
    let d = b.strip_prefix(b"0x").or_else(|| b.strip_prefix(b"0X")).unwrap_or(b);
    if d.is_empty() || d.len() > 16 {
        // More than 16 digits is only valid with leading zeros.
        let nz = d.iter().position(|c| *c != b'0')?;
        return if d.len() - nz <= 16 { hex(&d[nz..]) } else { None };
    }
    let mut v: u64 = 0;
    for &c in d {
        let digit = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | digit as u64;
    }
    Some(v)
}

/// Splits a trace line into task, timestamp, event name and arguments:
/// ```text
/// ftrace:      qemu-system-x86-4242  [001] d..2. 1234.567890: kvm_exit: vcpu 0 reason ...
/// ftrace+tgid: qemu-system-x86-4242 (4240) [001] ..... 1234.567900: kvm_entry: vcpu 0, rip 0x...
/// perf script: qemu-system-x86 4242 [001] 1234.567890: kvm:kvm_exit: vcpu 0 reason io rip 0x...
/// ```
pub fn parse(line: &[u8]) -> Option<Event<'_>> {
    // The event marker: ": kvm_exit: " (ftrace) or ": kvm:kvm_exit: " (perf).
    let at = MARKER.find(line)?;
    let after = &line[at + 2..];
    let colon = memchr::memchr(b':', after)?;
    let mut name = &after[..colon];
    let mut args = &after[colon + 1..];
    if name == b"kvm" {
        let c2 = memchr::memchr(b':', args)?;
        name = &args[..c2];
        args = &args[c2 + 1..];
    }
    let args = trim(args);
    // Timestamp: the last word before the marker, "1234.567890".
    let head = trim_end(&line[..at]);
    let sp = head.iter().rposition(|c| c.is_ascii_whitespace())?;
    let ts_ns = parse_timestamp(&head[sp + 1..])?;
    let head = &head[..sp];
    // Drop "[001]" and, for ftrace, the flags word "d..2.".
    let cpu_at = memchr::memrchr(b'[', head)?;
    let task = trim(&head[..cpu_at]);
    let (task, tgid) = match task.strip_suffix(b")").and_then(|t| memchr::memrchr(b'(', t).map(|i| (&t[..i], &t[i + 1..]))) {
        Some((t, g)) => (trim(t), dec_u32(trim(g))),
        None => (task, None),
    };
    // perf: "comm tid" or "comm pid/tid"; ftrace: "comm-tid". Comms may hold spaces, '/' and
    // '-' ("CPU 0/KVM-4242"), so the perf forms must parse whole before they are believed.
    let perf = || -> Option<(&[u8], u32, Option<u32>)> {
        let sp = task.iter().rposition(|c| c.is_ascii_whitespace())?;
        let (c, ids) = (trim(&task[..sp]), &task[sp + 1..]);
        match memchr::memchr(b'/', ids) {
            Some(i) => Some((c, dec_u32(&ids[i + 1..])?, Some(dec_u32(&ids[..i])?))),
            None => Some((c, dec_u32(ids)?, None)),
        }
    };
    let dash = || -> Option<(&[u8], u32, Option<u32>)> {
        let i = memchr::memrchr(b'-', task)?;
        Some((&task[..i], dec_u32(&task[i + 1..])?, None))
    };
    // At most one form parses whole (perf's last word has no '-', ftrace's tail after the
    // '-' has no space), so the order only saves time: the likely form first.
    let ftrace_like = task.iter().rev().find(|c| !c.is_ascii_digit()) == Some(&b'-');
    let (comm, tid, pid) = if ftrace_like { dash().or_else(perf) } else { perf().or_else(dash) }?;
    Some(Event { comm, tid, tgid: pid.or(tgid), ts_ns, name, args })
}

fn parse_timestamp(ts: &[u8]) -> Option<u64> {
    let ts = ts.strip_suffix(b":").unwrap_or(ts);
    let (s, frac): (&[u8], &[u8]) = match memchr::memchr(b'.', ts) {
        Some(i) => (&ts[..i], &ts[i + 1..]),
        None => (ts, b"0"),
    };
    if frac.is_empty() || frac.len() > 9 || s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut ns: u64 = 0;
    for &c in frac {
        if !c.is_ascii_digit() {
            return None;
        }
        ns = ns * 10 + (c - b'0') as u64;
    }
    ns *= 10u64.pow(9 - frac.len() as u32);
    let mut secs: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        secs = secs.checked_mul(10)?.checked_add((c - b'0') as u64)?;
    }
    secs.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// The value after `key ` in `args`, up to the next space (or `,`).
pub fn arg<'a>(args: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut words = args.split(|c| *c == b' ' || *c == b',').filter(|w| !w.is_empty());
    while let Some(w) = words.next() {
        if w == key {
            return words.next();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ftrace_perf_and_tgid_lines() {
        let f = parse(b"     qemu-system-x86-4242  [001] d..2. 1234.567890: kvm_exit: vcpu 0 reason HLT rip 0xfff info1 0x0").unwrap();
        assert_eq!((f.comm, f.tid, f.tgid, f.ts_ns, f.name), (&b"qemu-system-x86"[..], 4242, None, 1_234_567_890_000, &b"kvm_exit"[..]));
        let g = parse(b"CPU 0/KVM-4242 (4240) [001] ..... 1.000000001: kvm_entry: vcpu 0, rip 0x1").unwrap();
        assert_eq!((g.comm, g.tid, g.tgid, g.ts_ns), (&b"CPU 0/KVM"[..], 4242, Some(4240), 1_000_000_001));
        let p = parse(b"qemu-system-x86  4242 [001]  1234.500000: kvm:kvm_pio: pio_write at 0x1f7 size 1 count 1 val 0x30").unwrap();
        assert_eq!((p.comm, p.tid, p.name, p.args), (&b"qemu-system-x86"[..], 4242, &b"kvm_pio"[..], &b"pio_write at 0x1f7 size 1 count 1 val 0x30"[..]));
        let q = parse(b"qemu 4240/4242 [000] 5.25: kvm:kvm_entry: vcpu 1").unwrap();
        assert_eq!((q.tid, q.tgid, q.ts_ns), (4242, Some(4240), 5_250_000_000));
        assert!(parse(b"# tracer: nop").is_none());
        assert!(parse(b"x-1 [000] 1.0000000001: kvm_entry: vcpu 1").is_none(), "more than 9 digits of fraction");
    }

    #[test]
    fn hex_and_args() {
        assert_eq!(hex(b"0xffffffff81000010"), Some(0xffffffff81000010));
        assert_eq!(hex(b"1f7"), Some(0x1f7));
        assert_eq!(hex(b"0x00000000000000000001"), Some(1));
        assert_eq!(hex(b"0x1_0"), None);
        assert_eq!(hex(b"0x"), None);
        assert_eq!(hex(b"0x10000000000000000"), None);
        assert_eq!(arg(b"vcpu 0, rip 0x1", b"rip"), Some(&b"0x1"[..]));
    }
}
