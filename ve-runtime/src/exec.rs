//! Running a command inside a running VE (`vectl exec`, `vectl enter`).
//!
//! Three processes are involved. vectl clones a helper into the VE's cgroup; the
//! helper makes itself non-dumpable, joins all of the init's namespaces through
//! its pidfd, confines itself exactly like the VE's init (bounding, effective and
//! permitted capabilities reduced to the VE's, the VE's seccomp filters), and
//! only then forks the command process with CLONE_PARENT, so the command is born
//! inside the VE's PID namespace as vectl's own child. The helper never appears
//! in the VE (it stays in the host's PID namespace), and the command has the VE's
//! restrictions before anything in the VE can see it: while it still runs
//! vectl's code (until its execve), VE root, which has no CAP_SYS_PTRACE and no
//! capability the command lacks, can neither attach to it nor open its /proc
//! files (`exe`, `mem`, `fd`). It execs the VE's program directly (nothing of the
//! host's file system) with every descriptor past stdio closed, except the
//! `--preserve-fds` ones the caller passed on.
//!
//! With a terminal (`-t`, `enter`) the pty is allocated inside the VE's own devpts
//! (`/dev/pts/N` in the VE), vectl relays bytes between it and the user's terminal
//! in raw mode and passes window-size changes on.

use std::ffi::CString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::termios;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cgroup::Placement;
use crate::error::{Error, Result};
use crate::launch::move_self;
use crate::options::ExecOptions;
use crate::security::{self, Confinement, Profile};
use crate::step::{Step, StepError, failed, last_os_error, step};
use crate::sys::{self, Forked};

/// The most descriptors `--preserve-fds` passes on.
const MAX_PRESERVED_FDS: u32 = 4096;

/// The descriptors 3.. of `count` (at most [`MAX_PRESERVED_FDS`]) that the
/// caller passed (`--preserve-fds`): vectl opens its own close-on-exec, so
/// one in the range that is not came from the caller; vectl's own are not
/// passed on.
pub(crate) fn preserved_fds(count: i32) -> impl Iterator<Item = RawFd> {
    let n = count.clamp(0, MAX_PRESERVED_FDS.cast_signed());
    (3..3 + n).filter(|&fd| sys::inherited(fd))
}

/// How often the end of input is passed on (^D) before vectl leaves the terminal
/// to the command: a shell ends on the first one it reads.
const EOF_TRIES: u32 = 10;

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Nul(s.to_string()))
}

