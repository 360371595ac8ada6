//! What a VE's processes may not do: the capabilities taken out of their bounding
//! set and the system calls refused by a seccomp filter. The same restrictions apply
//! to a VE's init and to everything `vectl exec` runs in it.
//!
//! Root in a VE is the host's root with a reduced bounding set (there is no user
//! namespace yet): it keeps what a system needs inside its own namespaces
//! (networking, chown, setuid programs, ptrace of its own processes) and loses what
//! reaches beyond the VE: kernel modules, raw I/O, the clock, reboot and kexec,
//! audit and MAC policy, BPF and perf, resource overrides (which would bypass disk
//! quotas), device nodes other than the few a VE's /dev holds, and CAP_SYS_ADMIN.
//! Without a user namespace CAP_SYS_ADMIN would let VE root remount /sys or
//! /proc/sys writable (or mount a fresh proc) and set host-wide knobs such as
//! kernel.core_pattern, which runs a program as host root: so a VE cannot mount.
//! vectl prepares every mount a VE needs before its init starts.

use std::collections::BTreeMap;

use caps::{CapSet, Capability};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Capabilities no VE process ever has.
pub const DROPPED_CAPS: &[Capability] = &[
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_MODULE,
    Capability::CAP_SYS_RAWIO,
    Capability::CAP_SYS_TIME,
    Capability::CAP_SYS_BOOT,
    Capability::CAP_SYS_RESOURCE,
    Capability::CAP_SYS_PACCT,
    Capability::CAP_MAC_ADMIN,
    Capability::CAP_MAC_OVERRIDE,
    Capability::CAP_SYSLOG,
    Capability::CAP_WAKE_ALARM,
    Capability::CAP_BLOCK_SUSPEND,
    Capability::CAP_AUDIT_CONTROL,
    Capability::CAP_AUDIT_READ,
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
];

/// Character devices a VE may create with mknod (major, minor): its /dev nodes,
/// fuse, tun, and 0:0 (overlayfs whiteouts).
const MKNOD_CHAR_ALLOWED: &[(u32, u32)] = &[
    (0, 0),
    (1, 3),
    (1, 5),
    (1, 7),
    (1, 8),
    (1, 9),
    (5, 0),
    (5, 2),
    (10, 200),
    (10, 229),
];

/// Removes [`DROPPED_CAPS`] from the calling thread's bounding set and clears its
/// ambient and inheritable sets. Called in the child before exec.
pub(crate) fn drop_capabilities() -> Result<(), String> {
    for cap in DROPPED_CAPS {
        // A capability this kernel does not know is already absent.
        if caps::has_cap(None, CapSet::Bounding, *cap).unwrap_or(false) {
            caps::drop(None, CapSet::Bounding, *cap)
                .map_err(|e| format!("drop {cap} from the bounding set: {e}"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("clear ambient capabilities: {e}"))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| format!("clear inheritable capabilities: {e}"))?;
    Ok(())
}

/// The kernel's encoding of a device number for mknod (new_encode_dev).
fn encode_dev(major: u32, minor: u32) -> u64 {
    u64::from((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

/// Rules refusing mknod of block devices and of character devices off the list.
fn mknod_rules(mode_arg: u8, dev_arg: u8) -> Result<Vec<SeccompRule>, String> {
    let ifmt = u64::from(libc::S_IFMT);
    let block = SeccompRule::new(vec![cond(
        mode_arg,
        SeccompCmpOp::MaskedEq(ifmt),
        u64::from(libc::S_IFBLK),
    )?])
    .map_err(|e| e.to_string())?;
    let mut chr = vec![cond(
        mode_arg,
        SeccompCmpOp::MaskedEq(ifmt),
        u64::from(libc::S_IFCHR),
    )?];
    for (major, minor) in MKNOD_CHAR_ALLOWED {
        chr.push(cond(dev_arg, SeccompCmpOp::Ne, encode_dev(*major, *minor))?);
    }
    let chr = SeccompRule::new(chr).map_err(|e| e.to_string())?;
    Ok(vec![block, chr])
}

/// Builds the VE's seccomp program: everything is allowed except the calls below,
/// which fail with EPERM.
pub(crate) fn seccomp_program() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_open_by_handle_at,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_keyctl,
        libc::SYS_acct,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_syslog,
        libc::SYS_userfaultfd,
        libc::SYS_lookup_dcookie,
    ] {
        rules.insert(nr, vec![]);
    }
    rules.insert(libc::SYS_mknod, mknod_rules(1, 2)?);
    rules.insert(libc::SYS_mknodat, mknod_rules(2, 3)?);
    // Typing into another terminal's input queue.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, libc::TIOCSTI)?])
                .map_err(|e| e.to_string())?,
            SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, libc::TIOCLINUX)?])
                .map_err(|e| e.to_string())?,
        ],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        TargetArch::x86_64,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs a seccomp program on the calling thread. Unlike seccompiler's own
/// helper this does not set no_new_privs: setuid programs in the VE (su, ping)
/// must keep working. Installing without it needs CAP_SYS_ADMIN, which the caller
/// has at this point.
pub(crate) fn install_seccomp(prog: &BpfProgram) -> Result<(), String> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies
    // the program and keeps no reference to our memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(format!(
            "install seccomp filter: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_encode_like_the_kernel() {
        assert_eq!(encode_dev(1, 3), 0x103);
        assert_eq!(
            encode_dev(136, 300),
            (300 & 0xff) | (136 << 8) | ((300 & !0xff) << 12)
        );
    }

    #[test]
    fn the_filter_compiles() {
        let prog = seccomp_program().unwrap();
        assert!(prog.len() > 20);
    }
}
