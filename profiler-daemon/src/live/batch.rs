//! Reading a whole per-CPU hash map in a few system calls (`BPF_MAP_LOOKUP_BATCH`), for
//! `Session::snapshot()`: aya's iterator costs two `bpf()` calls per key (next key, lookup),
//! which dominates a snapshot of thousands of keys (measured in BENCHMARKS.md). aya 0.14 has no
//! batch API, so this is the one raw `bpf()` call of kvmprof.
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use aya::Pod;

/// `BPF_MAP_LOOKUP_BATCH` (include/uapi/linux/bpf.h, enum bpf_cmd).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`; the kernel accepts an attr this size (the rest of
/// the union is taken as zero).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Keys per call: 256 × (48-byte key + CPUs × 2 KiB value) keeps the buffers near 1 MiB per CPU.
const CHUNK: usize = 256;

/// Every `(key, value)` of the (not per-CPU) hash map `map` whose values are 8 bytes long
/// (`V` of size 8: the kernel's layout for such values is then the per-CPU one with one CPU).
pub fn entries<K: Pod, V: Pod>(map: &MapData) -> io::Result<Vec<(K, V)>> {
    const { assert!(size_of::<V>() == 8) };
    Ok(per_cpu_entries::<K, V>(map, 1)?.into_iter().filter_map(|(k, mut v)| Some((k, v.pop()?))).collect())
}

/// Every `(key, per-CPU values)` of the per-CPU hash map `map`, with `ncpus` possible CPUs.
/// `Err` with `ErrorKind::Unsupported` when the kernel has no batch lookup (before 5.6), so the
/// caller can fall back to iterating.
pub fn per_cpu_entries<K: Pod, V: Pod>(map: &MapData, ncpus: usize) -> io::Result<Vec<(K, Vec<V>)>> {
    // Per-CPU values are laid out one per possible CPU, each rounded up to 8 bytes.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut chunk = CHUNK;
    let mut out = Vec::new();
    let mut token: u32 = 0;
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * size_of::<K>()];
        let mut values = vec![0u8; chunk * stride * ncpus];
        let mut next: u32 = 0;
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &token as *const u32 as u64 },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.fd().as_fd().as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for BPF_MAP_LOOKUP_BATCH; every pointer in
        // it refers to a live buffer of the size the kernel will write (`count` keys of
        // size_of::<K>() and values of stride × ncpus bytes; the 4-byte batch tokens of a hash
        // map), all outliving the call.
        let r = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>()) };
        let err = (r < 0).then(io::Error::last_os_error);
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more keys than fit: retry this batch with room for them.
            Some(libc::ENOSPC) if chunk < 1 << 16 => {
                chunk *= 4;
                continue;
            }
            Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(libc::EOPNOTSUPP) if first => {
                return Err(io::Error::new(io::ErrorKind::Unsupported, "BPF_MAP_LOOKUP_BATCH"))
            }
            None | Some(libc::ENOENT) => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        for i in 0..(attr.count as usize).min(chunk) {
            // SAFETY: the kernel wrote `attr.count` whole keys and value sets; K and V are Pod
            // (any bit pattern valid), and read_unaligned tolerates the byte buffers' alignment.
            let key = unsafe { std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()) as *const K) };
            let per_cpu = (0..ncpus)
                .map(|c| {
                    let at = (i * ncpus + c) * stride;
                    // SAFETY: as above, inside the `values` buffer (at + size_of::<V>() <= len).
                    unsafe { std::ptr::read_unaligned(values.as_ptr().add(at) as *const V) }
                })
                .collect();
            out.push((key, per_cpu));
        }
        if err.is_some() {
            // ENOENT: that was the last batch.
            return Ok(out);
        }
        token = next;
        first = false;
    }
}
