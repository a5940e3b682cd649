//! tracefs: mounting it when missing, and reading tracepoint formats (field offsets, print
//! formats) from the running kernel rather than from headers.
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const MOUNT_HINT: &str = "mount -t tracefs nodev /sys/kernel/tracing";

/// Makes sure the KVM tracepoints are visible under tracefs, mounting it if needed.
pub fn ensure_mounted() -> Result<PathBuf> {
    let root = PathBuf::from(TRACEFS);
    if root.join("events/kvm").is_dir() {
        return Ok(root);
    }
    if !root.join("events").is_dir() {
        let src = CString::new("nodev").unwrap();
        let target = CString::new(TRACEFS).unwrap();
        let fstype = CString::new("tracefs").unwrap();
        // SAFETY: all pointers are valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            let err = std::io::Error::last_os_error();
            bail!("tracefs is not mounted and mounting it failed ({err}); run: {MOUNT_HINT}");
        }
    }
    if !root.join("events/kvm").is_dir() {
        bail!("no KVM tracepoints under {TRACEFS}/events/kvm: load the kvm module (modprobe kvm) and check that {TRACEFS} is tracefs");
    }
    Ok(root)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone)]
pub struct EventFormat {
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl EventFormat {
    pub fn read(tracefs: &Path, system: &str, event: &str) -> Result<EventFormat> {
        let path = tracefs.join("events").join(system).join(event).join("format");
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read tracepoint format {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("cannot parse {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<EventFormat> {
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                print_fmt = rest.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else { continue };
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next().unwrap_or("");
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // "unsigned long guest_rip" / "__u8 insn[15]": the name is the last word, less any array suffix.
            let name = decl.rsplit(' ').next().unwrap_or("").split('[').next().unwrap_or("").to_string();
            match (offset, size) {
                (Some(offset), Some(size)) if !name.is_empty() => fields.push(Field { name, offset, size }),
                _ => bail!("malformed field line: {line}"),
            }
        }
        if fields.is_empty() {
            bail!("no fields");
        }
        Ok(EventFormat { fields, print_fmt })
    }

    pub fn offset(&self, field: &str) -> Result<u32> {
        self.fields.iter().find(|f| f.name == field).map(|f| f.offset).ok_or_else(|| anyhow!("no field {field}"))
    }
}
