//! What a VE's processes may do: the capabilities they keep, the system calls a
//! seccomp filter refuses them, and how a process is confined before anything in
//! a VE can see it. The same restrictions apply to a VE's init and to everything
//! `vectl exec`, `enter`, a build VE and a rollout's health check run in it.
//!
//! A VE runs in a user namespace of its own by default ([`crate::userns`]): its
//! root's capabilities are held against that namespace and the namespaces it
//! owns (mount, network, UTS, IPC, PID, cgroup), never against the host's, and
//! its ids are a range no other VE or host user has. The kernel itself then
//! refuses what would reach the host: mounting anything but the file systems a
//! user namespace may mount (proc, sysfs, tmpfs, devpts, mqueue, overlay, bind
//! mounts), writing host-wide sysctls, device nodes, modules, raw I/O. Root in
//! such a VE keeps [`VE_CAPS`] and [`USERNS_CAPS`] (what systemd needs:
//! mounting, tracing its own processes, rebooting its own PID namespace).
//!
//! A `--privileged` VE has no user namespace: root in it is the host's root
//! with a reduced capability set. It keeps only [`VE_CAPS`]: CAP_SYS_ADMIN would
//! let VE root remount /sys or /proc/sys writable (or mount a fresh proc) and
//! set host-wide knobs such as kernel.core_pattern, which runs a program as host
//! root: so a privileged VE cannot mount, and vectl prepares every mount it
//! needs before its init starts.
//!
//! Both kinds keep the rest as defence in depth: every capability off their
//! list leaves the bounding set (including capabilities a newer kernel adds),
//! and the same seccomp filter refuses the kernel interfaces a VE has no use
//! for (a privileged VE also may not make user namespaces).
//!
//! Kept, and why ([`VE_CAPS`]); Docker's default set plus what a full system
//! (init, sshd, cron, a firewall, a database) needs inside its own namespaces:
//! - CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETUID, SETGID, SETPCAP, SETFCAP: root
//!   owning and managing the VE's files and users (package managers, useradd).
//! - KILL, SYS_CHROOT, AUDIT_WRITE, NET_BIND_SERVICE, NET_RAW, MKNOD: init and
//!   daemons (sshd's privilege separation chroots and writes audit records; ping;
//!   port 80; mknod is held to FIFOs and the VE's own /dev nodes by seccomp).
//! - NET_ADMIN: a system configures its own network (addresses, routes, its own
//!   firewall) — all in the VE's network namespace; the host's anti-spoofing
//!   rules sit on the host end of its veth, out of reach. The trade-off in a
//!   privileged VE: it is held against the initial user namespace, so the VE
//!   reaches the kernel's whole netfilter, tc and xfrm configuration interface
//!   (for its own namespace) and may autoload the network modules those name.
//!   Docker drops it; a hosting customer's VE runs its own firewall, so vectl
//!   keeps it.
//! - IPC_OWNER: System V IPC objects of the VE's own IPC namespace.
//! - IPC_LOCK: databases lock memory; what a VE locks is charged to its memory
//!   cgroup and bounded by `--ram` (huge pages from SHM_HUGETLB are not: a host
//!   that reserves huge pages should cap them per VE in the hugetlb controller).
//! - LEASE: file leases (Samba) on the VE's own files.
//!
//! Dropped beyond the obvious host-wide powers (modules, raw I/O, the clock,
//! reboot, audit control, MAC, BPF, perf, syslog, resource overrides that would
//! bypass disk quotas, CAP_SYS_ADMIN):
//! - SYS_PTRACE (privileged VEs): with it VE root could attach to a process
//!   that `vectl exec` places in the VE while it is still the host's vectl (even
//!   a non-dumpable one); without it VE root still traces its own processes
//!   (same uid, same or fewer capabilities, as strace and gdb need). In a user
//!   namespace it is kept: the kernel checks a non-dumpable process against the
//!   user namespace its memory was made in, the host's, where VE root has
//!   nothing.
//! - DAC_READ_SEARCH: open_by_handle_at reaches files outside the VE's root.
//! - SYS_NICE: real-time scheduling and I/O classes escape the VE's CPU and disk
//!   shares (and the real-time I/O class is also refused by seccomp).
//! - LINUX_IMMUTABLE: an immutable file in the VE's layer would block its
//!   destroy, upgrade and rollback on the host.
//! - SYS_TTY_CONFIG: it is checked against the initial user namespace, so on
//!   a host terminal handed to a VE it would reprogram the host console's keys
//!   (KDSKBSENT); login and getty run without vhangup.
//! - NET_BROADCAST, CHECKPOINT_RESTORE, BLOCK_SUSPEND, WAKE_ALARM: nothing a VE
//!   runs needs them.

