//! `kvmprof symbolize`: guest RIPs → function+offset, file:line and inlined frames.
//! A thin layer over the `symbolizer` crate; `report` reuses [`load_symbolizer`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use symbolizer::{Frame, Symbolizer};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymbolizeFormat {
    /// `0xADDR function+0xOFF file:line`, inlined callers on indented lines below.
    Text,
    /// `[{"addr": "0x...", "frames": [{"function", "offset", "file", "line"}, ...]}]`.
    Json,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
kvmprof symbolize --vmlinux /usr/lib/debug/boot/vmlinux-$(uname -r) 0xffffffff81a06274\n  \
kvmprof symbolize --vmlinux vmlinux --kallsyms guest-kallsyms.txt ffffffff9fa06274   (KASLR slide detected)\n  \
kvmprof symbolize --kallsyms guest-kallsyms.txt --format json ffffffffc0a01234\n\n\
Frames are printed innermost first: an address inside inlined code shows the inlined \
function, then each caller it was inlined into, down to the real function. Unknown file or \
line prints as `??` / `?`. An address outside every symbol prints `0xADDR [unknown]` \
(JSON: a frame with null fields) and makes the command exit non-zero.")]
pub struct SymbolizeArgs {
    /// Guest kernel ELF with symbols (and DWARF for file:line and inlined frames), e.g.
    /// the vmlinux from linux-image-*-dbg under /usr/lib/debug/boot/.
    #[arg(long, value_name = "ELF", required_unless_present = "kallsyms")]
    pub vmlinux: Option<PathBuf>,
    /// A copy of the guest's /proc/kallsyms (read as root). Alone: symbols come from it.
    /// With --vmlinux: only used to detect the KASLR slide from its `_text`/`_stext`.
    #[arg(long, value_name = "FILE")]
    pub kallsyms: Option<PathBuf>,
    /// KASLR slide (runtime − link address) in hex, or `auto` to compute it from
    /// --kallsyms and --vmlinux (the default when both are given).
    #[arg(long, value_name = "HEX|auto", allow_hyphen_values = true)]
    pub kaslr_offset: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = SymbolizeFormat::Text)]
    pub format: SymbolizeFormat,
    /// Guest addresses (RIPs), hex with or without 0x.
    #[arg(value_name = "ADDR", required = true)]
    pub addrs: Vec<String>,
}

/// Loads the symbol source for `symbolize` and `report`. `None` when neither file is given.
///
/// - `vmlinux` alone: link addresses, slide from `kaslr` (hex) if given.
/// - `vmlinux` + `kallsyms`: slide detected from the two files (or `kaslr` hex if given).
/// - `kallsyms` alone: runtime addresses; a hex `kaslr` is still subtracted.
///
/// Symbolizer warnings (no DWARF, split DWARF) go to stderr.
pub fn load_symbolizer(
    vmlinux: Option<&Path>,
    kallsyms: Option<&Path>,
    kaslr: Option<&str>,
) -> Result<Option<Symbolizer>> {
    let auto = kaslr.is_some_and(|k| k.eq_ignore_ascii_case("auto"));
    let explicit = match kaslr {
        Some(k) if !auto => Some(
            symbolizer::parse_kaslr_offset(k)
                .with_context(|| format!("--kaslr-offset {k:?} is not hex (e.g. 0x1e000000) or `auto`"))?,
        ),
        _ => None,
    };
    let sym = match (vmlinux, kallsyms) {
        (None, None) => {
            if kaslr.is_some() {
                bail!("--kaslr-offset needs --vmlinux or --kallsyms");
            }
            return Ok(None);
        }
        (Some(elf), ks) => {
            let mut sym = Symbolizer::from_elf(elf)?;
            let slide = match (explicit, ks) {
                (Some(s), _) => Some(s),
                (None, Some(ks)) => Some(symbolizer::kaslr_offset_from_kallsyms(elf, ks)?),
                (None, None) if auto => {
                    bail!("--kaslr-offset auto needs the guest's kallsyms too: add --kallsyms FILE")
                }
                (None, None) => None,
            };
            if let Some(s) = slide {
                sym.set_kaslr_offset(s);
            }
            sym
        }
        (None, Some(ks)) => {
            if auto {
                bail!("--kaslr-offset auto needs --vmlinux too (kallsyms addresses are already runtime addresses)");
            }
            let mut sym = Symbolizer::from_kallsyms(ks)?;
            if let Some(s) = explicit {
                sym.set_kaslr_offset(s);
            }
            sym
        }
    };
    for w in sym.warnings() {
        eprintln!("warning: {w}");
    }
    Ok(Some(sym))
}

pub fn run(args: &SymbolizeArgs) -> Result<()> {
    let addrs: Vec<u64> = args.addrs.iter().map(|a| parse_addr(a)).collect::<Result<_>>()?;
    let sym = load_symbolizer(args.vmlinux.as_deref(), args.kallsyms.as_deref(), args.kaslr_offset.as_deref())?
        .context("give --vmlinux ELF or --kallsyms FILE")?;

    let answers: Vec<(u64, Option<std::sync::Arc<[Frame]>>)> =
        addrs.iter().map(|&a| (a, sym.symbolize(a).ok())).collect();
    let out = match args.format {
        SymbolizeFormat::Text => render_text(&answers),
        SymbolizeFormat::Json => render_json(&answers)?,
    };
    print!("{out}");

    let unknown: Vec<String> = answers.iter().filter(|(_, f)| f.is_none()).map(|(a, _)| format!("0x{a:x}")).collect();
    match unknown.len() {
        0 => Ok(()),
        1 => bail!("{} is outside every known symbol: check that the vmlinux/kallsyms match the guest and the --kaslr-offset", unknown[0]),
        n => bail!(
            "{n} of {} addresses are outside every known symbol ({}): check that the vmlinux/kallsyms match the guest and the --kaslr-offset",
            answers.len(),
            unknown.join(", ")
        ),
    }
}

fn parse_addr(s: &str) -> Result<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")).unwrap_or(s);
    u64::from_str_radix(digits, 16).with_context(|| format!("{s:?} is not a hex address (e.g. 0xffffffff81a06274)"))
}

fn location(f: &Frame) -> String {
    let line = f.line.map_or_else(|| "?".to_string(), |l| l.to_string());
    format!("{}:{line}", f.file.as_deref().unwrap_or("??"))
}

/// One line per address (innermost frame), then one indented line per inlined caller.
pub fn render_text(answers: &[(u64, Option<std::sync::Arc<[Frame]>>)]) -> String {
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

pub fn render_json(answers: &[(u64, Option<std::sync::Arc<[Frame]>>)]) -> Result<String> {
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
    Ok(serde_json::to_string_pretty(&items)? + "\n")
}
