//! `kvmprof serve --config FILE`: the TOML configuration, read at start and on SIGHUP.
//!
//! ```toml
//! listen = "127.0.0.1:9477"     # --listen wins; a reload cannot move the socket
//! interval_seconds = 1.0        # --interval wins
//! top_functions = 20            # kvmprof_function_* series per VM, the rest in "[other]"
//!
//! [[vm]]                        # first entry whose glob matches the VM label wins
//! name = "web-*"                # `*` any run of characters, `?` one character
//! vmlinux = "/usr/lib/debug/boot/vmlinux-6.1.0-47-cloud-amd64"
//! kallsyms = "/var/lib/kvmprof/web-kallsyms.txt"   # optional (KASLR slide, or alone)
//! kaslr_offset = "auto"         # optional: "auto" or hex, as `report --kaslr-offset`
//! ```
//!
//! Unknown keys are errors: a typo must not silently drop a VM's symbols.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use symbolizer::{GuestSymbols, KaslrSlide};

/// Where `serve` listens unless told otherwise: loopback, so a host does not publish its VM
/// and guest-function names by accident.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9477";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_TOP_FUNCTIONS: usize = 20;
/// Shortest poll interval: a snapshot reads every map entry (about 5 ms at 1000 keys).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: Option<SocketAddr>,
    pub interval: Option<Duration>,
    pub top_functions: usize,
    pub vms: Vec<VmSymbols>,
}

impl Default for Config {
    fn default() -> Self {
        Config { listen: None, interval: None, top_functions: DEFAULT_TOP_FUNCTIONS, vms: Vec::new() }
    }
}

/// The guest symbols of the VMs whose label matches `name`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmSymbols {
    pub name: String,
    pub symbols: GuestSymbols,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    interval_seconds: Option<f64>,
    top_functions: Option<usize>,
    #[serde(default)]
    vm: Vec<RawVm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    name: String,
    vmlinux: Option<PathBuf>,
    kallsyms: Option<PathBuf>,
    kaslr_offset: Option<String>,
}

impl Config {
    /// Reads and checks a config file; the error is one line naming the file (and the line).
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        Config::parse(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| one_line(&e, text))?;
        let listen = raw.listen.map(|l| l.parse::<SocketAddr>().map_err(|_| format!("listen = {l:?} is not an address:port such as {DEFAULT_LISTEN}"))).transpose()?;
        let interval = raw.interval_seconds.map(|s| parse_interval(s).map_err(|e| format!("interval_seconds: {e}"))).transpose()?;
        let top_functions = raw.top_functions.unwrap_or(DEFAULT_TOP_FUNCTIONS);
        if top_functions == 0 || top_functions > 1000 {
            return Err(format!("top_functions = {top_functions}: give 1 to 1000"));
        }
        let mut vms = Vec::new();
        for (i, v) in raw.vm.into_iter().enumerate() {
            if v.vmlinux.is_none() && v.kallsyms.is_none() {
                return Err(format!("[[vm]] #{} ({:?}): give vmlinux or kallsyms", i + 1, v.name));
            }
            let kaslr = match v.kaslr_offset.as_deref() {
                None => KaslrSlide::None,
                Some(s) => parse_slide(s).ok_or_else(|| format!("[[vm]] #{} ({:?}): kaslr_offset = {s:?}: give \"auto\" or hex such as \"0x1e000000\"", i + 1, v.name))?,
            };
            vms.push(VmSymbols { name: v.name, symbols: GuestSymbols { vmlinux: v.vmlinux, kallsyms: v.kallsyms, kaslr } });
        }
        Ok(Config { listen, interval, top_functions, vms })
    }

    /// The symbol sources of the first `[[vm]]` whose glob matches `label`.
    pub fn symbols_for(&self, label: &str) -> Option<&GuestSymbols> {
        self.vms.iter().find(|v| glob_match(&v.name, label)).map(|v| &v.symbols)
    }
}

/// A poll interval in seconds, at least [`MIN_INTERVAL`].
pub fn parse_interval(secs: f64) -> Result<Duration, String> {
    if !secs.is_finite() || secs < MIN_INTERVAL.as_secs_f64() || secs > 3600.0 {
        return Err(format!("{secs} is not a number of seconds from {} to 3600", MIN_INTERVAL.as_secs_f64()));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_slide(s: &str) -> Option<KaslrSlide> {
    if s.eq_ignore_ascii_case("auto") {
        return Some(KaslrSlide::Auto);
    }
    let (neg, digits) = match s.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.trim()),
    };
    let v = profiler_common::parse_hex(digits)? as i64;
    Some(KaslrSlide::Offset(if neg { v.wrapping_neg() } else { v }))
}

/// toml's messages span several lines (a source excerpt); the log wants one.
fn one_line(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => format!("line {}: {msg}", text[..span.start.min(text.len())].matches('\n').count() + 1),
        None => msg,
    }
}

/// Shell-style glob: `*` matches any run of characters (also none), `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking to the last `*`: linear in practice, no recursion.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("*-db-*", "eu-db-7"));
        assert!(!glob_match("web-*", "db-1"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(
            "listen = \"127.0.0.1:9999\"\ninterval_seconds = 0.5\ntop_functions = 5\n\
             [[vm]]\nname = \"web-*\"\nvmlinux = \"/v\"\nkallsyms = \"/k\"\nkaslr_offset = \"auto\"\n\
             [[vm]]\nname = \"*\"\nkallsyms = \"/k2\"\nkaslr_offset = \"-0x1000\"\n",
        )
        .unwrap();
        assert_eq!(c.listen, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.interval, Some(Duration::from_millis(500)));
        assert_eq!(c.top_functions, 5);
        assert_eq!(c.symbols_for("web-3").unwrap().vmlinux.as_deref(), Some(Path::new("/v")));
        assert_eq!(c.symbols_for("web-3").unwrap().kaslr, KaslrSlide::Auto);
        assert_eq!(c.symbols_for("db").unwrap().kaslr, KaslrSlide::Offset(-0x1000));
    }

    #[test]
    fn errors_are_one_line() {
        for bad in ["listen = 3", "top_functions = 0", "interval_seconds = 0.001", "[[vm]]\nname = \"x\"\n", "typo = 1", "[[vm]\n", "listen = \"nope\""] {
            let e = Config::parse(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad:?}: {e:?}");
        }
    }
}