use std::collections::BTreeMap;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use caps::{CapSet, Capability, CapsHashSet};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::step::{Step, last_os_error, step};

/// Building a seccomp program (in vectl, before any process is started).
type Compiled<T> = std::result::Result<T, seccompiler::Error>;

/// The capabilities a VE's root keeps; every other one is dropped.
pub const VE_CAPS: &[Capability] = &[
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETFCAP,
    Capability::CAP_KILL,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_AUDIT_WRITE,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_RAW,
    Capability::CAP_MKNOD,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_IPC_OWNER,
    Capability::CAP_IPC_LOCK,
    Capability::CAP_LEASE,
];

/// What root in a VE with its own user namespace keeps besides [`VE_CAPS`]:
/// each acts only on namespaces the VE's user namespace owns. SYS_ADMIN:
/// mounts (systemd's private /tmp and the like) and its own namespaces;
/// SYS_PTRACE: debugging its own processes; SYS_BOOT: reboot() ends its own
/// PID namespace, which is how systemd in a container halts.
pub const USERNS_CAPS: &[Capability] = &[
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_SYS_BOOT,
];

/// How a VE's processes are confined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// No user namespace (`--privileged`).
    Privileged,
    /// In the VE's own user namespace.
    Userns,
}

impl Profile {
    /// The profile of a VE with id range `userns` (`None`: privileged).
    pub(crate) fn of(userns: Option<crate::userns::IdRange>) -> Profile {
        match userns {
            Some(_) => Profile::Userns,
            None => Profile::Privileged,
        }
    }
}

/// A profile made ready before any process is started: its capabilities and
/// its compiled seccomp programs.
#[derive(Debug)]
pub(crate) struct Confinement {
    pub profile: Profile,
    caps: CapsHashSet,
    filters: Vec<BpfProgram>,
    /// sysinfo(2) goes to the supervisor, over a seccomp listener that
    /// [`confine`] returns ([`crate::sysinfo`]).
    sysinfo: bool,
}

impl Confinement {
    pub(crate) fn new(profile: Profile) -> Compiled<Confinement> {
        let mut caps: CapsHashSet = VE_CAPS.iter().copied().collect();
        if profile == Profile::Userns {
            caps.extend(USERNS_CAPS.iter().copied());
        }
        Ok(Confinement {
            profile,
            caps,
            filters: seccomp_filters(profile)?,
            sysinfo: false,
        })
    }

    /// The same, with sysinfo(2) answered by the supervisor when `on`.
    pub(crate) fn with_sysinfo(mut self, on: bool) -> Confinement {
        self.sysinfo = on;
        self
    }
}

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

