//! One trace line, parsed in place: byte slices into the line, no allocation (the importer
//! reads millions of lines per second into one reused buffer).
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
        let digit = HEX_DIGIT[c as usize];
        if digit == NOT_HEX {
            return None;
        }
        v = (v << 4) | digit as u64;
    }
    Some(v)
}

const NOT_HEX: u8 = 0xff;

/// Each byte's value as a hexadecimal digit, or [`NOT_HEX`]: one load per digit, no branches
/// on the digit's range.
static HEX_DIGIT: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// Splits a trace line into task, timestamp, event name and arguments:
/// ```text
/// ftrace:      qemu-system-x86-4242  [001] d..2. 1234.567890: kvm_exit: vcpu 0 reason ...
/// ftrace+tgid: qemu-system-x86-4242 (4240) [001] ..... 1234.567900: kvm_entry: vcpu 0, rip 0x...
/// perf script: qemu-system-x86 4242 [001] 1234.567890: kvm:kvm_exit: vcpu 0 reason io rip 0x...
/// ```
/// Every search below spans a few bytes (a word, a field), so each is a plain loop: a call
/// into `memchr` costs more than it saves there (the importer runs this ~3 M times a second).
pub fn parse(line: &[u8]) -> Option<Event<'_>> {
    let tail = parse_tail(line)?;
    let task = parse_task(&line[..tail.task_end])?;
    Some(tail.event(line, task))
}

/// What follows the task in a line: the timestamp, the event name and its arguments, and
/// where the task's text ends (`line[..task_end]`, which alone decides the task: see
/// [`parse_task`]).
pub struct Tail<'a> {
    pub task_end: usize,
    pub ts_ns: u64,
    pub name: &'a [u8],
    pub args: &'a [u8],
}

/// A line's task: the comm (as a range of the line), thread and process ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub comm: std::ops::Range<usize>,
    pub tid: u32,
    pub tgid: Option<u32>,
}

impl<'a> Tail<'a> {
    /// The event of `line`, whose tail this is, with the task of its `line[..task_end]`.
    pub fn event(&self, line: &'a [u8], task: Task) -> Event<'a> {
        Event { comm: &line[task.comm], tid: task.tid, tgid: task.tgid, ts_ns: self.ts_ns, name: self.name, args: self.args }
    }
}

/// The marker, event name, arguments and timestamp of a line ([`parse`]).
pub fn parse_tail(line: &[u8]) -> Option<Tail<'_>> {
    // The event marker: ": kvm_exit: " (ftrace) or ": kvm:kvm_exit: " (perf).
    let at = marker(line)?;
    let after = &line[at + 2..];
    let colon = find(after, b':')?;
    let mut name = &after[..colon];
    let mut args = &after[colon + 1..];
    if name == b"kvm" {
        let c2 = find(args, b':')?;
        name = &args[..c2];
        args = &args[c2 + 1..];
    }
    let args = trim(args);
    // Timestamp: the last word before the marker, "1234.567890".
    let head = trim_end(&line[..at]);
    let (sp, ts_ns) = match regular_timestamp(head) {
        Some(t) => t,
        None => {
            let sp = head.iter().rposition(|c| c.is_ascii_whitespace())?;
            (sp, parse_timestamp(&head[sp + 1..])?)
        }
    };
    Some(Tail { task_end: sp, ts_ns, name, args })
}

/// The timestamp at the end of `head` in the form every tracer prints, whitespace then
/// "SECS.FRAC" (1-19 and 1-9 digits), read in one backward pass: where the whitespace is and
/// the time. None for any other form (or an overflow), which the general search decides.
fn regular_timestamp(head: &[u8]) -> Option<(usize, u64)> {
    let mut i = head.len();
    let (mut frac, mut scale) = (0u64, 1u64);
    while i > 0 && head[i - 1].is_ascii_digit() && scale < 1_000_000_000 {
        frac += (head[i - 1] - b'0') as u64 * scale;
        scale *= 10;
        i -= 1;
    }
    let frac_len = head.len() - i;
    if frac_len == 0 || i == 0 || head[i - 1] != b'.' {
        return None;
    }
    let dot = i - 1;
    i = dot;
    let (mut secs, mut unit) = (0u64, 1u64);
    while i > 0 && head[i - 1].is_ascii_digit() {
        if dot - i == 19 {
            return None;
        }
        secs += (head[i - 1] - b'0') as u64 * unit;
        unit = unit.wrapping_mul(10);
        i -= 1;
    }
    if i == dot || i == 0 || !head[i - 1].is_ascii_whitespace() {
        return None;
    }
    Some((i - 1, secs.checked_mul(1_000_000_000)?.checked_add(frac * NS_PER_DIGIT[frac_len])?))
}

