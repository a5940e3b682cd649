//! Symbolizes addresses taken from this machine's own /proc/kallsyms. Must run as root:
//! otherwise every address reads as zero, and the test fails rather than skips.
//!
//! Expected answers are computed here independently of the crate: the owner (core kernel
//! or module) of a symbol, the next symbol of the same owner, and the documented alias
//! rule (function over data, global over weak over local, fewer leading underscores,
//! longer name, first listed).

use std::collections::BTreeMap;
use std::path::Path;

use symbolizer::Symbolizer;

struct Sym {
    addr: u64,
    kind: char,
    name: String,
    owner: String,
    order: usize,
}

fn rank(s: &Sym) -> impl Ord {
    let binding = match s.kind {
        'w' | 'W' | 'v' | 'V' => 1,
        c if c.is_ascii_uppercase() => 0,
        _ => 2,
    };
    let underscores = s.name.bytes().take_while(|&b| b == b'_').count();
    (!"tTwW".contains(s.kind), binding, underscores, std::cmp::Reverse(s.name.len()), s.order)
}

#[test]
fn proc_kallsyms_addresses_and_next_byte_resolve() {
    let text = std::fs::read_to_string("/proc/kallsyms").expect("read /proc/kallsyms");
    let mut syms = Vec::new();
    for (order, line) in text.lines().enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let kind = f[1].chars().next().unwrap();
        if "aAUNn".contains(kind) {
            continue;
        }
        syms.push(Sym {
            addr: u64::from_str_radix(f[0], 16).unwrap(),
            kind,
            name: f[2].to_string(),
            owner: f.get(3).unwrap_or(&"").to_string(),
            order,
        });
    }
    assert!(
        syms.iter().any(|s| s.addr != 0),
        "all /proc/kallsyms addresses are zero: run the tests as root"
    );

    // owner -> address -> winner
    let mut by_owner: BTreeMap<&str, BTreeMap<u64, &Sym>> = BTreeMap::new();
    for s in &syms {
        let slot = by_owner.entry(&s.owner).or_default().entry(s.addr).or_insert(s);
        if rank(s) < rank(slot) {
            *slot = s;
        }
    }

    let sym = Symbolizer::from_kallsyms(Path::new("/proc/kallsyms")).unwrap();
    let text_syms: Vec<&Sym> = syms.iter().filter(|s| "tT".contains(s.kind)).collect();
    let picked: Vec<&Sym> = text_syms
        .iter()
        .step_by(50)
        .chain(text_syms.iter().filter(|s| !s.owner.is_empty()))
        .copied()
        .collect();
    assert!(picked.len() > 1000, "only {} symbols picked", picked.len());

    let mut failures = Vec::new();
    for s in &picked {
        let addrs = &by_owner[s.owner.as_str()];
        let winner = addrs[&s.addr];
        let frames = sym.symbolize(s.addr).unwrap();
        if frames[0].function != winner.name || frames[0].offset != 0 {
            failures.push(format!("0x{:x} ({}): got {:?}, want {}+0", s.addr, s.name, frames[0], winner.name));
        }
        let next = s.addr + 1;
        let (want, off) = match addrs.get(&next) {
            Some(n) => (n.name.as_str(), 0),
            None => (winner.name.as_str(), 1),
        };
        let frames = sym.symbolize(next).unwrap();
        if frames[0].function != want || frames[0].offset != off {
            failures.push(format!("0x{next:x} ({}+1): got {:?}, want {want}+{off}", s.name, frames[0]));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures[..failures.len().min(10)].join("\n"));
    eprintln!("{} kallsyms symbols checked (address and address+1)", picked.len());
}