/// Confines the calling thread to what a VE's processes may do, in the order
/// that needs the fewest privileges at each step: every capability off
/// [`VE_CAPS`] leaves the bounding set (so no later exec brings it back), the
/// inheritable and ambient sets are cleared, the VE's seccomp filter is
/// installed (without no_new_privs, which needs CAP_SYS_ADMIN, still held), and
/// last the effective and permitted sets shrink to the VE's. After this the
/// thread has no power a process of the VE lacks: a process in the VE can
/// neither outrank it nor (being without CAP_SYS_PTRACE) attach to it while it
/// is also non-dumpable.
///
/// With [`Confinement::with_sysinfo`], returns the listener of the filter that
/// sends sysinfo(2) to the supervisor (close-on-exec: the caller hands it on
/// and closes it before anything of the VE runs).
pub(crate) fn confine(c: &Confinement) -> Step<Option<OwnedFd>> {
    let keep = &c.caps;
    // Every number a capability can have: the kernel's own cap_last_cap would
    // be read from the VE's /proc here. Numbers this kernel lacks give EINVAL.
    for n in 0..64u8 {
        if keep.iter().any(|c| c.index() == n) {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number; EINVAL (a number
        // this kernel does not know) means it is already absent.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(n), 0, 0, 0) };
        if rc != 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(last_os_error(format!(
                "drop capability {n} from the bounding set"
            )));
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(step(|| "clear ambient capabilities".into()))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(step(|| "clear inheritable capabilities".into()))?;
    for prog in &c.filters {
        install_seccomp(prog)?;
    }
    let listener = if c.sysinfo {
        Some(install_listener(&sysinfo_filter())?)
    } else {
        None
    };
    // Effective first: it must stay within the permitted set at every step.
    // (vectl may itself lack one of the VE's, as without CAP_SYS_RESOURCE here.)
    let held = caps::read(None, CapSet::Permitted)
        .map_err(step(|| "read the permitted capabilities".into()))?;
    let keep: CapsHashSet = keep.intersection(&held).copied().collect();
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &keep).map_err(step(|| format!("reduce the {set:?} capabilities")))?;
    }
    Ok(listener)
}

/// Marks the calling process non-dumpable: no process without CAP_SYS_PTRACE
/// may attach to it or open its /proc files (mem, exe, fd, environ). The next
/// execve of a VE program resets it.
pub(crate) fn set_non_dumpable() -> Step {
    // SAFETY: PR_SET_DUMPABLE takes a plain integer.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        return Err(last_os_error("make the process non-dumpable"));
    }
    Ok(())
}

/// The kernel's encoding of a device number for mknod (new_encode_dev).
fn encode_dev(major: u32, minor: u32) -> u64 {
    u64::from((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Compiled<SeccompCondition> {
    Ok(SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        op,
        value,
    )?)
}

/// Rules refusing mknod of block devices and of character devices off the list.
fn mknod_rules(mode_arg: u8, dev_arg: u8) -> Compiled<Vec<SeccompRule>> {
    let ifmt = u64::from(libc::S_IFMT);
    let block = SeccompRule::new(vec![cond(
        mode_arg,
        SeccompCmpOp::MaskedEq(ifmt),
        u64::from(libc::S_IFBLK),
    )?])?;
    let mut chr = vec![cond(
        mode_arg,
        SeccompCmpOp::MaskedEq(ifmt),
        u64::from(libc::S_IFCHR),
    )?];
    for (major, minor) in MKNOD_CHAR_ALLOWED {
        chr.push(cond(dev_arg, SeccompCmpOp::Ne, encode_dev(*major, *minor))?);
    }
    let chr = SeccompRule::new(chr)?;
    Ok(vec![block, chr])
}

fn rule(conds: Vec<SeccompCondition>) -> Compiled<SeccompRule> {
    Ok(SeccompRule::new(conds)?)
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Compiled<BpfProgram> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        TargetArch::x86_64,
    )?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.into())
}

/// `FS_IOC_FSSETXATTR` (`_IOW('X', 32, struct fsxattr)`): sets a file's XFS
/// project, among its extended attributes.
const FS_IOC_FSSETXATTR: u64 = 0x401c_5820;
/// `FS_IOC_SETFLAGS` (`_IOW('f', 2, long)`) and its 32-bit twin: a file's
/// flags, PROJINHERIT among them.
const FS_IOC_SETFLAGS: u64 = 0x4008_6602;
const FS_IOC32_SETFLAGS: u64 = 0x4004_6602;
/// `file_setattr(2)` (Linux 6.17, x86-64): FS_IOC_FSSETXATTR as a system call.
const SYS_FILE_SETATTR: i64 = 469;