/// Runs `opts` in the VE whose init is `init_pidfd`; returns the command's exit
/// status (128 + signal number when it was killed).
pub(crate) fn run(
    ve: &str,
    init_pid: i32,
    init_pidfd: OwnedFd,
    placement: Placement,
    profile: Profile,
    sysinfo: Option<&std::path::Path>,
    opts: &ExecOptions,
) -> Result<i32> {
    let fail = |reason: String| Error::Exec {
        ve: ve.to_string(),
        reason,
    };
    if opts.argv.is_empty() {
        return Err(fail("no command given".into()));
    }
    let mut env = vec![
        format!("PATH={PATH}"),
        "HOME=/root".into(),
        "container=vectl".into(),
    ];
    if opts.tty {
        env.push(format!(
            "TERM={}",
            std::env::var("TERM").unwrap_or_else(|_| "xterm".into())
        ));
    }
    for kv in &opts.env {
        if !kv.contains('=') || kv.starts_with('=') {
            return Err(fail(format!("--env {kv:?}: expected KEY=VALUE")));
        }
        env.push(kv.clone());
    }
    let env: Vec<CString> = env.iter().map(|s| cstring(s)).collect::<Result<_>>()?;
    let mut argv: Vec<CString> = opts
        .argv
        .iter()
        .map(|s| cstring(s))
        .collect::<Result<_>>()?;
    let command = argv[0].clone();
    if let Some(a0) = &opts.arg0 {
        argv[0] = cstring(a0)?;
    }
    let workdir = opts.workdir.as_deref().map(cstring).transpose()?;
    let confinement = Confinement::new(profile)
        .map_err(|e| fail(e.to_string()))?
        .with_sysinfo(sysinfo.is_some());

    let pty = if opts.tty {
        Some(open_pty(init_pid).map_err(|e| fail(format!("allocate a terminal in the VE: {e}")))?)
    } else {
        None
    };
    let (child_stdio, our_stdio) = if opts.tty {
        Default::default()
    } else {
        stdio_pipes().map_err(|e| fail(e.to_string()))?
    };
    let (sync_r, sync_w) = sys::report_channel().map_err(|e| fail(format!("socketpair: {e}")))?;

    // Signals vectl relays to the command arrive on a signalfd; the children unblock
    // them before exec.
    let mut relayed = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGWINCH,
    ] {
        relayed.add(s);
    }
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&relayed), Some(&mut old_mask))
        .map_err(|e| fail(format!("sigprocmask: {e}")))?;
    // Non-blocking: the relay drains it in a loop after poll says it is readable.
    let sfd = SignalFd::with_flags(&relayed, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| fail(format!("signalfd: {e}")))?;

    let (cgroup_fd, join, leaf) = match placement {
        Placement::CloneInto { dir, leaf } => (Some(dir), Vec::new(), leaf),
        Placement::Tasks { join, into, .. } => (into, join, None),
    };
    let mut helper = sys::clone3(0, cgroup_fd.as_ref().map(|f| f.as_fd()));
    if let (Err(nix::Error::EBUSY), Some(leaf)) = (&helper, &leaf) {
        // The VE enabled controllers in its cgroup since it was chosen.
        crate::cgroup::mkdir(leaf)?;
        let fd = nix::fcntl::open(
            leaf,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| fail(format!("open {}: {e}", leaf.display())))?;
        helper = sys::clone3(0, Some(fd.as_fd()));
    }
    let helper = helper.map_err(|e| fail(format!("clone3: {e}")))?;
    let helper_pid = match helper {
        Forked::Child => {
            drop(sync_r);
            let h = Helper {
                join: &join,
                init_pidfd: init_pidfd.as_fd(),
                pty_slave: pty.as_ref().map(|p| p.1.as_fd()),
                command: &command,
                argv: &argv,
                env: &env,
                workdir: workdir.as_deref(),
                confinement: &confinement,
                keep_fds: opts.preserve_fds,
                stdio: [0, 1, 2].map(|i| child_stdio[i].as_ref().map(|f| f.as_fd())),
            };
            h.run(sync_w)
        }
        Forked::Parent { pid, .. } => pid,
    };
    drop(sync_w);
    let (pty_master, pty_slave) = match pty {
        Some((m, s)) => (Some(m), Some(s)),
        None => (None, None),
    };
    drop(pty_slave);
    drop(child_stdio);

    let helper_status = waitpid(Pid::from_raw(helper_pid), None);
    let (report, listener, stopped) = read_report(sync_r, &sfd);
    let mut command_pid = None;
    let mut error = None;
    for line in report.lines() {
        if let Some(p) = line.strip_prefix("pid ") {
            command_pid = p.trim().parse::<i32>().ok();
        } else if let Some(e) = line.strip_prefix("err ") {
            error = Some(e.to_string());
        }
    }
    let restore_mask = || {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
    };
    if let Some(why) = stopped {
        // The command never reached its exec: it goes, and so do we.
        if let Some(pid) = command_pid {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        restore_mask();
        return Err(fail(why));
    }
    if let Some(e) = error {
        if let Some(pid) = command_pid {
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        restore_mask();
        return Err(fail(e));
    }
    let Some(command_pid) = command_pid else {
        restore_mask();
        return Err(fail(format!(
            "the helper process ended without starting the command ({helper_status:?})"
        )));
    };
    let pidfd = sys::pidfd_open(command_pid).map_err(|e| fail(format!("pidfd_open: {e}")))?;
    // The command runs already: without the supervisor its sysinfo fails
    // (ENOSYS), which is said, not a reason to stop it.
    if let (Some(root), Some(l)) = (sysinfo, listener)
        && let Err(e) = crate::sysinfo::hand(root, ve, init_pid, l)
    {
        eprintln!("vectl: warning: VE {ve}: sysinfo(2) of this command fails: {e}");
    }
    let relay = Relay {
        master: pty_master,
        last_input: std::cell::Cell::new(None),
        sfd,
        command: pidfd,
        command_pid,
    };
    let [stdin_pipe, stdout_pipe, stderr_pipe] = our_stdio;
    let outputs: Vec<(OwnedFd, i32)> = [(stdout_pipe, 1), (stderr_pipe, 2)]
        .into_iter()
        .filter_map(|(p, fd)| p.map(|p| (p, fd)))
        .collect();
    let status = if relay.master.is_none() && (stdin_pipe.is_some() || !outputs.is_empty()) {
        relay.run_pipes(stdin_pipe, outputs)
    } else {
        relay.run()
    };
    restore_mask();
    status.map_err(|e| fail(e.to_string()))
}

/// The longest a command may take from vectl's start of it to its exec.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Reads the helper's report (`pid N`, `err ...`) until the pipe closes, which
/// it does when the command execs. Returns early, with why, when a signal asks
/// vectl to stop or START_TIMEOUT passes: VE root may stop the command before
/// its exec, and vectl must not hang on it.
fn read_report(sync: OwnedFd, sfd: &SignalFd) -> (String, Option<OwnedFd>, Option<String>) {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    let mut report = Vec::new();
    let mut passed = Vec::new();
    let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            let why = format!(
                "the command did not start within {} s (stopped inside the VE?)",
                START_TIMEOUT.as_secs()
            );
            return (text(&report), None, Some(why));
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [
            PollFd::new(sync.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => break,
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            match sys::recv_report(sync.as_fd(), &mut report, &mut passed) {
                Ok(0) => break,
                Ok(_) | Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
                Err(_) => break,
            }
        }
        let signalled = fds[1].revents().is_some_and(|r| !r.is_empty());
        if signalled
            && let Ok(Some(info)) = sfd.read_signal()
            && info.ssi_signo.cast_signed() != libc::SIGWINCH
        {
            // The helper has exited (it was waited for), so all it wrote is in
            // the pipe: take it, or the command's PID is lost with the command
            // still stopped in the VE. The command may also be in its execve,
            // named already but its close-on-exec descriptors not yet closed:
            // if the pipe ends within a moment it has started, and the signal
            // is made pending again for the relay to pass on.
            if drain(&sync, &mut report, &mut passed, EXEC_GRACE) {
                if let Ok(sig) = Signal::try_from(info.ssi_signo.cast_signed()) {
                    let _ = nix::sys::signal::raise(sig);
                }
                break;
            }
            let why = format!(
                "interrupted by {} before the command started",
                crate::signal::signal_name(info.ssi_signo.cast_signed())
            );
            return (text(&report), None, Some(why));
        }
    }
    (text(&report), passed.into_iter().next(), None)
}

/// How long a signal that arrives before the report pipe ends waits for it
/// to end (the command being in its execve).
const EXEC_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Reads what is in the report channel, waiting up to `wait` for more;
/// returns whether it ended (every writer gone).
fn drain(
    pipe: &OwnedFd,
    into: &mut Vec<u8>,
    passed: &mut Vec<OwnedFd>,
    wait: std::time::Duration,
) -> bool {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(1) => {}
            Err(nix::Error::EINTR) => continue,
            _ => return false,
        }
        match sys::recv_report(pipe.as_fd(), into, passed) {
            Ok(0) => return true,
            Ok(_) | Err(nix::Error::EINTR | nix::Error::EAGAIN) => {}
            Err(_) => return false,
        }
    }
}

