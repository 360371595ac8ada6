//! sysinfo(2) in a VE: its own memory, swap, uptime and process count.
//!
//! LXCFS gives a VE its own /proc/meminfo and /proc/uptime, but sysinfo(2) is
//! a system call no file system sees: busybox's `free` and `uptime`, and many
//! monitoring agents, would show the host's totals. So a seccomp filter of its
//! own sends each sysinfo call of a VE's processes to the supervisor
//! (SECCOMP_RET_USER_NOTIF), which answers from the VE's cgroup:
//!
//! - `totalram`: the VE's `--ram` (or the host's RAM, if smaller or unset);
//!   `freeram`: that less the cgroup's memory use (as LXCFS's MemFree);
//! - `totalswap`/`freeswap`: its swap allowance (at most the host's swap) and
//!   what is left of it;
//! - `uptime`: since the VE's init started; `procs`: the VE's tasks;
//! - `loads`: the host's (the kernel keeps no load average per cgroup).
//!
//! **How the listener travels.** The filter is installed by the process that
//! becomes the VE's init (or a `vectl exec` command's helper) as the last step
//! of its confinement; the kernel returns a listener, which goes back to vectl
//! over the report channel and from vectl to the supervisor over the root's
//! `run/console.sock`, with the console at start and on its own for `exec`.
//! The VE's processes never hold it. It is installed only when a supervisor
//! listens for the root (and the VE's /proc view is on): with no listener, a
//! filtered sysinfo would fail with ENOSYS.
//!
//! **The answer** is written into the caller's buffer through
//! `/proc/PID/mem`, opened and then checked with SECCOMP_IOCTL_NOTIF_ID_VALID
//! (the pid cannot have been reused for another process after that); a buffer
//! the caller cannot write gets EFAULT, as from the kernel. When the VE's
//! cgroup cannot be read, the call goes on to the kernel (host values).
//!
//! **Cost and fairness.** One notification per ready listener is answered per
//! turn of the supervisor's loop, so a VE calling sysinfo in a loop cannot hold
//! up the others; the supervisor's CPU time for it is not charged to the VE.
//! A call takes about 0.1 ms (measured on a 2-CPU host: 30 µs reading five
//! cgroup files, 20 µs writing the answer, the rest the two wake-ups), where the
//! kernel's own answer takes 0.3 µs: fine for `free` and monitoring agents.
//!
//! **A supervisor restart** closes the listeners it held; sysinfo in VEs that
//! were running fails with ENOSYS until they restart. Under systemd
//! (`vectl-supervisor.service`) the listeners are kept in the unit's file
//! descriptor store (`FDSTORE=1`) and taken back by the next supervisor
//! ([`Notifiers::adopt`]).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::host::Host;

/// Whether processes started in `root`'s VEs now get their sysinfo answered:
/// a supervisor listens on the root's socket.
pub(crate) fn supervised(root: &Path) -> bool {
    UnixStream::connect(crate::console::socket_path(root)).is_ok()
}

/// Hands a `vectl exec` command's listener to the supervisor (`init`: the
/// VE's init, whose start is the VE's uptime).
pub(crate) fn hand(
    root: &Path,
    ve: &str,
    init: i32,
    listener: OwnedFd,
) -> std::result::Result<(), String> {
    crate::console::request(
        &crate::console::socket_path(root),
        &format!("sysinfo {ve} {init}"),
        &[listener.as_fd()],
        "the sysinfo listener",
    )
}

/// One listener the supervisor holds.
struct Notifier {
    fd: OwnedFd,
    root: PathBuf,
    ve: String,
    /// The VE's init's start, in clock ticks since boot.
    start_ticks: u64,
}

/// The supervisor's listeners, keyed by a number of their own.
#[derive(Default)]
pub(crate) struct Notifiers {
    held: HashMap<u64, Notifier>,
    next: u64,
    /// One `Host` per root (its cgroup backend is opened once).
    hosts: HashMap<PathBuf, Host>,
    /// Where each listener is also stored, to outlive a restart of the
    /// supervisor.
    pub store: crate::supervise::FdStore,
}

