//! `kvmprof symbolize`'s answers as text or JSON.
use std::sync::Arc;

use symbolizer::Frame;

/// One address and its frames (innermost first), or `None` when no symbol covers it.
pub type Answer = (u64, Option<Arc<[Frame]>>);

fn location(f: &Frame) -> String {
    let line = f.line.map_or_else(|| "?".to_string(), |l| l.to_string());
    format!("{}:{line}", f.file.as_deref().unwrap_or("??"))
}

/// One line per address (innermost frame), then one indented line per inlined caller.
pub fn render_text(answers: &[Answer]) -> String {
    let mut out = String::new();
    for (addr, frames) in answers {
        match frames {
            None => out.push_str(&format!("0x{addr:x} [unknown]\n")),
            Some(frames) => {
                for (i, f) in frames.iter().enumerate() {
                    let lead = if i == 0 { format!("0x{addr:x}") } else { " ".repeat(format!("0x{addr:x}").len()) };
                    out.push_str(&format!("{lead} {}+0x{:x} {}\n", f.function, f.offset, location(f)));
                }
            }
        }
    }
    out
}

/// Field order as documented (serde_json would sort a `json!` map).
#[derive(serde::Serialize)]
struct JsonFrame<'a> {
    function: Option<&'a str>,
    offset: Option<u64>,
    file: Option<&'a str>,
    line: Option<u32>,
    inlined: bool,
}

#[derive(serde::Serialize)]
struct JsonAnswer<'a> {
    addr: String,
    frames: Vec<JsonFrame<'a>>,
}

pub fn render_json(answers: &[Answer]) -> String {
    let items: Vec<JsonAnswer<'_>> = answers
        .iter()
        .map(|(addr, frames)| JsonAnswer {
            addr: format!("0x{addr:x}"),
            frames: match frames {
                None => vec![JsonFrame { function: None, offset: None, file: None, line: None, inlined: false }],
                Some(frames) => frames
                    .iter()
                    .map(|f| JsonFrame {
                        function: Some(&f.function),
                        offset: Some(f.offset),
                        file: f.file.as_deref(),
                        line: f.line,
                        inlined: f.inlined,
                    })
                    .collect(),
            },
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default() + "\n"
}