/// vectl's own stdio that is a terminal, replaced by pipes for a command run
/// without `-t`: a process in the VE must not hold a descriptor of the
/// operator's terminal (it could read what is typed later, long after the
/// command, or change its settings). Returns the command's ends and ours
/// (stdin: we write; stdout, stderr: we read). Stdio that is a directory is
/// refused: the command would start with a way onto the host's file system.
type Stdio3 = [Option<OwnedFd>; 3];

fn stdio_pipes() -> Step<(Stdio3, Stdio3)> {
    let names = ["standard input", "standard output", "standard error"];
    let (mut child, mut ours): (Stdio3, Stdio3) = Default::default();
    for (i, (raw, name)) in [0, 1, 2].into_iter().zip(names).enumerate() {
        // SAFETY: stdio descriptors 0-2 stay open for the whole of vectl's run;
        // the borrow ends with this iteration.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
            return Err(StepError::Refused(format!(
                "{name} is a directory: not passed into a VE"
            )));
        }
        if !nix::unistd::isatty(fd).unwrap_or(false) {
            continue;
        }
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(step(|| "pipe".into()))?;
        if i == 0 {
            (child[i], ours[i]) = (Some(r), Some(w));
        } else {
            nix::fcntl::fcntl(
                &r,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .map_err(step(|| "pipe".into()))?;
            (child[i], ours[i]) = (Some(w), Some(r));
        }
    }
    Ok((child, ours))
}