/// The name a listener is stored under: `si.ROOT.VE.INIT`.
fn store_name(root: &Path, ve: &str, init: i32) -> String {
    crate::supervise::FdStore::name("si", root, ve, init)
}

impl Notifiers {
    /// Takes back listeners an earlier supervisor stored
    /// ([`crate::supervise::FdStore::passed`]), for the roots in `roots`.
    /// Returns the other descriptors.
    pub(crate) fn adopt(
        &mut self,
        roots: &[PathBuf],
        passed: Vec<(String, OwnedFd)>,
    ) -> Vec<(String, OwnedFd)> {
        let (mine, left) = crate::supervise::FdStore::sort_out("si", passed, roots);
        for (root, ve, init, _, fd) in mine {
            // Stored already: not again.
            if let Err(e) = self.keep(&root, &ve, init, fd) {
                crate::supervise::log(&format!("a stored sysinfo listener: {e}"));
            }
        }
        left
    }

    /// Holds a listener of VE `ve` of `root`, whose init is `init`, and
    /// stores it with the service manager.
    pub(crate) fn hold(
        &mut self,
        root: &Path,
        ve: &str,
        init: i32,
        fd: OwnedFd,
    ) -> std::result::Result<(), String> {
        // systemd drops it once the VE's processes are gone (POLLHUP).
        self.store
            .store(&store_name(root, ve, init), fd.as_fd(), true);
        self.keep(root, ve, init, fd)
    }

    fn keep(
        &mut self,
        root: &Path,
        ve: &str,
        init: i32,
        fd: OwnedFd,
    ) -> std::result::Result<(), String> {
        let start_ticks = crate::state::proc_stat(init)
            .ok_or_else(|| format!("VE {ve}: its init {init} is gone"))?
            .start_ticks;
        self.next += 1;
        self.held.insert(
            self.next,
            Notifier {
                fd,
                root: root.to_path_buf(),
                ve: ve.to_string(),
                start_ticks,
            },
        );
        Ok(())
    }

    /// The listeners to poll, by key.
    pub(crate) fn fds(&self) -> impl Iterator<Item = (BorrowedFd<'_>, u64)> {
        self.held.iter().map(|(k, n)| (n.fd.as_fd(), *k))
    }

