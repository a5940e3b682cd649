//! Grouped bar charts as SVG, for the demo's before/after comparisons.
//!
//! Hand-written rather than `plotters`: the charts are a few rectangles, lines and labels,
//! and `plotters`' default text rendering pulls in font discovery (fontconfig/freetype)
//! that a headless build machine may not have. Text here is plain SVG `<text>`, so any
//! viewer renders it with its own fonts, and tests can read every label back.
use std::fmt::Write as _;

/// One series of bars: one value per category, drawn in one colour.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
    pub color: &'static str,
}

#[derive(Debug, Clone)]
pub struct BarChart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
    /// A line of small print under the x-axis label (e.g. the paper's figure for comparison).
    pub note: Option<String>,
}

pub const BLUE: &str = "#4e79a7";
pub const ORANGE: &str = "#f28e2b";
pub const GREEN: &str = "#59a14f";
pub const GREY: &str = "#9d9d9d";

const W: f64 = 800.0;
const H: f64 = 480.0;
const LEFT: f64 = 100.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 80.0;
const BOTTOM: f64 = 110.0;

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A "nice" axis maximum and tick step (1, 2 or 5 times a power of ten) covering `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.2);
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// Short number for labels: 12345 -> "12345", 0.5 -> "0.5", 1234567 -> "1.23M".
pub fn short_num(v: f64) -> String {
    // Adding 0.0 turns -0.0 (the sum of no values) into 0.0, which prints without a sign.
    let v = v + 0.0;
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{:.0}", v)
    } else if a >= 1.0 {
        format!("{:.1}", v)
    } else {
        format!("{:.2}", v)
    }
}

impl BarChart {
    pub fn to_svg(&self) -> String {
        let mut s = String::new();
        let max = self.series.iter().flat_map(|x| x.values.iter().copied()).fold(0.0f64, f64::max);
        let (ymax, step) = nice_axis(max);
        let plot_w = W - LEFT - RIGHT;
        let plot_h = H - TOP - BOTTOM;
        let y_of = |v: f64| TOP + plot_h - (v.max(0.0) / ymax) * plot_h;
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="DejaVu Sans, Arial, sans-serif">"#
        );
        let _ = writeln!(s, r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#);
        // Long titles get a smaller font so they fit the width (about 0.6 em per character).
        let title_size = (W - 20.0) / (0.62 * self.title.chars().count().max(1) as f64);
        let _ = writeln!(
            s,
            r#"<text class="title" x="{}" y="30" font-size="{:.1}" font-weight="bold" text-anchor="middle">{}</text>"#,
            W / 2.0,
            title_size.min(18.0),
            escape(&self.title)
        );
        // Grid lines and y ticks.
        let mut v = 0.0;
        while v <= ymax + step / 2.0 {
            let y = y_of(v);
            let _ = writeln!(s, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e0e0e0"/>"##, LEFT + plot_w);
            let _ = writeln!(s, r#"<text class="ytick" x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{}</text>"#, LEFT - 8.0, y + 4.0, short_num(v));
            v += step;
        }
        // Axes.
        let _ = writeln!(s, r#"<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="black"/>"#, TOP + plot_h);
        let _ = writeln!(s, r#"<line class="axis" x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/>"#, TOP + plot_h, LEFT + plot_w, TOP + plot_h);
        // Bars.
        let ncat = self.categories.len().max(1) as f64;
        let nser = self.series.len().max(1) as f64;
        let group_w = plot_w / ncat;
        let bar_w = (group_w * 0.7 / nser).min(120.0);
        for (ci, cat) in self.categories.iter().enumerate() {
            let gx = LEFT + group_w * ci as f64 + (group_w - bar_w * nser) / 2.0;
            for (si, ser) in self.series.iter().enumerate() {
                let v = ser.values.get(ci).copied().unwrap_or(0.0);
                let x = gx + bar_w * si as f64;
                let y = y_of(v);
                let h = TOP + plot_h - y;
                let _ = writeln!(
                    s,
                    r#"<rect class="bar" data-value="{v}" x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                    bar_w - 4.0,
                    ser.color,
                    escape(&format!("{} / {}", cat, ser.name)),
                    short_num(v)
                );
                let _ = writeln!(s, r#"<text class="value" x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#, x + (bar_w - 4.0) / 2.0, y - 5.0, short_num(v));
            }
            let _ = writeln!(s, r#"<text class="xtick" x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle">{}</text>"#, LEFT + group_w * (ci as f64 + 0.5), TOP + plot_h + 20.0, escape(cat));
        }
        // Axis labels.
        let _ = writeln!(s, r#"<text class="xlabel" x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle">{}</text>"#, LEFT + plot_w / 2.0, TOP + plot_h + 50.0, escape(&self.x_label));
        let (yx, yy) = (28.0, TOP + plot_h / 2.0);
        let _ = writeln!(s, r#"<text class="ylabel" x="{yx}" y="{yy:.1}" font-size="14" text-anchor="middle" transform="rotate(-90 {yx} {yy:.1})">{}</text>"#, escape(&self.y_label));
        if let Some(n) = &self.note {
            let _ = writeln!(s, r##"<text class="note" x="{:.1}" y="{:.1}" font-size="12" fill="#555" text-anchor="middle">{}</text>"##, W / 2.0, H - 18.0, escape(n));
        }
        // Legend.
        let mut lx = LEFT;
        for ser in &self.series {
            let _ = writeln!(s, r#"<rect class="legend" x="{lx:.1}" y="48" width="14" height="14" fill="{}"/>"#, ser.color);
            let _ = writeln!(s, r#"<text class="legend" x="{:.1}" y="60" font-size="13">{}</text>"#, lx + 20.0, escape(&ser.name));
            lx += 40.0 + 8.0 * ser.name.chars().count() as f64;
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_is_nice() {
        assert_eq!(nice_axis(1204.0), (1500.0, 500.0));
        assert_eq!(nice_axis(9.0), (10.0, 2.0));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
    }

    #[test]
    fn escapes_text() {
        let c = BarChart {
            title: "a<b & c".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            categories: vec!["<T as W>::f".into()],
            series: vec![Series { name: "s".into(), values: vec![3.0], color: BLUE }],
            note: None,
        };
        let svg = c.to_svg();
        assert!(svg.contains("a&lt;b &amp; c") && svg.contains("&lt;T as W&gt;::f"));
    }
}