/// Opens a new pty in the VE's devpts and its peer. The VE's /dev is looked up
/// inside its root (a VE can point /dev/pts anywhere), and what is opened must be
/// a pty multiplexer (TIOCGPTPEER refuses anything else).
fn open_pty(init_pid: i32) -> Step<(OwnedFd, OwnedFd)> {
    let root = format!("/proc/{init_pid}/root");
    let master = ve_templates::Tree::open(Path::new(&root))
        .and_then(|t| {
            t.open_at(
                Path::new("dev/pts/ptmx"),
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NONBLOCK,
            )
        })
        .map_err(step(|| "/dev/pts/ptmx".into()))?;
    let st = rustix::fs::fstat(&master).map_err(step(|| "/dev/pts/ptmx".into()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(StepError::Refused("/dev/pts/ptmx is not a device".into()));
    }
    // Blocking again: the relay polls before it reads.
    nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(step(|| "/dev/pts/ptmx".into()))?;
    let slave = sys::pty_peer(master.as_fd()).map_err(step(|| "open the pty's peer".into()))?;
    if let Some(ws) = sys::get_winsize(std::io::stdin().as_fd()) {
        sys::set_winsize(master.as_fd(), &ws);
    }
    Ok((master, slave))
}

struct Helper<'a> {
    join: &'a [std::path::PathBuf],
    init_pidfd: BorrowedFd<'a>,
    pty_slave: Option<BorrowedFd<'a>>,
    command: &'a CString,
    argv: &'a [CString],
    env: &'a [CString],
    workdir: Option<&'a std::ffi::CStr>,
    confinement: &'a Confinement,
    keep_fds: u32,
    /// Pipes that become the command's stdio in place of a terminal.
    stdio: [Option<BorrowedFd<'a>>; 3],
}

impl Helper<'_> {
    /// The helper: joins the VE and clones the command. Never returns.
    fn run(&self, sync: OwnedFd) -> ! {
        // What the helper and the command may hold from here on: stdio, the report
        // pipe, the terminal, the init's pidfd (until the namespaces are joined)
        // and the descriptors the caller passed on with --preserve-fds. Everything
        // else is closed now, before any path in the VE is looked up: an open
        // directory of the host would be a way out through /proc/self/fd/N/..
        // (CVE-2024-21626). vectl opens all of its own close-on-exec, so a
        // descriptor in the preserved range that is not is the caller's.
        let mut keep: Vec<RawFd> = vec![sync.as_raw_fd()];
        keep.extend(self.pty_slave.map(|s| s.as_raw_fd()));
        keep.extend(self.stdio.iter().flatten().map(|f| f.as_raw_fd()));
        keep.extend(preserved_fds(
            self.keep_fds.min(MAX_PRESERVED_FDS).cast_signed(),
        ));
        let report = |line: String| {
            let _ = nix::unistd::write(&sync, line.as_bytes());
        };
        let mut with_pidfd = keep.clone();
        with_pidfd.push(self.init_pidfd.as_raw_fd());
        if let Err(e) = sys::close_fds_except(&with_pidfd) {
            report(format!("err close inherited descriptors: {e}\n"));
            sys::exit_now(1);
        }
        match self.enter() {
            // Handed on and closed here: the command never holds it.
            Ok(Some(listener)) => {
                if let Err(e) = sys::send_fd(sync.as_fd(), listener.as_fd()) {
                    report(format!("err hand on the sysinfo listener: {e}\n"));
                    sys::exit_now(1);
                }
            }
            Ok(None) => {}
            Err(e) => {
                report(format!("err {e}\n"));
                sys::exit_now(1);
            }
        }
        if let Err(e) = sys::close_fds_except(&keep) {
            report(format!("err close the init's pidfd: {e}\n"));
            sys::exit_now(1);
        }
        match sys::fork_parent() {
            Ok(None) => {
                let e = self.exec();
                report(format!("err {e}\n"));
                sys::exit_now(127);
            }
            Ok(Some(pid)) => {
                report(format!("pid {pid}\n"));
                sys::exit_now(0);
            }
            Err(e) => {
                report(format!("err clone: {e}\n"));
                sys::exit_now(1);
            }
        }
    }

    /// Joins the VE and confines the helper; its fork inherits both.
    fn enter(&self) -> Step<Option<OwnedFd>> {
        security::set_non_dumpable()?;
        move_self(self.join).map_err(step(|| "join the VE's cgroup".into()))?;
        let mut all = CloneFlags::CLONE_NEWCGROUP
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNS;
        let in_userns = self.confinement.profile == Profile::Userns;
        if in_userns {
            all |= CloneFlags::CLONE_NEWUSER;
        }
        setns(self.init_pidfd, all).map_err(step(|| "join the VE's namespaces".into()))?;
        if in_userns {
            crate::userns::become_root()?;
        }
        security::confine(self.confinement)
    }

    /// The command process, inside the VE: terminal, directory, restrictions, exec.
    fn exec(&self) -> StepError {
        if let Err(e) = nix::unistd::setsid() {
            return failed("setsid", e);
        }
        if let Some(slave) = self.pty_slave {
            if let Err(e) = sys::set_controlling_tty(slave) {
                return failed("set the controlling terminal", e);
            }
            for r in [
                nix::unistd::dup2_stdin(slave),
                nix::unistd::dup2_stdout(slave),
                nix::unistd::dup2_stderr(slave),
            ] {
                if let Err(e) = r {
                    return failed("attach the terminal", e);
                }
            }
        }
        for (i, pipe) in (0..).zip(&self.stdio) {
            if let Some(p) = pipe
                // SAFETY: dup2 onto a stdio number of this process.
                && unsafe { libc::dup2(p.as_raw_fd(), i) } < 0
            {
                return last_os_error("attach a pipe");
            }
        }
        let dir = match self.workdir {
            Some(d) => d.to_owned(),
            None if std::path::Path::new("/root").is_dir() => c"/root".to_owned(),
            None => c"/".to_owned(),
        };
        if let Err(e) = nix::unistd::chdir(dir.as_c_str()) {
            return failed(format!("chdir {}", dir.to_string_lossy()), e);
        }
        // A working directory outside the VE's root (reached through a
        // descriptor the caller passed on) is refused, as runc does.
        match nix::unistd::getcwd() {
            Ok(cwd) if cwd.is_absolute() => {}
            _ => {
                return StepError::Refused(format!("{}: outside the VE", dir.to_string_lossy()));
            }
        }
        sys::reset_signals();
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        crate::failpoint::stop("exec-before-execve");
        exec_path(self.command, self.argv, self.env)
    }
}

