//! The raw system calls vectl needs that nix does not wrap: clone3 (with pidfds and
//! CLONE_INTO_CGROUP), pidfd_open, pidfd_send_signal, close_range. Each unsafe block
//! is here, at the syscall boundary.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `struct clone_args` (linux/sched.h), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What clone3 returned.
#[derive(Debug)]
pub(crate) enum Forked {
    /// We are the child.
    Child,
    /// We are the parent; the child's pid (in our namespace) and a pidfd for it.
    Parent { pid: i32, pidfd: OwnedFd },
}

/// clone3 without a new stack (fork semantics) with `flags` (CLONE_NEW* and the
/// like), always with CLONE_PIDFD, optionally into the cgroup `cgroup`. The child
/// sends SIGCHLD to its parent when it exits.
///
/// The caller must be single-threaded: the child is a copy of this thread only and
/// runs ordinary Rust code until it execs.
pub(crate) fn clone3(flags: u64, cgroup: Option<BorrowedFd<'_>>) -> nix::Result<Forked> {
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: std::ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd.as_raw_fd() as u64;
    }
    // SAFETY: `args` is a valid clone_args of the size passed; with stack = 0 the
    // child runs on a copy of our stack like fork(). The kernel writes the pidfd
    // into `pidfd`, which lives across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent {
            pid: pid as i32,
            // SAFETY: the kernel returned a new pidfd that nothing else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// Runs `work` in a forked helper process (for setns into a VE's namespaces,
/// which must not change vectl itself) and returns what it returned: its
/// `Ok` text, or its error message. Same rules as [`clone3`]: the caller must
/// be single-threaded.
pub(crate) fn in_helper(
    work: impl FnOnce() -> std::result::Result<String, String>,
) -> std::result::Result<String, String> {
    use std::io::{Read, Write};
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    match clone3(0, None).map_err(|e| format!("clone3: {e}"))? {
        Forked::Child => {
            drop(report_r);
            let mut w = std::fs::File::from(report_w);
            let (tag, text) = match work() {
                Ok(t) => ("+", t),
                Err(e) => ("!", e),
            };
            let ok = w.write_all(format!("{tag}{text}").as_bytes()).is_ok();
            exit_now(if ok && tag == "+" { 0 } else { 1 })
        }
        Forked::Parent { pid, .. } => {
            drop(report_w);
            let mut msg = String::new();
            let _ = std::fs::File::from(report_r).read_to_string(&mut msg);
            let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            match (msg.chars().next(), status) {
                (Some('+'), Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) => Ok(msg[1..].into()),
                (Some('!'), _) => Err(msg[1..].into()),
                (_, status) => Err(format!("the helper process ended: {status:?}")),
            }
        }
    }
}

/// Forks the calling process with CLONE_PARENT (the child is our parent's child,
/// and is born in the PID namespace our children go to) through the legacy
/// clone system call: a VE's seccomp filter fails clone3 with ENOSYS. Returns
/// `None` in the child and the child's pid in the parent. Same rules as
/// [`clone3`]: the caller must be single-threaded.
pub(crate) fn fork_parent() -> nix::Result<Option<i32>> {
    // SAFETY: clone with a null stack runs the child on a copy of our stack like
    // fork(); no tid pointers or TLS are passed. With CLONE_PARENT the child's exit
    // signal is our parent's choice, so the low byte of the flags is 0.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_PARENT as u64,
            0u64,
            0u64,
            0u64,
            0u64,
        )
    };
    match ret {
        -1 => Err(Errno::last()),
        0 => Ok(None),
        pid => Ok(Some(pid as i32)),
    }
}

/// CLONE_INTO_CGROUP (linux/sched.h; not in every libc yet).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Opens a pidfd for `pid`.
pub(crate) fn pidfd_open(pid: i32) -> nix::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `sig` to the process behind `pidfd` (no pid-reuse race).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> nix::Result<()> {
    // SAFETY: a valid fd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn close_range(first: u32, last: u32) -> nix::Result<()> {
    // SAFETY: close_range only closes fds of our own; callers no longer use them.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Closes every fd of the calling process but stdio and `keep`, at once (not at
/// exec): a process about to resolve paths inside a VE must hold nothing of the
/// host's file system that `/proc/self/fd/N/..` could lead it back to. Only for a
/// forked child whose other fds nothing owns any more (it never returns).
pub(crate) fn close_fds_except(keep: &[RawFd]) -> nix::Result<()> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut next = 3u32;
    for fd in keep {
        if fd > next {
            close_range(next, fd - 1)?;
        }
        next = fd + 1;
    }
    close_range(next, u32::MAX)
}