/// IOPRIO_CLASS_RT in an ioprio value (class in bits 13..15).
const IOPRIO_CLASS_RT: u64 = 1 << 13;
const IOPRIO_CLASS_MASK: u64 = 7 << 13;

/// Builds the VE's seccomp filters: everything is allowed except the calls
/// below. The first filter fails them with EPERM; the second fails clone3 with
/// ENOSYS, whose flags live in memory a filter cannot read: C libraries then
/// fall back to clone, whose flags the first filter checks (as Docker does).
///
/// Refused: module loading, kexec, raw port I/O, BPF, perf, the kernel keyring,
/// userfaultfd, swap and accounting switches, open_by_handle_at, io_uring (a
/// second system call interface that seccomp does not see into), new user
/// namespaces in a privileged VE (root in a fresh user namespace gets every
/// capability there and a large kernel surface with it; a VE that already has
/// its own may nest them, as containers inside it need), the real-time
/// I/O class, device nodes other than the VE's own, and typing into terminals.
pub(crate) fn seccomp_filters(profile: Profile) -> Compiled<Vec<BpfProgram>> {
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
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        rules.insert(nr, vec![]);
    }
    rules.insert(libc::SYS_mknod, mknod_rules(1, 2)?);
    rules.insert(libc::SYS_mknodat, mknod_rules(2, 3)?);
    // Typing into another terminal's input queue.
    let mut ioctls: Vec<u64> = vec![libc::TIOCSTI, libc::TIOCLINUX];
    if profile == Profile::Privileged {
        // Moving files out of the VE's XFS project, past its disk limit: a
        // project id, or PROJINHERIT cleared (`chattr -P`, a flag of
        // FS_IOC_SETFLAGS too). The kernel refuses both to a VE in a user
        // namespace already.
        ioctls.extend([FS_IOC_FSSETXATTR, FS_IOC_SETFLAGS, FS_IOC32_SETFLAGS]);
        rules.insert(SYS_FILE_SETATTR, vec![]);
    }
    rules.insert(
        libc::SYS_ioctl,
        ioctls
            .into_iter()
            .map(|cmd| rule(vec![cond(1, SeccompCmpOp::Eq, cmd)?]))
            .collect::<std::result::Result<Vec<_>, _>>()?,
    );
    let newuser = libc::CLONE_NEWUSER as u64;
    let no_userns: &[i64] = if profile == Profile::Privileged {
        &[libc::SYS_unshare, libc::SYS_clone]
    } else {
        &[]
    };
    for &nr in no_userns {
        rules.insert(
            nr,
            vec![rule(vec![cond(
                0,
                SeccompCmpOp::MaskedEq(newuser),
                newuser,
            )?])?],
        );
    }
    // ioprio_set(which, who, ioprio) with the real-time class.
    rules.insert(
        libc::SYS_ioprio_set,
        vec![rule(vec![cond(
            2,
            SeccompCmpOp::MaskedEq(IOPRIO_CLASS_MASK),
            IOPRIO_CLASS_RT,
        )?])?],
    );
    let eperm = compile(rules, libc::EPERM)?;
    let enosys = compile(BTreeMap::from([(libc::SYS_clone3, vec![])]), libc::ENOSYS)?;
    Ok(vec![eperm, enosys, no_x32()])
}