/// execve with a PATH search (in the VE's file system, with the VE's PATH).
fn exec_path(command: &CString, argv: &[CString], env: &[CString]) -> StepError {
    let name = command.as_bytes();
    let shown = command.to_string_lossy();
    if name.contains(&b'/') {
        let e = match nix::unistd::execve(command, argv, env) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        return exec_error(&shown, e);
    }
    let mut denied = false;
    for dir in PATH.split(':') {
        let mut full = dir.as_bytes().to_vec();
        full.push(b'/');
        full.extend_from_slice(name);
        let Ok(full) = CString::new(full) else {
            continue;
        };
        match nix::unistd::execve(&full, argv, env) {
            Ok(never) => match never {},
            Err(nix::Error::ENOENT | nix::Error::ENOTDIR) => {}
            Err(nix::Error::EACCES) => denied = true,
            Err(e) => return exec_error(&shown, e),
        }
    }
    exec_error(
        &shown,
        if denied {
            nix::Error::EACCES
        } else {
            nix::Error::ENOENT
        },
    )
}

fn exec_error(command: &str, e: nix::Error) -> StepError {
    match e {
        nix::Error::ENOENT => StepError::Refused(format!("{command}: command not found in the VE")),
        nix::Error::EACCES => StepError::Refused(format!("{command}: permission denied")),
        e => failed(command, e),
    }
}