/// The task from the text before the timestamp ("comm-tid (tgid) [cpu] flags" or
/// "comm pid/tid [cpu]"); `comm` is a range of `head`.
pub fn parse_task(head: &[u8]) -> Option<Task> {
    // Drop "[001]" and, for ftrace, the flags word "d..2.".
    let cpu_at = rfind(head, b'[')?;
    let task = trim(&head[..cpu_at]);
    let (task, tgid) = match task.strip_suffix(b")").and_then(|t| rfind(t, b'(').map(|i| (&t[..i], &t[i + 1..]))) {
        Some((t, g)) => (trim(t), dec_u32(trim(g))),
        None => (task, None),
    };
    // perf: "comm tid" or "comm pid/tid"; ftrace: "comm-tid". Comms may hold spaces, '/' and
    // '-' ("CPU 0/KVM-4242"), so the perf forms must parse whole before they are believed.
    let perf = || -> Option<(&[u8], u32, Option<u32>)> {
        let sp = task.iter().rposition(|c| c.is_ascii_whitespace())?;
        let (c, ids) = (trim(&task[..sp]), &task[sp + 1..]);
        match find(ids, b'/') {
            Some(i) => Some((c, dec_u32(&ids[i + 1..])?, Some(dec_u32(&ids[..i])?))),
            None => Some((c, dec_u32(ids)?, None)),
        }
    };
    let dash = || -> Option<(&[u8], u32, Option<u32>)> {
        let i = rfind(task, b'-')?;
        Some((&task[..i], dec_u32(&task[i + 1..])?, None))
    };
    // At most one form parses whole (perf's last word has no '-', ftrace's tail after the
    // '-' has no space), so the order only saves time: the likely form first.
    let ftrace_like = task.iter().rev().find(|c| !c.is_ascii_digit()) == Some(&b'-');
    let (comm, tid, pid) = if ftrace_like { dash().or_else(perf) } else { perf().or_else(dash) }?;
    // `comm` is a subslice of `head`: its place there.
    let from = comm.as_ptr() as usize - head.as_ptr() as usize;
    Some(Task { comm: from..from + comm.len(), tid, tgid: pid.or(tgid) })
}

/// Where the first ": kvm" starts. Every ':' is a candidate; on a trace line the first one
/// usually is the marker (the timestamp's), so this is one `memchr` and one comparison.
fn marker(line: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let at = from + memchr::memchr(b':', &line[from..])?;
        if line[at + 1..].starts_with(b" kvm") {
            return Some(at);
        }
        from = at + 1;
    }
}

/// The first `c` in a short span.
#[inline]
pub fn find(b: &[u8], c: u8) -> Option<usize> {
    b.iter().position(|x| *x == c)
}

/// The last `c` in a short span.
#[inline]
fn rfind(b: &[u8], c: u8) -> Option<usize> {
    b.iter().rposition(|x| *x == c)
}

fn parse_timestamp(ts: &[u8]) -> Option<u64> {
    let ts = ts.strip_suffix(b":").unwrap_or(ts);
    let (s, frac): (&[u8], &[u8]) = match find(ts, b'.') {
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
    ns *= NS_PER_DIGIT[frac.len()];
    // At most 19 digits: below 10^19, no overflow before the scaling to ns.
    let mut secs: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        secs = secs * 10 + (c - b'0') as u64;
    }
    secs.checked_mul(1_000_000_000)?.checked_add(ns)
}

/// Nanoseconds per unit of the last digit of a fraction of `i` digits.
const NS_PER_DIGIT: [u64; 10] = [0, 100_000_000, 10_000_000, 1_000_000, 100_000, 10_000, 1_000, 100, 10, 1];

/// Whether two short byte strings are equal, compared 8 bytes at a time in line (a call to
/// `memcmp` costs more than the comparison for a few dozen bytes).
#[inline]
pub fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().unwrap_or_default());
    // Whole words, then the last 8 bytes (overlapping the last word when n is not a multiple).
    (0..n / 8).all(|k| word(a, 8 * k) == word(b, 8 * k)) && word(a, n - 8) == word(b, n - 8)
}

/// The first word of `s` (words are separated by spaces and commas), if any.
#[inline]
pub fn first_word(s: &[u8]) -> Option<&[u8]> {
    let sep = |c: &u8| *c == b' ' || *c == b',';
    let s = &s[s.iter().position(|c| !sep(c))?..];
    Some(&s[..s.iter().position(sep).unwrap_or(s.len())])
}

