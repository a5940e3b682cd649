//! The demo's SVG bar charts and flame graph: valid XML with labelled axes, a title and
//! one bar per (category, series).
use profiler_daemon::render::flame;
use profiler_daemon::render::plot::{BarChart, Series, BLUE, GREEN, ORANGE};

/// Texts of the `<text class=CLASS>` elements.
pub fn texts(doc: &roxmltree::Document, class: &str) -> Vec<String> {
    doc.descendants()
        .filter(|n| n.has_tag_name("text") && n.attribute("class") == Some(class))
        .map(|n| n.text().unwrap_or("").to_string())
        .collect()
}

/// The `data-value` of every `<rect class="bar">`, in document order (category by category,
/// series within), parsed back to the number plotted.
pub fn bar_values(doc: &roxmltree::Document) -> Vec<f64> {
    doc.descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("class") == Some("bar"))
        .map(|n| {
            let v = n.attribute("data-value").unwrap_or_else(|| panic!("bar without data-value: {n:?}"));
            v.parse::<f64>().unwrap_or_else(|e| panic!("data-value {v:?} is not a number: {e}"))
        })
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
    // Each bar carries the value it plots, in the same order.
    assert_eq!(bar_values(&doc), vec![200.0, 0.0, 104.0, 4.0, 0.0, 100.0]);
    // Heights are proportional to the values (the axis starts at 0).
    let per_unit = h(0) / 200.0;
    for (i, v) in bar_values(&doc).iter().enumerate() {
        assert!((h(i) - v * per_unit).abs() <= 0.1, "bar {i} ({v}) is {} high, not {}", h(i), v * per_unit);
    }
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

#[test]
fn bar_values_are_the_series_values_exactly() {
    // Fractions, tiny and large values: what the chart plots is readable back exactly, not
    // as the rounded label printed above the bar.
    let a = vec![258.04123456789, 0.1 + 0.2, 1e-7, 123_456_789.125];
    let b = vec![286.1, 2.0 / 3.0, 0.0, 9_007_199_254_740_993.0];
    let c = BarChart {
        title: "t".into(),
        x_label: "x".into(),
        y_label: "y".into(),
        categories: vec!["c0".into(), "c1".into(), "c2".into(), "c3".into()],
        series: vec![
            Series { name: "a".into(), values: a.clone(), color: GREEN },
            Series { name: "b".into(), values: b.clone(), color: BLUE },
        ],
        note: None,
    };
    let svg = c.to_svg();
    let doc = roxmltree::Document::parse(&svg).expect("valid XML");
    let want: Vec<f64> = a.iter().zip(&b).flat_map(|(x, y)| [*x, *y]).collect();
    let got = bar_values(&doc);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.to_bits(), w.to_bits(), "data-value {g} is not the plotted {w}");
    }
    // The printed labels are rounded; the data-values are not.
    assert!(texts(&doc, "value").iter().any(|t| t == "258"), "{:?}", texts(&doc, "value"));
}