/// vectl's side while the command runs: relays terminal bytes, signals and window
/// size, and collects the exit status.
struct Relay {
    master: Option<OwnedFd>,
    /// The last byte of input passed to the terminal.
    last_input: std::cell::Cell<Option<u8>>,
    sfd: SignalFd,
    command: OwnedFd,
    command_pid: i32,
}

/// Puts the user's terminal in raw mode while a pty session runs.
pub(crate) struct RawMode {
    saved: Option<termios::Termios>,
}

impl RawMode {
    pub(crate) fn enter() -> RawMode {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(stdin.as_fd()).ok();
        if let Some(t) = &saved {
            let mut raw = t.clone();
            termios::cfmakeraw(&mut raw);
            let _ = termios::tcsetattr(stdin.as_fd(), termios::SetArg::TCSANOW, &raw);
        }
        RawMode { saved }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin().as_fd(), termios::SetArg::TCSANOW, t);
        }
    }
}

impl Relay {
    fn run(self) -> Step<i32> {
        let _raw = self.master.as_ref().map(|_| RawMode::enter());
        let stdin = std::io::stdin();
        let mut stdin_open = self.master.is_some();
        // After the end of input: how many end-of-file characters were sent.
        let mut eofs_sent: Option<u32> = None;
        let mut buf = vec![0u8; 16384];
        loop {
            let mut fds = vec![
                PollFd::new(self.command.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN),
            ];
            if let Some(m) = &self.master {
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
                if stdin_open {
                    fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
                }
            }
            // While ending the input, look again every 100 ms.
            let timeout = match eofs_sent {
                Some(n) if n < EOF_TRIES => PollTimeout::from(100u8),
                _ => PollTimeout::NONE,
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(failed("poll", e)),
            }
            let ready = |i: usize| {
                fds.get(i)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            };
            let (exited, signalled, master_ready, stdin_ready) =
                (ready(0), ready(1), ready(2), ready(3));
            drop(fds);
            if signalled {
                self.relay_signal();
            }
            if master_ready && !self.copy_from_master(&mut buf) && !exited {
                // The terminal closed while the command lives on (it detached).
                // Keep waiting for it without a terminal.
                return self.wait_without_terminal();
            }
            if stdin_ready {
                stdin_open = self.copy_to_master(&mut buf);
                if !stdin_open {
                    eofs_sent = Some(0);
                }
            }
            if exited {
                if self.master.is_some() {
                    while self.copy_from_master(&mut buf) {}
                }
                return self.status();
            }
            if let Some(n) = eofs_sent
                && n < EOF_TRIES
                && self.send_eof(n == 0)
            {
                eofs_sent = Some(n + 1);
            }
        }
    }

