//! The demo's SVG bar charts and flame graph: valid XML with labelled axes, a title and
//! one bar per (category, series).
use profiler_daemon::flame;
use profiler_daemon::plot::{BarChart, Series, BLUE, ORANGE};

/// Texts of the `<text class=CLASS>` elements.
pub fn texts(doc: &roxmltree::Document, class: &str) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text") && n.attribute("class") == Some(class))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}

#[test]
fn bar_chart_is_valid_svg_with_labels_and_bars() {
    let c = BarChart {
        title: "Table 4: IDE register-write exits".into(),
        x_label: "I/O port written".into(),
        y_label: "VM exits".into(),
        categories: vec!["0x1f1".into(), "0x1f7".into(), "0x510".into()],
        series: vec![
            Series { name: "before".into(), values: vec![200.0, 104.0, 0.0], color: BLUE },
            Series { name: "after".into(), values: vec![0.0, 4.0, 100.0], color: ORANGE },
        ],
        note: Some("paper: -85%".into()),
    };
    let svg = c.to_svg();
    let doc = roxmltree::Document::parse(&svg).expect("valid XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
    assert_eq!(texts(&doc, "title"), vec!["Table 4: IDE register-write exits"]);
    assert_eq!(texts(&doc, "xlabel"), vec!["I/O port written"]);
    assert_eq!(texts(&doc, "ylabel"), vec!["VM exits"]);
    assert_eq!(texts(&doc, "xtick"), vec!["0x1f1", "0x1f7", "0x510"]);
    assert!(texts(&doc, "ytick").len() >= 3);
    let bars: Vec<_> = doc.descendants().filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("bar")).collect();
    assert_eq!(bars.len(), 6);
    // Taller value, taller bar; heights are non-negative and inside the picture.
    let h = |i: usize| bars[i].attribute("height").unwrap().parse::<f64>().unwrap();
    // Bars go category by category, series within: 200, 0, 104, 4, 0, 100.
    assert!(h(0) > h(2) && h(2) > h(5) && h(5) > h(3) && h(3) > 0.0 && h(1) == 0.0 && h(4) == 0.0);
    for b in &bars {
        let y: f64 = b.attribute("y").unwrap().parse().unwrap();
        assert!((0.0..=480.0).contains(&y) && h(0) <= 480.0);
    }
    assert_eq!(texts(&doc, "legend"), vec!["before", "after"]);
}

#[test]
fn flame_graph_is_valid_svg() {
    let svg = flame::svg_from_folded("disk_write_workload;ide_do_rw_disk;IO_out_0x1f3 200\nverify_pmtmr_rate;IO_in_0x608 900\n", "exits").unwrap();
    let text = String::from_utf8(svg).unwrap();
    let doc = roxmltree::Document::parse_with_options(&text, roxmltree::ParsingOptions { allow_dtd: true, ..Default::default() }).expect("valid XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let frames: Vec<String> = doc.descendants().filter(|n| n.has_tag_name("title")).filter_map(|n| n.text().map(str::to_string)).collect();
    assert!(frames.iter().any(|t| t.starts_with("ide_do_rw_disk")), "{frames:?}");
    assert!(frames.iter().any(|t| t.starts_with("verify_pmtmr_rate")), "{frames:?}");
}