    /// Answers one call on listener `key`; a listener whose VE processes are
    /// all gone (POLLHUP) is let go.
    pub(crate) fn ready(&mut self, key: u64) {
        let Some(n) = self.held.get(&key) else {
            return;
        };
        // NOTIF_RECV waits for a call whatever the descriptor's flags: only
        // with one pending (POLLIN). POLLHUP alone: no process is left.
        let mut pfd = [PollFd::new(n.fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut pfd, PollTimeout::ZERO);
        let revents = pfd[0].revents().unwrap_or(PollFlags::empty());
        if !revents.contains(PollFlags::POLLIN) {
            if !revents.is_empty() {
                self.held.remove(&key);
            }
            return;
        }
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV fills the struct the pointer names, which is valid.
        let rc = unsafe {
            libc::ioctl(
                n.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV,
                &mut req as *mut libc::seccomp_notif,
            )
        };
        if rc < 0 {
            match nix::errno::Errno::last() {
                // Another turn (or the caller was killed before it was read).
                nix::errno::Errno::EAGAIN
                | nix::errno::Errno::EINTR
                | nix::errno::Errno::ENOENT => {}
                _ => {
                    self.held.remove(&key);
                }
            }
            return;
        }
        let (root, ve, start_ticks) = (n.root.clone(), n.ve.clone(), n.start_ticks);
        let answer = self.answer(&root, &ve, start_ticks);
        let Some(n) = self.held.get(&key) else {
            return;
        };
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match answer {
            Some(si) => {
                if let Err(e) = write_into(n.fd.as_fd(), &req, si) {
                    resp.error = -e;
                }
            }
            // The kernel's own answer.
            None => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
        }
        // SAFETY: NOTIF_SEND reads the struct the pointer names, which is valid.
        // ENOENT (the caller was killed meanwhile) needs nothing more.
        unsafe {
            libc::ioctl(
                n.fd.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND,
                &mut resp as *mut libc::seccomp_notif_resp,
            );
        }
    }

    /// The VE's sysinfo, or `None` if its cgroup cannot be read.
    fn answer(&mut self, root: &Path, ve: &str, start_ticks: u64) -> Option<libc::sysinfo> {
        if !self.hosts.contains_key(root) {
            let h = Host::open(root).ok()?;
            self.hosts.insert(root.to_path_buf(), h);
        }
        let m = self.hosts.get(root)?.cgroups().ok()?.memory_view(ve).ok()?;
        let host = host_sysinfo()?;
        let facts = VeFacts {
            ram_limit: m.ram_limit,
            swap_limit: m.swap_limit,
            ram_used: m.ram_used,
            swap_used: m.swap_used,
            tasks: m.tasks,
            started_secs: start_ticks / crate::state::clock_ticks().max(1),
        };
        Some(facts.sysinfo(&host))
    }
}

/// What a VE's sysinfo is made of, read from its cgroup and run state.
#[derive(Debug, Clone, Copy)]
struct VeFacts {
    ram_limit: Option<u64>,
    swap_limit: Option<u64>,
    ram_used: u64,
    swap_used: u64,
    tasks: u64,
    /// Its init's start, seconds after boot.
    started_secs: u64,
}

impl VeFacts {
    /// The VE's sysinfo, from the host's (`host`): in bytes (`mem_unit` 1).
    fn sysinfo(&self, host: &libc::sysinfo) -> libc::sysinfo {
        let unit = u64::from(host.mem_unit.max(1));
        let host_ram = host.totalram.saturating_mul(unit);
        let host_swap = host.totalswap.saturating_mul(unit);
        let total = self.ram_limit.map_or(host_ram, |l| l.min(host_ram));
        let total_swap = self.swap_limit.map_or(host_swap, |l| l.min(host_swap));
        // SAFETY: sysinfo is plain data; all zeroes is a valid value.
        let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
        si.uptime = i64::try_from(
            u64::try_from(host.uptime)
                .unwrap_or(0)
                .saturating_sub(self.started_secs),
        )
        .unwrap_or(0);
        si.loads = host.loads;
        si.totalram = total;
        si.freeram = total.saturating_sub(self.ram_used);
        si.totalswap = total_swap;
        si.freeswap = total_swap.saturating_sub(self.swap_used);
        si.procs = u16::try_from(self.tasks).unwrap_or(u16::MAX);
        si.mem_unit = 1;
        si
    }
}

/// The host's own sysinfo (the supervisor runs on the host).
fn host_sysinfo() -> Option<libc::sysinfo> {
    // SAFETY: sysinfo is plain data; all zeroes is a valid value.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: sysinfo(2) fills the struct the pointer names, which is valid.
    (unsafe { libc::sysinfo(&mut si) } == 0).then_some(si)
}

/// Writes `si` into the calling process's buffer (the call's first argument),
/// through its /proc/PID/mem. The process's /proc directory is opened first
/// and the notification checked to be pending after that, so every file opened
/// under it is the caller's, never a later process's of the same pid. The mem
/// file writes past page protections, so the buffer must lie in writable
/// mappings (its maps), or the answer is EFAULT, as from the kernel. Returns
/// the errno to answer with on failure.
fn write_into(
    listener: BorrowedFd<'_>,
    req: &libc::seccomp_notif,
    si: libc::sysinfo,
) -> std::result::Result<(), i32> {
    use nix::fcntl::{OFlag, openat};
    use nix::sys::stat::Mode;
    let addr = req.data.args[0];
    let len = std::mem::size_of::<libc::sysinfo>() as u64;
    let dir = nix::fcntl::open(
        format!("/proc/{}", req.pid).as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| libc::ESRCH)?;
    let mut id = req.id;
    // SAFETY: NOTIF_ID_VALID reads the u64 the pointer names, which is valid.
    let valid = unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID,
            &mut id as *mut u64,
        )
    };
    if valid < 0 {
        return Err(libc::ESRCH);
    }
    let open = |name: &str, flags: OFlag| {
        openat(&dir, name, flags | OFlag::O_CLOEXEC, Mode::empty())
            .map(std::fs::File::from)
            .map_err(|_| libc::ESRCH)
    };
    let mut maps = String::new();
    std::io::Read::read_to_string(&mut open("maps", OFlag::O_RDONLY)?, &mut maps)
        .map_err(|_| libc::ESRCH)?;
    if !writable(&maps, addr, len) {
        return Err(libc::EFAULT);
    }
    // SAFETY: the bytes of a plain-data struct that lives for the whole call.
    let bytes = unsafe {
        std::slice::from_raw_parts((&si as *const libc::sysinfo).cast::<u8>(), len as usize)
    };
    match open("mem", OFlag::O_WRONLY)?.write_at(bytes, addr) {
        Ok(n) if n == bytes.len() => Ok(()),
        _ => Err(libc::EFAULT),
    }
}

