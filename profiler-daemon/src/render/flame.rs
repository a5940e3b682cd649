//! Flame graphs: folded stacks (`caller;function;reason count`) rendered to SVG by `inferno`.
use anyhow::{Context, Result};

/// Renders folded-stack text (one `frame;frame;... weight` per line) as an interactive SVG
/// flame graph. `title` heads the graph; the weight is named "exits".
pub fn svg_from_folded(folded: &str, title: &str) -> Result<Vec<u8>> {
    if folded.lines().all(|l| l.trim().is_empty()) {
        anyhow::bail!("no exits to draw: the flame graph would be empty");
    }
    let mut opts = inferno::flamegraph::Options::default();
    opts.title = title.to_string();
    opts.count_name = "exits".to_string();
    opts.subtitle = Some("stack: caller;function;exit reason; width = number of VM exits".to_string());
    let mut out = Vec::new();
    inferno::flamegraph::from_lines(&mut opts, folded.lines(), &mut out).context("rendering the flame graph")?;
    Ok(out)
}

/// Writes the flame graph of `folded` to `path`.
pub fn write_svg(folded: &str, title: &str, path: &std::path::Path) -> Result<()> {
    let svg = svg_from_folded(folded, title)?;
    std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_frames() {
        let svg = svg_from_folded("disk_write_workload;ide_do_rw_disk;IO 120\nverify_pmtmr_rate;IO 40\n", "t").unwrap();
        let s = String::from_utf8(svg).unwrap();
        assert!(s.contains("<svg") && s.contains("ide_do_rw_disk") && s.contains("verify_pmtmr_rate"));
        assert!(svg_from_folded("", "t").is_err());
    }
}
