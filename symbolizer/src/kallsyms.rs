//! The text format of `/proc/kallsyms`: `ADDRESS TYPE NAME [\t[MODULE]]`.
//!
//! kallsyms has no sizes: a symbol reaches up to the next symbol of the same owner
//! (core kernel or one module). The last symbol of an owner reaches to the end of its
//! 4 KiB page (see `index::LAST_IN_GROUP_REACH`).

use std::collections::HashMap;
use std::path::Path;

use crate::error::SymbolizeError;
use crate::index::{Binding, RawSymbol};

/// Parses kallsyms text. Absolute (`a`/`A`), undefined (`U`) and debugger-only (`N`/`n`)
/// entries carry no code address and are skipped.
pub fn parse(text: &[u8], path: &Path) -> Result<Vec<RawSymbol>, SymbolizeError> {
    let mut out = Vec::new();
    let mut modules: HashMap<String, u32> = HashMap::new();
    let mut any_nonzero = false;
    let mut lines_seen = 0usize;
    let bad = |line: usize, reason: &str| SymbolizeError::BadKallsyms {
        path: path.to_path_buf(),
        line,
        reason: reason.to_string(),
    };
    for (i, raw_line) in text.split(|&b| b == b'\n').enumerate() {
        let lineno = i + 1;
        let line = std::str::from_utf8(raw_line).map_err(|_| bad(lineno, "not UTF-8 text"))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        lines_seen += 1;
        let mut fields = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(lineno, "fewer than 3 fields"));
        };
        let module = fields.next();
        if fields.next().is_some() {
            return Err(bad(lineno, "more than 4 fields"));
        }
        if addr.is_empty() || addr.len() > 16 {
            return Err(bad(lineno, "address is not 1 to 16 hex digits"));
        }
        let addr = u64::from_str_radix(addr, 16).map_err(|_| bad(lineno, "address is not hex"))?;
        let mut kind_chars = kind.chars();
        let kind = match (kind_chars.next(), kind_chars.next()) {
            (Some(c), None) if c.is_ascii_alphabetic() => c,
            _ => return Err(bad(lineno, "type is not one letter")),
        };
        let group = match module {
            None => 0,
            Some(m) => {
                let Some(m) = m.strip_prefix('[').and_then(|m| m.strip_suffix(']')) else {
                    return Err(bad(lineno, "module is not written [name]"));
                };
                let next = modules.len() as u32 + 1;
                *modules.entry(m.to_string()).or_insert(next)
            }
        };
        any_nonzero |= addr != 0;
        if matches!(kind, 'a' | 'A' | 'U' | 'N' | 'n') {
            continue;
        }
        let binding = match kind {
            'w' | 'W' | 'v' | 'V' => Binding::Weak,
            c if c.is_ascii_uppercase() => Binding::Global,
            _ => Binding::Local,
        };
        out.push(RawSymbol {
            addr,
            size: 0,
            name: name.to_string(),
            is_function: matches!(kind, 't' | 'T' | 'w' | 'W'),
            binding,
            group,
            group_end: None,
            file: None,
        });
    }
    if lines_seen == 0 {
        return Err(SymbolizeError::EmptyKallsyms { path: path.to_path_buf() });
    }
    if !any_nonzero {
        return Err(SymbolizeError::ZeroKallsyms { path: path.to_path_buf() });
    }
    if out.is_empty() {
        return Err(SymbolizeError::EmptyKallsyms { path: path.to_path_buf() });
    }
    Ok(out)
}

/// The runtime address of `_text` (or `_stext`) in a kallsyms file.
pub fn text_address(syms: &[RawSymbol]) -> Option<u64> {
    ["_text", "_stext"]
        .iter()
        .find_map(|want| syms.iter().find(|s| s.group == 0 && s.name == *want).map(|s| s.addr))
}
