use super::*;

fn ks(text: &str) -> Result<Symbolizer, SymbolizeError> {
    Symbolizer::from_kallsyms_bytes(text.as_bytes(), Path::new("test-kallsyms"))
}

#[test]
fn kallsyms_sizes_come_from_next_symbol() {
    let s = ks("ffffffff81000000 T a\nffffffff81000010 t b\nffffffff81000030 T c\n").unwrap();
    assert_eq!(s.function_name(0xffffffff8100000f).as_deref(), Some("a"));
    assert_eq!(s.function_name(0xffffffff81000010).as_deref(), Some("b"));
    let f = s.symbolize(0xffffffff81000011).unwrap();
    assert_eq!((f[0].function.as_str(), f[0].offset, f[0].inlined), ("b", 1, false));
    assert!(matches!(s.symbolize(0xffffffff80000000), Err(SymbolizeError::NotFound { .. })));
}

#[test]
fn kallsyms_alias_rule() {
    // Same address: function beats data, global beats local, fewer leading underscores,
    // then longer name.
    let s = ks("ffffffff81000000 T _text\nffffffff81000000 T srso_alias_untrain_ret\n\
                ffffffff81000000 T _stext\nffffffff81000000 T __pi__text\nffffffff81000100 T x\n")
    .unwrap();
    assert_eq!(s.function_name(0xffffffff81000000).as_deref(), Some("srso_alias_untrain_ret"));
    let s = ks("1000 t loc\n1000 T glob\n1000 D data\n2000 T z\n").unwrap();
    assert_eq!(s.function_name(0x1000).as_deref(), Some("glob"));
}

#[test]
fn kallsyms_modules_do_not_bound_each_other() {
    let s = ks("ffffffffc0000000 t m1_f\t[m1]\nffffffffc0000100 t m2_f\t[m2]\nffffffffc0000040 t m1_g\t[m1]\n").unwrap();
    assert_eq!(s.function_name(0xffffffffc000003f).as_deref(), Some("m1_f"));
    assert_eq!(s.function_name(0xffffffffc0000041).as_deref(), Some("m1_g"));
    assert_eq!(s.function_name(0xffffffffc0000100).as_deref(), Some("m2_f"));
    // Last symbol of a module reaches to its page end only.
    assert_eq!(s.function_name(0xffffffffc0000fff).as_deref(), Some("m2_f"));
    assert!(s.symbolize(0xffffffffc0001000).is_err());
}

#[test]
fn kallsyms_bad_input() {
    assert!(matches!(ks(""), Err(SymbolizeError::EmptyKallsyms { .. })));
    assert!(matches!(ks("\n\n"), Err(SymbolizeError::EmptyKallsyms { .. })));
    assert!(matches!(ks("0000000000000000 T a\n"), Err(SymbolizeError::ZeroKallsyms { .. })));
    for garbled in ["zzzz T a\n", "1000 T\n", "1000 TT a\n", "1000 T a b c\n", "1000 T a junk\n", "\u{0}\u{ff}"] {
        let e = ks(garbled).unwrap_err();
        assert!(matches!(e, SymbolizeError::BadKallsyms { .. }), "{garbled:?} -> {e:?}");
        assert!(!e.to_string().contains('\n'));
    }
    let e = Symbolizer::from_kallsyms_bytes(b"1000 T a\n\xff\xfe\n", Path::new("k")).unwrap_err();
    assert!(e.to_string().starts_with("k:2: "), "{e}");
}

#[test]
fn kaslr_slide_is_subtracted() {
    let mut s = ks("1000 T a\n2000 T b\n").unwrap();
    s.set_kaslr_offset(0x10_0000);
    assert_eq!(s.function_name(0x10_1001).as_deref(), Some("a"));
    assert!(s.symbolize(0x1001).is_err());
    s.set_kaslr_offset(-0x800);
    assert_eq!(s.function_name(0x1801).as_deref(), Some("b"));
}

#[test]
fn symbolizer_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Symbolizer>();
}