/// The value after `key ` in `args`, up to the next space (or `,`).
pub fn arg<'a>(args: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let sep = |c: u8| c == b' ' || c == b',';
    let (mut i, mut after_key) = (0, false);
    while i < args.len() {
        if sep(args[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < args.len() && !sep(args[i]) {
            i += 1;
        }
        let word = &args[start..i];
        if after_key {
            return Some(word);
        }
        after_key = same(word, key);
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

    /// The parser before it was rewritten as plain loops (`memmem` for the marker, `memchr`
    /// for every field, `arg` on split words): the rewrite must agree with it on every line.
    mod reference {
        use super::super::{dec_u32, hex, trim, trim_end, Event};

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

        pub fn parse(line: &[u8]) -> Option<Event<'_>> {
            let at = memchr::memmem::find(line, b": kvm")?;
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
            let head = trim_end(&line[..at]);
            let sp = head.iter().rposition(|c| c.is_ascii_whitespace())?;
            let ts_ns = parse_timestamp(&head[sp + 1..])?;
            let head = &head[..sp];
            let cpu_at = memchr::memrchr(b'[', head)?;
            let task = trim(&head[..cpu_at]);
            let (task, tgid) = match task.strip_suffix(b")").and_then(|t| memchr::memrchr(b'(', t).map(|i| (&t[..i], &t[i + 1..]))) {
                Some((t, g)) => (trim(t), dec_u32(trim(g))),
                None => (task, None),
            };
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
            let ftrace_like = task.iter().rev().find(|c| !c.is_ascii_digit()) == Some(&b'-');
            let (comm, tid, pid) = if ftrace_like { dash().or_else(perf) } else { perf().or_else(dash) }?;
            Some(Event { comm, tid, tgid: pid.or(tgid), ts_ns, name, args })
        }

        pub fn arg<'a>(args: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
            let mut words = args.split(|c| *c == b' ' || *c == b',').filter(|w| !w.is_empty());
            while let Some(w) = words.next() {
                if w == key {
                    return words.next();
                }
            }
            None
        }

        pub fn hex_by_match(b: &[u8]) -> Option<u64> {
            let d = b.strip_prefix(b"0x").or_else(|| b.strip_prefix(b"0X")).unwrap_or(b);
            if d.is_empty() || d.len() > 16 {
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
    }

    /// Lines of every form, then each with bytes replaced, inserted or removed at random
    /// (from the bytes the parser looks for): the parser, its task cache's two halves, `arg`
    /// and `hex` agree with the reference on all of them.
    #[test]
    fn agrees_with_the_reference_parser_on_mutated_lines() {
        let seeds: [&[u8]; 10] = [
            b"x-1 [000] 9999999999999999999.999999999: kvm_entry: vcpu 1",
            b"x-1 (2) [000] 18446744073.709551615: kvm_entry: vcpu 1",
            b"     qemu-system-x86-4242  [001] d..2. 1234.567890: kvm_exit: vcpu 0 reason HLT rip 0xfff info1 0x0",
            b"       CPU 0/KVM-4242    (4240) [002] d..2.  5000.000001: kvm_pio: pio_write at 0x1f0 size 1 count 1 val 0x0",
            b" qemu-system-x86  4240/4242 [002] 5000.000000: kvm:kvm_exit: vcpu 0 reason IO_INSTRUCTION rip 0xffffffff81000000 info1 0x0",
            b"qemu-system-x86  4242 [001]  1234.500000: kvm:kvm_mmio: mmio write len 4 gpa 0xfebf0000 val 0x1",
            b"CPU 0/KVM-4242 (4240) [001] ..... 1.000000001: kvm_entry: vcpu 0, rip 0x1",
            b"a: kvm-b 1-2 (x) [0] 1: kvm: kvm_fpu: load",
            b"x-1 [000] 1.0: kvm_emulate_insn: 0:1000f:ee (prot64) failed",
            b"t 9/8 [3] 7.5:: kvm_userspace_exit: reason KVM_EXIT_IO (2)",
        ];
        let alphabet = b" :-()[]/.,0123456789xkvm_\trpa";
        let mut rng = crate::import::XorShift(0x9e37_79b9_7f4a_7c15u64);
        let (mut parsed, mut total) = (0, 0);
        for seed in seeds {
            for round in 0..20_000 {
                let l = rng.mutated(seed, alphabet, round % 4);
                total += 1;
                let want = reference::parse(&l);
                assert_eq!(parse(&l), want, "{}", String::from_utf8_lossy(&l));
                parsed += usize::from(want.is_some());
                if let Some(t) = parse_tail(&l) {
                    assert_eq!(parse_task(&l[..t.task_end]).map(|task| t.event(&l, task)), want);
                }
                let words = trim(&l[l.len() / 2..]);
                for key in [&b"rip"[..], b"at", b"gpa", b"vcpu"] {
                    assert_eq!(arg(&l, key), reference::arg(&l, key));
                }
                assert_eq!(hex(words), reference::hex_by_match(words));
                if let Some(w) = reference::arg(&l, b"rip") {
                    assert_eq!(hex(w), reference::hex_by_match(w));
                }
            }
        }
        assert!(parsed > total / 4, "the mutations leave many lines parseable: {parsed} of {total}");
    }

    #[test]
    fn same_is_equality() {
        let text = b"       CPU 0/KVM-4242    (4240) [002] d..2.  CPU 0/KVM-4242    (4240) [003] d..2.  ";
        for a in 0..text.len() {
            for b in a..text.len() {
                for c in 0..text.len() - (b - a) {
                    let (x, y) = (&text[a..b], &text[c..c + (b - a)]);
                    assert_eq!(same(x, y), x == y);
                }
            }
        }
        assert!(!same(b"ab", b"abc"));
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
