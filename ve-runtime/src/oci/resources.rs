//! An OCI bundle's `linux.resources` as vectl's kernel limits: the same
//! cgroup code (v1 and v2) that `vectl create` and `vectl set` use writes them.

use oci_spec::runtime::LinuxResources;

use crate::limits::{IoLimits, KernelLimits};

/// `old` with what `r` sets laid over it (`update` changes only what it names;
/// `create` starts from no limits).
pub(crate) fn overlay(old: &KernelLimits, r: &LinuxResources) -> Result<KernelLimits, String> {
    let mut k = old.clone();
    if let Some(m) = r.memory() {
        match m.limit() {
            Some(l) if l > 0 => k.memory_bytes = Some(l as u64),
            Some(_) => k.memory_bytes = None,
            None => {}
        }
        if let Some(res) = m.reservation() {
            k.memory_low = (res > 0).then_some(res as u64);
        }
        // OCI's swap is memory + swap; vectl's is swap on top of memory.
        match (m.swap(), k.memory_bytes) {
            (Some(s), _) if s < 0 => k.swap_bytes = None,
            (Some(s), Some(mem)) => {
                if (s as u64) < mem {
                    return Err(format!(
                        "memory.swap {s} is below memory.limit {mem} (it counts memory and swap together)"
                    ));
                }
                k.swap_bytes = Some(s as u64 - mem);
            }
            (Some(_), None) => {
                return Err("memory.swap needs a memory.limit".into());
            }
            (None, _) => {}
        }
    }
    if let Some(c) = r.cpu() {
        if let Some(q) = c.quota() {
            let period = c.period().filter(|p| *p > 0).unwrap_or(100_000);
            // vectl's cgroups use the kernel's 100 ms period: the same share.
            k.cpu_quota_us = (q > 0).then(|| (q as u64 * 100_000 / period).max(1_000));
        }
        if let Some(s) = c.shares().filter(|s| *s > 0) {
            k.cpu_weight = Some(crate::cgroup::shares_to_weight(s));
        }
        if let Some(cpus) = c.cpus().as_ref().filter(|s| !s.is_empty()) {
            k.cpuset = Some(cpus.clone());
        }
    }
    if let Some(p) = r.pids() {
        k.pids = (p.limit() > 0).then_some(p.limit() as u64);
    }
    if let Some(b) = r.block_io() {
        if let Some(w) = b.weight() {
            k.io_weight = Some(u64::from(w).clamp(1, 1000));
        }
        let mut io: Option<IoLimits> = None;
        let lists = [
            (b.throttle_read_bps_device(), true),
            (b.throttle_write_bps_device(), true),
            (b.throttle_read_iops_device(), false),
            (b.throttle_write_iops_device(), false),
        ];
        for (list, bps) in lists {
            for d in list.iter().flatten() {
                let (major, minor) = (d.major() as u32, d.minor() as u32);
                let cur = io.get_or_insert(IoLimits {
                    major,
                    minor,
                    ..IoLimits::default()
                });
                if (cur.major, cur.minor) != (major, minor) {
                    return Err("blockIO: vectl limits one device per container".into());
                }
                let slot = if bps { &mut cur.bps } else { &mut cur.iops };
                if slot.is_some_and(|v| v != d.rate()) {
                    return Err(
                        "blockIO: vectl limits reads and writes of a device with one rate".into(),
                    );
                }
                *slot = Some(d.rate());
            }
        }
        if io.is_some() {
            k.io = io;
        }
    }
    if r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()) {
        return Err("hugepageLimits: not supported by vectl's OCI runtime".into());
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn podman_resources_become_kernel_limits() {
        let r = res(
            r#"{"memory":{"limit":67108864,"swap":134217728},"cpu":{"quota":50000,"period":100000,"shares":2048},"pids":{"limit":50}}"#,
        );
        let k = overlay(&KernelLimits::default(), &r).unwrap();
        assert_eq!(k.memory_bytes, Some(64 << 20));
        assert_eq!(k.swap_bytes, Some(64 << 20));
        assert_eq!(k.cpu_quota_us, Some(50_000));
        assert_eq!(k.cpu_weight, Some(200));
        assert_eq!(k.pids, Some(50));
    }

    #[test]
    fn an_update_changes_only_what_it_names() {
        let old = KernelLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(50),
            ..KernelLimits::default()
        };
        let k = overlay(&old, &res(r#"{"memory":{"limit":33554432}}"#)).unwrap();
        assert_eq!(k.memory_bytes, Some(32 << 20));
        assert_eq!(k.pids, Some(50));
        // A 50 ms period at 25 ms quota is half a CPU, as 50 ms of 100 ms.
        let k = overlay(&old, &res(r#"{"cpu":{"quota":25000,"period":50000}}"#)).unwrap();
        assert_eq!(k.cpu_quota_us, Some(50_000));
    }

    #[test]
    fn swap_below_memory_is_refused() {
        let e = overlay(
            &KernelLimits::default(),
            &res(r#"{"memory":{"limit":67108864,"swap":1048576}}"#),
        )
        .unwrap_err();
        assert!(e.contains("memory.swap"), "{e}");
    }
}
