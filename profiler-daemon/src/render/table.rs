//! The aligned text tables of `report`, `report --by caller` and `diff`: columns two spaces
//! apart, numbers right-aligned and text left-aligned, as in the paper's tables.
use std::fmt::Write as _;
use std::ops::RangeInclusive;

/// `header` and `rows` as aligned lines; the columns in `numeric` are right-aligned.
pub fn render<R: AsRef<[String]>>(header: &[&str], rows: &[R], numeric: RangeInclusive<usize>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, v) in widths.iter_mut().zip(r.as_ref()) {
            *w = (*w).max(v.len());
        }
    }
    let mut s = String::new();
    let mut line = |vals: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, (v, w)) in vals.zip(&widths).enumerate() {
            if numeric.contains(&i) {
                let _ = write!(l, "{v:>w$}  ");
            } else {
                let _ = write!(l, "{v:<w$}  ");
            }
        }
        let _ = writeln!(s, "{}", l.trim_end());
    };
    line(&mut header.iter().copied());
    for r in rows {
        line(&mut r.as_ref().iter().map(String::as_str));
    }
    s
}

/// The line that says rows were cut by `--top`, if any were.
pub fn more_rows(shown: usize, total: usize) -> Option<String> {
    (shown < total).then(|| format!("({} more rows; use --top to see more)", total - shown))
}