/// The x32 system call numbers (bit 30 set): x32 calls come with the x86-64
/// architecture tag, so the other filters, which match x86-64 numbers, would let
/// every one of them through. All fail with ENOSYS, as on a kernel without x32.
fn no_x32() -> BpfProgram {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // AUDIT_ARCH_X86_64: EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE.
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    let op = |code: u32, jt: u8, jf: u8, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jeq, jge, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    vec![
        // seccomp_data: nr at offset 0, arch at offset 4.
        op(ld, 0, 0, 4),
        op(jeq, 1, 0, AUDIT_ARCH_X86_64),
        op(ret, 0, 0, libc::SECCOMP_RET_KILL_PROCESS),
        op(ld, 0, 0, 0),
        op(jge, 0, 1, X32_SYSCALL_BIT),
        op(ret, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The filter that hands sysinfo(2) to a listener (SECCOMP_RET_USER_NOTIF):
/// the supervisor answers it with the VE's memory, uptime and process count
/// ([`crate::sysinfo`]). Every other call passes; the other filters decide on
/// those (a refusal outranks a notification, and no other filter names sysinfo).
fn sysinfo_filter() -> BpfProgram {
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    let op = |code: u32, jt: u8, jf: u8, k: u32| seccompiler::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let (ld, jeq, ret) = (
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::BPF_RET | libc::BPF_K,
    );
    vec![
        op(ld, 0, 0, 4),
        op(jeq, 0, 3, AUDIT_ARCH_X86_64),
        op(ld, 0, 0, 0),
        op(jeq, 0, 1, libc::SYS_sysinfo as u32),
        op(ret, 0, 0, libc::SECCOMP_RET_USER_NOTIF),
        op(ret, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// The kernel's view of a program: it points into `prog`, which must outlive it.
fn fprog(prog: &BpfProgram) -> libc::sock_fprog {
    libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast::<libc::sock_filter>().cast_mut(),
    }
}

/// Installs a seccomp program whose notifications go to a new listener, and
/// returns the listener (close-on-exec, as the kernel makes it). Needs
/// CAP_SYS_ADMIN, as [`install_seccomp`].
fn install_listener(prog: &BpfProgram) -> Step<OwnedFd> {
    let fprog = fprog(prog);
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies
    // the program. The return value is a new descriptor of ours or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if fd < 0 {
        return Err(last_os_error("install the sysinfo filter"));
    }
    // SAFETY: a new descriptor the kernel just gave us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Installs a seccomp program on the calling thread. Unlike seccompiler's own
/// helper this does not set no_new_privs: setuid programs in the VE (su, ping)
/// must keep working. Installing without it needs CAP_SYS_ADMIN, which the caller
/// has at this point.
pub(crate) fn install_seccomp(prog: &BpfProgram) -> Step {
    let fprog = fprog(prog);
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies
    // the program and keeps no reference to our memory.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::c_ulong::from(libc::SECCOMP_MODE_FILTER),
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(last_os_error("install seccomp filter"));
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
    fn the_filters_compile() {
        let progs = seccomp_filters(Profile::Privileged).unwrap();
        assert!(seccomp_filters(Profile::Userns).unwrap()[0].len() < progs[0].len());
        assert_eq!(progs.len(), 3);
        // The x32 filter: bit 30 of the number decides, after the arch check.
        let x32 = &progs[2];
        assert_eq!(x32.len(), 7);
        assert_eq!(x32[4].k, 0x4000_0000);
        assert_eq!(x32[5].k, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32);
        assert!(progs[0].len() > 20);
    }

    #[test]
    fn the_sysinfo_filter_notifies_sysinfo_alone() {
        let f = sysinfo_filter();
        assert_eq!(f[3].k, libc::SYS_sysinfo as u32);
        assert_eq!(f[4].k, libc::SECCOMP_RET_USER_NOTIF);
        // Another architecture or another call: allowed here (jump to the end).
        assert_eq!((f[1].jt, f[1].jf), (0, 3));
        assert_eq!(f[1 + 1 + 3].k, libc::SECCOMP_RET_ALLOW);
        assert_eq!(f[5].k, libc::SECCOMP_RET_ALLOW);
    }

    #[test]
    fn the_kept_capabilities_exclude_every_escape_hatch() {
        for c in [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_NICE,
            Capability::CAP_SYS_RESOURCE,
            Capability::CAP_LINUX_IMMUTABLE,
            Capability::CAP_BPF,
        ] {
            assert!(!VE_CAPS.contains(&c), "{c}");
        }
        for c in [
            Capability::CAP_SYS_MODULE,
            Capability::CAP_SYS_RAWIO,
            Capability::CAP_SYS_NICE,
            Capability::CAP_DAC_READ_SEARCH,
            Capability::CAP_SYS_TIME,
        ] {
            assert!(!USERNS_CAPS.contains(&c), "{c}");
        }
    }
}