/// Whether `[addr, addr + len)` lies in writable mappings of a /proc/PID/maps.
fn writable(maps: &str, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let mut at = addr;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((lo, hi)) = range.split_once('-') else {
            continue;
        };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else {
            continue;
        };
        // Mappings come in address order: the next one must go on from `at`.
        if lo <= at && at < hi {
            if perms.as_bytes().get(1) != Some(&b'w') {
                return false;
            }
            at = hi;
            if at >= end {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(totalram: u64, totalswap: u64, unit: u32, uptime: i64) -> libc::sysinfo {
        // SAFETY: plain data.
        let mut h: libc::sysinfo = unsafe { std::mem::zeroed() };
        h.totalram = totalram;
        h.totalswap = totalswap;
        h.mem_unit = unit;
        h.uptime = uptime;
        h.loads = [1, 2, 3];
        h
    }

    #[test]
    fn a_ve_sees_its_limits_capped_by_the_host() {
        let f = VeFacts {
            ram_limit: Some(64 << 20),
            swap_limit: Some(32 << 20),
            ram_used: 10 << 20,
            swap_used: 1 << 20,
            tasks: 7,
            started_secs: 100,
        };
        let si = f.sysinfo(&host(1 << 20, 16 << 10, 4096, 1000));
        assert_eq!(si.totalram, 64 << 20);
        assert_eq!(si.freeram, 54 << 20);
        // The host has 64 MiB of swap: the allowance of 32 MiB fits.
        assert_eq!(si.totalswap, 32 << 20);
        assert_eq!(si.freeswap, 31 << 20);
        assert_eq!((si.procs, si.uptime, si.mem_unit), (7, 900, 1));
        assert_eq!(si.loads, [1, 2, 3]);
    }

    #[test]
    fn only_a_buffer_in_writable_mappings_is_written() {
        let maps = "\
00400000-00401000 r-xp 00000000 08:01 1 /bin/x
00600000-00601000 rw-p 00000000 00:00 0
00601000-00602000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 r--p 00000000 00:00 0
";
        assert!(writable(maps, 0x600000, 112));
        // Across two writable mappings that touch.
        assert!(writable(maps, 0x600fc0, 112));
        // Past the end of the writable ones, read-only, executable, unmapped.
        assert!(!writable(maps, 0x601fc0, 112));
        assert!(!writable(maps, 0x7f0000000000, 112));
        assert!(!writable(maps, 0x400000, 112));
        assert!(!writable(maps, 0x500000, 112));
        assert!(!writable(maps, 0, 112));
        assert!(!writable(maps, u64::MAX - 10, 112));
    }

    #[test]
    fn no_limit_or_a_larger_one_gives_the_hosts_and_use_never_underflows() {
        let f = VeFacts {
            ram_limit: None,
            swap_limit: Some(u64::MAX),
            ram_used: u64::MAX,
            swap_used: 0,
            tasks: 1 << 20,
            started_secs: 5000,
        };
        let si = f.sysinfo(&host(1000, 0, 1, 10));
        assert_eq!((si.totalram, si.freeram), (1000, 0));
        assert_eq!((si.totalswap, si.freeswap), (0, 0));
        assert_eq!((si.procs, si.uptime), (u16::MAX, 0));
    }
}
