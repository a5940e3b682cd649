//! The one hex parser of the project: addresses, ports and offsets as users and files write
//! them (`0x1f0`, `0X1F0`, `1f0`).

/// Parses a hexadecimal `u64`, with or without a `0x`/`0X` prefix. `None` for an empty string,
/// a non-hex digit, a sign, or a value over 64 bits.
pub fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    // from_str_radix accepts a leading '+': an address never has one.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::parse_hex;

    #[test]
    fn accepts_the_usual_spellings_and_nothing_else() {
        assert_eq!(parse_hex("0x1f0"), Some(0x1f0));
        assert_eq!(parse_hex("0X1F0"), Some(0x1f0));
        assert_eq!(parse_hex("ffffffff81000000"), Some(0xffff_ffff_8100_0000));
        assert_eq!(parse_hex("0xffffffffffffffff"), Some(u64::MAX));
        for bad in ["", "0x", "+1", "-1", "0x1g", "1 2", "0x10000000000000000"] {
            assert_eq!(parse_hex(bad), None, "{bad:?}");
        }
    }
}