    /// Without a terminal, relays our terminal stdio through the pipes that
    /// stand in for it (see [`stdio_pipes`]) until the command exits.
    fn run_pipes(&self, mut input: Option<OwnedFd>, mut outputs: Vec<(OwnedFd, i32)>) -> Step<i32> {
        let stdin = std::io::stdin();
        let mut buf = vec![0u8; 16384];
        loop {
            let mut fds = vec![
                PollFd::new(self.command.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN),
            ];
            if input.is_some() {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            let first_out = fds.len();
            for (r, _) in &outputs {
                fds.push(PollFd::new(r.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(failed("poll", e)),
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            if ready[1] {
                self.relay_signal();
            }
            if let Some(w) = &input
                && ready[2]
            {
                let more = match nix::unistd::read(stdin.as_fd(), &mut buf) {
                    Ok(n) if n > 0 => write_all_fd(w.as_fd(), &buf[..n]),
                    Err(nix::Error::EINTR | nix::Error::EAGAIN) => true,
                    _ => false,
                };
                if !more {
                    // End of input: the command sees it as the pipe closes.
                    input = None;
                }
            }
            for i in (0..outputs.len()).rev() {
                if ready[first_out + i] && copy_out(&outputs[i], &mut buf) == Some(false) {
                    outputs.remove(i);
                }
            }
            if ready[0] {
                // What the command wrote before it ended (a process it left
                // behind may keep a pipe open: no waiting for its end).
                for o in &outputs {
                    while copy_out(o, &mut buf) == Some(true) {}
                }
                return self.status();
            }
        }
    }

    /// Passes the end of input on as the terminal's end-of-file character (^D), the
    /// way a user ends a session: once the command has read everything before it
    /// (a program that sets up its terminal may discard unread input), twice when
    /// a line is pending. Returns whether it was sent.
    fn send_eof(&self, first: bool) -> bool {
        let Some(m) = &self.master else {
            return false;
        };
        // The line discipline's state is the slave side's.
        let Ok(slave) = sys::pty_peer(m.as_fd()) else {
            return false;
        };
        if sys::pending_input(slave.as_fd()) > 0 {
            return false;
        }
        let eof = termios::tcgetattr(slave.as_fd())
            .map(|t| t.control_chars[termios::SpecialCharacterIndices::VEOF as usize])
            .unwrap_or(4);
        let pending_line = first && matches!(self.last_input.get(), Some(b) if b != b'\n');
        let times = if pending_line { 2 } else { 1 };
        for _ in 0..times {
            write_all_fd(m.as_fd(), &[eof]);
        }
        true
    }

    fn wait_without_terminal(&self) -> Step<i32> {
        loop {
            let mut fds = [
                PollFd::new(self.command.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::Error::EINTR) => {}
                Err(e) => return Err(failed("poll", e)),
            }
            let exited = fds[0].revents().is_some_and(|r| !r.is_empty());
            let signalled = fds[1].revents().is_some_and(|r| !r.is_empty());
            if signalled {
                self.relay_signal();
            }
            if exited {
                return self.status();
            }
        }
    }

    fn relay_signal(&self) {
        while let Ok(Some(info)) = self.sfd.read_signal() {
            let sig = info.ssi_signo.cast_signed();
            if sig == libc::SIGWINCH {
                if let (Some(m), Some(ws)) =
                    (&self.master, sys::get_winsize(std::io::stdin().as_fd()))
                {
                    sys::set_winsize(m.as_fd(), &ws);
                }
            } else {
                let _ = sys::pidfd_send_signal(self.command.as_fd(), sig);
            }
        }
    }

    /// Copies what the command wrote to our stdout; false once the pty is closed.
    fn copy_from_master(&self, buf: &mut [u8]) -> bool {
        let Some(m) = &self.master else {
            return false;
        };
        let mut pfd = [PollFd::new(m.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut pfd, PollTimeout::ZERO), Ok(n) if n > 0) {
            return false;
        }
        match nix::unistd::read(m.as_fd(), buf) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]);
                let _ = out.flush();
                true
            }
        }
    }

    /// Copies the user's input to the pty; false at end of input.
    fn copy_to_master(&self, buf: &mut [u8]) -> bool {
        let Some(m) = &self.master else {
            return false;
        };
        match nix::unistd::read(std::io::stdin().as_fd(), buf) {
            Ok(n) if n > 0 => {
                self.last_input.set(Some(buf[n - 1]));
                write_all_fd(m.as_fd(), &buf[..n])
            }
            Ok(_) | Err(_) => false,
        }
    }

    fn status(&self) -> Step<i32> {
        loop {
            match waitpid(Pid::from_raw(self.command_pid), None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(failed("wait for the command", e)),
            }
        }
    }
}

/// Copies what is in an output pipe to our stdout (1) or stderr (2): `Some(true)`
/// copied, `Some(false)` at its end, `None` when nothing is there now.
fn copy_out((pipe, target): &(OwnedFd, i32), buf: &mut [u8]) -> Option<bool> {
    match nix::unistd::read(pipe.as_fd(), buf) {
        Ok(0) => Some(false),
        Ok(n) => {
            if *target == 1 {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf[..n]).and_then(|()| out.flush());
            } else {
                let _ = std::io::stderr().lock().write_all(&buf[..n]);
            }
            Some(true)
        }
        Err(nix::Error::EINTR | nix::Error::EAGAIN) => None,
        Err(_) => Some(false),
    }
}

pub(crate) fn write_all_fd(fd: BorrowedFd<'_>, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match nix::unistd::write(fd, data) {
            Ok(n) => data = &data[n..],
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => continue,
            Err(_) => return false,
        }
    }
    true
}
