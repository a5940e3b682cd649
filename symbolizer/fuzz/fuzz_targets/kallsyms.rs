#![no_main]
//! The kallsyms parser and index: any bytes either parse or give a typed error; lookups
//! on whatever parsed never panic.

use libfuzzer_sys::fuzz_target;
use symbolizer::Symbolizer;

fuzz_target!(|data: &[u8]| {
    let Ok(sym) = Symbolizer::from_kallsyms_bytes(data, std::path::Path::new("fuzz")) else { return };
    // Probe around the addresses the input itself mentions, plus the extremes.
    let mut probes = vec![0u64, 1, u64::MAX, u64::MAX - 1];
    for word in data.split(|b| b.is_ascii_whitespace()).take(64) {
        if let Ok(a) = u64::from_str_radix(std::str::from_utf8(word).unwrap_or("x"), 16) {
            probes.extend([a, a.wrapping_add(1), a.wrapping_sub(1), a.wrapping_add(4096)]);
        }
    }
    for p in probes {
        let _ = sym.symbolize(p);
        let _ = sym.function_name(p);
    }
});
