//! The exit-reason tables must name every reason this kernel's tracepoints can print: read the
//! live `kvm_exit` and `kvm_userspace_exit` format files and compare, both ways.
mod common;

use std::collections::BTreeSet;

use profiler_common::isa;
use profiler_daemon::live::detect_source;
use profiler_daemon::live::tracefs::EventFormat;
use profiler_daemon::model::{reasons, Source};

/// `{ 0x040 + 13, "GP excp" }` pairs of one `__print_symbolic(...)` list.
fn symbolic_pairs(list: &str) -> BTreeSet<(u32, String)> {
    let mut out = BTreeSet::new();
    for item in list.split('{').skip(1) {
        let item = item.split('}').next().unwrap();
        let (code, name) = item.split_once(',').unwrap();
        let name = name.trim().trim_matches('"').replace("\" \"", "");
        let code = code.trim();
        let value = if code == "-1" {
            u32::MAX
        } else {
            code.split('+').map(|p| {
                let p = p.trim();
                match p.strip_prefix("0x") {
                    Some(h) => u32::from_str_radix(h, 16).unwrap(),
                    None => p.parse::<u32>().unwrap(),
                }
            }).sum()
        };
        out.insert((value, name));
    }
    out
}

fn table(t: &[(u32, &str)]) -> BTreeSet<(u32, String)> {
    t.iter().map(|(c, n)| (*c, n.to_string())).collect()
}

#[test]
fn vmx_and_svm_tables_match_this_kernels_kvm_exit_format() {
    common::require_live();
    let fmt = EventFormat::read(std::path::Path::new("/sys/kernel/tracing"), "kvm", "kvm_exit").unwrap().print_fmt;
    let vmx = fmt.split("__print_symbolic(REC->exit_reason & 0xffff,").nth(1).expect("VMX list").split(") :").next().unwrap();
    let svm = fmt.split(": __print_symbolic(REC->exit_reason,").nth(1).expect("SVM list").split("), (REC->isa").next().unwrap();
    assert_eq!(table(reasons::VMX), symbolic_pairs(vmx), "VMX table differs from the kernel's");
    assert_eq!(table(reasons::SVM), symbolic_pairs(svm), "SVM table differs from the kernel's");
    assert!(reasons::VMX.len() > 60 && reasons::SVM.len() > 100);
}

#[test]
fn kvm_exit_reasons_match_this_kernels_userspace_exit_format() {
    common::require_live();
    let fmt = EventFormat::read(std::path::Path::new("/sys/kernel/tracing"), "kvm", "kvm_userspace_exit").unwrap().print_fmt;
    let list = fmt.split("__print_symbolic(REC->reason,").nth(1).expect("KVM_EXIT list").split("), REC->errno").next().unwrap();
    let kernel: BTreeSet<(u32, String)> = symbolic_pairs(list).into_iter().map(|(c, n)| (c, n.trim_start_matches("KVM_EXIT_").to_string())).collect();
    assert_eq!(table(reasons::KVM_EXIT), kernel);
}

/// The names the live tests expect for an `out`/`in` and a `hlt` exit on this host
/// (`common::io_reason`, `common::hlt_reason`) are names of the table this host's source
/// reports from, with the codes those exits have.
#[test]
fn the_expected_reason_names_are_this_sources_names() {
    common::require_live();
    let svm = std::path::Path::new("/sys/module/kvm_amd").exists();
    let (table, io_code, hlt_code) = match detect_source() {
        Source::Emulated => (isa::KVM_EXIT, 2, 5), // KVM_EXIT_IO, KVM_EXIT_HLT
        Source::Hw if svm => (isa::SVM, 0x7b, 0x78), // SVM_EXIT_IOIO, SVM_EXIT_HLT
        Source::Hw => (isa::VMX, 30, 12),           // EXIT_REASON_IO_INSTRUCTION, EXIT_REASON_HLT
    };
    assert_eq!(reasons::code_of(table, common::io_reason()), Some(io_code), "{}", common::io_reason());
    assert_eq!(reasons::code_of(table, common::hlt_reason()), Some(hlt_code), "{}", common::hlt_reason());
    assert_eq!(reasons::name(table, io_code), common::io_reason());
    assert_eq!(reasons::name(table, hlt_code), common::hlt_reason());
}