/// Whether `fd` is open without close-on-exec: passed to us by our caller
/// (vectl opens all of its own close-on-exec).
pub(crate) fn inherited(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of a descriptor number.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags >= 0 && flags & libc::FD_CLOEXEC == 0
}

/// Ends the calling process at once, without running destructors or atexit
/// handlers (which belong to the parent's copy of the process).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions and does not return.
    unsafe { libc::_exit(code) }
}

/// Writes to a pipe whose reader may be gone (a child that failed and exited)
/// without being killed by SIGPIPE: `vectl` keeps SIGPIPE's default action for
/// its output (`vectl list | head`), so for this write it is ignored and the
/// failure comes back as EPIPE. vectl is single-threaded where this is used.
pub(crate) fn write_to_child(w: &mut impl std::io::Write, buf: &[u8]) -> std::io::Result<()> {
    // SAFETY: changing a signal disposition; the old one is put back below.
    let old = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let res = w.write_all(buf);
    if old != libc::SIG_ERR {
        // SAFETY: restoring the disposition signal() returned.
        unsafe {
            libc::signal(libc::SIGPIPE, old);
        }
    }
    res
}

/// Resets every signal to its default action and unblocks all signals, so an
/// exec'd program starts clean (Rust ignores SIGPIPE, for one).
pub(crate) fn reset_signals() {
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: restoring the default disposition is always valid; errors for
        // signal numbers the kernel reserves are ignored.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}

/// Whether the calling process has exactly one thread (clone3 with fork semantics
/// is only safe then).
pub(crate) fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .map(|v| v.trim() == "1")
        })
        .unwrap_or(false)
}

/// Unlocks a pty master and opens its peer (the slave) without a path lookup.
pub(crate) fn pty_peer(master: BorrowedFd<'_>) -> nix::Result<OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from the pointer, which is valid.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) };
    if rc < 0 {
        return Err(Errno::last());
    }
    let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd.
    let fd = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The window size of a terminal, if `fd` is one.
pub(crate) fn get_winsize(fd: BorrowedFd<'_>) -> Option<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the valid pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0).then_some(ws)
}

/// Sets a terminal's window size (the kernel sends SIGWINCH to its foreground).
pub(crate) fn set_winsize(fd: BorrowedFd<'_>, ws: &libc::winsize) {
    // SAFETY: TIOCSWINSZ reads a winsize from the valid pointer.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, ws);
    }
}

/// Makes `fd` the controlling terminal of the calling session leader.
pub(crate) fn set_controlling_tty(fd: BorrowedFd<'_>) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument by value.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSCTTY, 0) };
    if rc < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// The bpf(2) system call with an attribute struct `T` (a `union bpf_attr` prefix).
/// Returns the call's non-negative result (a new fd for BPF_PROG_LOAD).
pub(crate) fn bpf<T>(cmd: u32, attr: &T) -> nix::Result<i32> {
    // SAFETY: `attr` is a live, initialised repr(C) prefix of union bpf_attr and
    // its size is passed along; the kernel reads at most that many bytes and
    // copies what it needs (instructions, license) from pointers inside it, which
    // the caller keeps alive for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            (attr as *const T).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(rc as i32)
    }
}

/// Bytes waiting in a terminal's input queue (FIONREAD).
pub(crate) fn pending_input(fd: BorrowedFd<'_>) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into the valid pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc == 0 { n.max(0) as usize } else { 0 }
}

/// A connected pair of close-on-exec SOCK_SEQPACKET sockets: a report channel
/// between vectl and a child that, unlike a pipe, also carries descriptors
/// (the child's seccomp listener). Each write is one message.
pub(crate) fn report_channel() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Sends `fd` on a report channel, in a message of its own (its one byte is
/// no part of the report).
pub(crate) fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[std::io::IoSlice::new(b"F")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
}

/// Receives one message of a report channel: its text goes to `text`, a
/// descriptor it carries to `fds` (its byte does not count as text). Returns
/// how many bytes came (0: every sender is gone).
pub(crate) fn recv_report(
    sock: BorrowedFd<'_>,
    text: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
) -> nix::Result<usize> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    let mut buf = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 1]);
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let n = msg.bytes;
    let mut got = false;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel gave us this descriptor with the message;
                // nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                got = true;
            }
        }
    }
    if !got {
        text.extend_from_slice(&buf[..n]);
    }
    Ok(n)
}

/// Reads a report channel until every sender is gone: its text and the
/// descriptors it carried.
pub(crate) fn read_reports(sock: BorrowedFd<'_>) -> (String, Vec<OwnedFd>) {
    let (mut text, mut fds) = (Vec::new(), Vec::new());
    loop {
        match recv_report(sock, &mut text, &mut fds) {
            Ok(0) => break,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    (String::from_utf8_lossy(&text).into_owned(), fds)
}
