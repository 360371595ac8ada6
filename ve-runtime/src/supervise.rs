//! The host-wide supervisor, `vectl supervise` (vectl-supervisor.service): one
//! process for every VE of every root, no process per VE.
//!
//! It holds a pidfd for each running VE's init and waits on all of them at
//! once (poll), beside two more descriptors: an inotify watch of each root's
//! `run/` directory, where `start` records a VE (a new pidfd to hold), and the
//! kernel's process connector, which reports the exit status of every process
//! that ends (a pidfd tells only that a process ended, and only its parent may
//! wait for its status; the inits' parents are gone).
//!
//! When an init ends: if `vectl stop` ended it (`run/NAME.stopping`, or its
//! run state is gone or names another init), nothing happens. Otherwise the
//! supervisor writes `run/NAME.exit` ([`ExitRecord`]: status or signal, time,
//! how long it ran), so `list` and `show` say `crashed` or `exited`, and, as
//! the VE's `--restart` policy says, runs `vectl --root ROOT start NAME` after
//! a back-off: 1 s, doubling with every restart in a row, at most 5 min; a VE
//! that ran 10 minutes starts the count again. A reboot or power-off from
//! inside the VE ends its init with SIGKILL (the kernel ends a PID namespace's
//! init that way), so it counts as a failure: `on-failure` brings it back.
//!
//! An init that ends before the supervisor holds it (a VE whose init fails at
//! once) is found by the scan that `start`'s run state triggers: dead, started
//! since the supervisor runs, its run state written in the last 30 s, not
//! recorded yet, and no `vectl stop` or unfinished `start` (whose end is no
//! crash) marked. Its status comes from the
//! exit events the connector reported for processes it did not hold (the last
//! [`RECENT_EXITS`]).
//!
//! If the supervisor is not running, VEs run on: their consoles and sysinfo(2)
//! answers wait for it, nothing else of theirs depends on it. It finds the
//! running VEs again when it starts; an init that ended while it was down is
//! not seen (its VE shows `stopped`). Under systemd what it holds for VEs (their
//! consoles, their sysinfo listeners) is also kept in the unit's file
//! descriptor store ([`FdStore`]) and taken back by the next supervisor.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::config::{RestartPolicy, VeConfig};
use crate::error::{Error, Result};
use crate::state::{ExitRecord, RunState};
use crate::sys;

/// How often the roots and their running VEs are looked at again even without
/// an inotify event (a root registered meanwhile, a missed event).
const RESCAN: Duration = Duration::from_secs(10);
/// The longest back-off between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A VE that ran this long before its init ended starts the restart count again.
const STABLE_SECS: u64 = 600;
/// How recent a run state must be for its dead init to count as one that
/// ended before the supervisor held it.
const FRESH: Duration = Duration::from_secs(30);
/// How many exit statuses of processes it does not hold the supervisor keeps,
/// for inits that end before it holds them.
const RECENT_EXITS: usize = 4096;

/// Exit statuses the connector reported for processes not held: pid, raw
/// status, and when (ns since boot), the newest last.
#[derive(Default)]
struct RecentExits(std::collections::VecDeque<(i32, u32, u64)>);

impl RecentExits {
    fn push(&mut self, pid: i32, code: u32, at_ns: u64) {
        if self.0.len() == RECENT_EXITS {
            self.0.pop_front();
        }
        self.0.push_back((pid, code, at_ns));
    }

    /// The status of `pid`'s end at or after `since_ns` (not an earlier
    /// process's of the same pid).
    fn of(&self, pid: i32, since_ns: u64) -> Option<u32> {
        self.0
            .iter()
            .rev()
            .find(|(p, _, at)| *p == pid && *at >= since_ns)
            .map(|(_, c, _)| *c)
    }
}

/// One running VE's init the supervisor holds.
struct Watched {
    root: PathBuf,
    ve: String,
    pidfd: OwnedFd,
    rs: RunState,
    /// The raw exit code the process connector reported for it.
    exit_code: Option<u32>,
}

/// A restart waiting for its back-off to pass.
struct Due {
    at: Instant,
    root: PathBuf,
    ve: String,
    /// The VE's id: a VE of the same name made meanwhile is another one.
    id: u32,
    /// Failed `vectl start`s of this restart so far.
    attempts: u32,
}

/// The VE's id in its config now, if it has one.
fn ve_id(root: &Path, ve: &str) -> Option<u32> {
    VeConfig::load(&root.join("ves").join(format!("{ve}.toml")))
        .ok()
        .flatten()
        .map(|c| c.id)
}

/// What to tell the operator (one line each, to stderr: the journal).
pub(crate) fn log(msg: &str) {
    eprintln!("vectl supervise: {msg}");
}

/// Runs the supervisor until it is killed. `roots` gives the state directories
/// to watch (asked again at every rescan); `vectl` is the binary that starts a
/// VE again.
pub fn supervise(roots: &dyn Fn() -> Vec<PathBuf>, vectl: &Path) -> Result<()> {
    raise_fd_limit();
    // A console client that goes away must not end the supervisor: EPIPE.
    // SAFETY: changing a signal disposition of this process; children get the
    // default back at exec.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // One supervisor per root: a root whose lock another holds is its.
    let mut owned: HashMap<PathBuf, fs::File> = HashMap::new();
    let cn = match ProcConnector::open() {
        Ok(c) => Some(c),
        Err(e) => {
            log(&format!(
                "no process connector ({e}): ended VEs show `crashed` without their exit status"
            ));
            None
        }
    };
    let inotify =
        Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(|e| Error::Sys {
            what: "inotify_init".into(),
            source: e,
        })?;
    let mut watched_dirs: Vec<PathBuf> = Vec::new();
    let mut consoles = crate::console::Consoles::default();
    consoles.store = FdStore::from_env();
    consoles.notifiers.store = FdStore::from_env();
    // What a supervisor before this one stored with systemd.
    let mut passed = Some(FdStore::passed());
    let mut inits: HashMap<i32, Watched> = HashMap::new();
    let mut due: Vec<Due> = Vec::new();
    let mut starting: HashMap<u32, (Due, std::process::Child)> = HashMap::new();
    let mut recent = RecentExits::default();
    let mut replications = Replications::default();
    let since = crate::state::now_secs();
    let mut next_scan = Instant::now();
    loop {
        if Instant::now() >= next_scan {
            for root in roots() {
                if !owned.contains_key(&root) {
                    match take_root(&root) {
                        Some(lock) => {
                            owned.insert(root.clone(), lock);
                        }
                        None => continue,
                    }
                }
                let run = root.join("run");
                if !watched_dirs.contains(&run)
                    && inotify
                        .add_watch(
                            &run,
                            AddWatchFlags::IN_MOVED_TO
                                | AddWatchFlags::IN_CLOSE_WRITE
                                | AddWatchFlags::IN_DELETE,
                        )
                        .is_ok()
                {
                    watched_dirs.push(run);
                }
                // Exit events first, for inits that ended before they were held.
                if let Some(c) = &cn {
                    c.drain(&mut inits, &mut recent);
                }
                for dead in scan(&root, &mut inits, since) {
                    // Its start, in the connector's clock (ns since boot).
                    let born =
                        dead.rs.start_ticks * 1_000_000_000 / crate::state::clock_ticks().max(1);
                    // Its exit event may trail its end by a moment.
                    if let Some(c) = &cn {
                        let deadline = Instant::now() + Duration::from_millis(300);
                        while recent.of(dead.rs.pid, born).is_none() && Instant::now() < deadline {
                            let mut fds = [PollFd::new(c.fd.as_fd(), PollFlags::POLLIN)];
                            let _ = poll(&mut fds, PollTimeout::from(50u16));
                            c.drain(&mut inits, &mut recent);
                        }
                    }
                    let code = recent.of(dead.rs.pid, born);
                    if let Some(d) = ended_init(&root, &dead.ve, &dead.rs, code) {
                        due.push(d);
                    }
                }
                consoles.listen(&root);
                replications.start_due(&root, vectl);
            }
            replications.reap();
            consoles.prune();
            if let Some(p) = passed.take() {
                let ours: Vec<PathBuf> = owned.keys().cloned().collect();
                let left = consoles.notifiers.adopt(&ours, p);
                let left = consoles.adopt(&ours, left);
                if !left.is_empty() {
                    log(&format!(
                        "{} stored descriptors of roots it does not serve are left to the service manager",
                        left.len()
                    ));
                }
                consoles.store.ready();
            }
            next_scan = Instant::now() + RESCAN;
        }
        let now = Instant::now();
        let wake = due
            .iter()
            .map(|d| d.at)
            .chain([next_scan])
            .min()
            .unwrap_or(next_scan);
        let timeout = PollTimeout::try_from(wake.saturating_duration_since(now).as_millis())
            .unwrap_or(PollTimeout::MAX);
        let order: Vec<i32> = inits.keys().copied().collect();
        let (cn_ready, ino_ready, ended, console_ready) = {
            let console_fds = consoles.fds();
            let mut fds = Vec::with_capacity(order.len() + 2);
            let cn_fd = cn.as_ref().map(|c| c.fd.as_fd());
            fds.push(PollFd::new(
                cn_fd.unwrap_or(inotify.as_fd()),
                if cn_fd.is_some() {
                    PollFlags::POLLIN
                } else {
                    PollFlags::empty()
                },
            ));
            fds.push(PollFd::new(inotify.as_fd(), PollFlags::POLLIN));
            for pid in &order {
                fds.push(PollFd::new(inits[pid].pidfd.as_fd(), PollFlags::POLLIN));
            }
            for (fd, _) in &console_fds {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(Error::Sys {
                        what: "poll".into(),
                        source: e,
                    });
                }
            }
            let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
            let ended: Vec<i32> = order
                .iter()
                .zip(&fds[2..])
                .filter(|(_, f)| ready(f))
                .map(|(p, _)| *p)
                .collect();
            let console_ready: Vec<crate::console::Polled> = console_fds
                .iter()
                .zip(&fds[2 + order.len()..])
                .filter(|(_, f)| ready(f))
                .map(|((_, p), _)| p.clone())
                .collect();
            (
                cn.is_some() && ready(&fds[0]),
                ready(&fds[1]),
                ended,
                console_ready,
            )
        };
        // Clients first, from the highest index: removing one keeps the
        // others' indexes.
        let mut console_ready = console_ready;
        console_ready.sort_by_key(|p| match p {
            crate::console::Polled::Client(i) => std::cmp::Reverse(*i),
            _ => std::cmp::Reverse(usize::MAX),
        });
        for p in console_ready {
            consoles.ready(p);
        }
        // Exit statuses first: an init's pidfd and its exit event come together.
        if (cn_ready || !ended.is_empty())
            && let Some(c) = &cn
        {
            c.drain(&mut inits, &mut recent);
        }
        if ino_ready {
            while let Ok(events) = inotify.read_events() {
                if events.is_empty() {
                    break;
                }
            }
            next_scan = Instant::now();
        }
        for pid in ended {
            // The pidfd can wake before the connector's exit event is queued:
            // wait a moment for it rather than take a clean exit for a crash.
            if let Some(c) = &cn {
                let deadline = Instant::now() + Duration::from_millis(300);
                while inits.get(&pid).is_some_and(|w| w.exit_code.is_none())
                    && Instant::now() < deadline
                {
                    let mut fds = [PollFd::new(c.fd.as_fd(), PollFlags::POLLIN)];
                    let _ = poll(&mut fds, PollTimeout::from(50u16));
                    c.drain(&mut inits, &mut recent);
                }
            }
            if let Some(w) = inits.remove(&pid) {
                consoles.ended(&w.root, &w.ve, w.rs.pid);
                if let Some(d) = ended_init(&w.root, &w.ve, &w.rs, w.exit_code) {
                    due.push(d);
                }
            }
        }
        // Restarts whose time has come.
        let now = Instant::now();
        let (ready, later): (Vec<Due>, Vec<Due>) = due.into_iter().partition(|d| d.at <= now);
        due = later;
        for d in ready {
            // An operator's start or stop since then cancels it, and so does
            // a VE of that name that is another one.
            let rec = d.root.join("run").join(format!("{}.exit", d.ve));
            if !rec.exists() || ve_id(&d.root, &d.ve) != Some(d.id) {
                continue;
            }
            log(&format!("VE {} ({}): restarting", d.ve, d.root.display()));
            match std::process::Command::new(vectl)
                .arg("--root")
                .arg(&d.root)
                .args(["start", "--pending-restart", &d.ve])
                .stdin(std::process::Stdio::null())
                .spawn()
            {
                Ok(child) => {
                    starting.insert(child.id(), (d, child));
                }
                Err(e) => log(&format!("VE {}: cannot run {}: {e}", d.ve, vectl.display())),
            }
        }
        starting.retain(|_, (d, child)| match child.try_wait() {
            Ok(None) => true,
            Ok(Some(st)) => {
                if !st.success() {
                    // Tried again later (a lock, the pool, the network may be
                    // busy now), backing off as restarts do.
                    let wait = Duration::from_secs(2u64 << d.attempts.min(16)).min(MAX_BACKOFF);
                    log(&format!(
                        "VE {} ({}): the restart failed ({st}); again in {}s",
                        d.ve,
                        d.root.display(),
                        wait.as_secs()
                    ));
                    due.push(Due {
                        at: Instant::now() + wait,
                        root: d.root.clone(),
                        ve: d.ve.clone(),
                        id: d.id,
                        attempts: d.attempts + 1,
                    });
                }
                next_scan = Instant::now();
                false
            }
            Err(_) => false,
        });
    }
}

/// Takes `root` for this supervisor (`run/supervisor.lock`); `None` when
/// another supervisor has it.
fn take_root(root: &Path) -> Option<fs::File> {
    let path = root.join("run").join("supervisor.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    match f.try_lock() {
        Ok(()) => Some(f),
        Err(_) => {
            log(&format!(
                "{}: another supervisor watches this root",
                root.display()
            ));
            None
        }
    }
}

/// A VE whose init ended before the supervisor held it.
struct Dead {
    ve: String,
    rs: RunState,
}

/// Holds a pidfd for every running VE of `root` not held yet. Returns the VEs
/// whose init ended unseen: started in this boot since the supervisor started
/// (`since`), with no end recorded and no `vectl stop` under way.
fn scan(root: &Path, inits: &mut HashMap<i32, Watched>, since: u64) -> Vec<Dead> {
    let mut dead = Vec::new();
    let run = root.join("run");
    let Ok(entries) = fs::read_dir(&run) else {
        return dead;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(ve) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        let Ok(Some(rs)) = RunState::load(&e.path()) else {
            continue;
        };
        if inits.contains_key(&rs.pid) {
            continue;
        }
        // A pidfd, taken while the recorded init is alive (checked again once
        // open: the pid may have been reused, or the init ended meanwhile).
        let held = if rs.is_alive() {
            sys::pidfd_open(rs.pid).ok().filter(|_| rs.is_alive())
        } else {
            None
        };
        let Some(pidfd) = held else {
            // Its run state recorded moments ago (an init that ended at once,
            // not one a stop or start is about to clean up), nothing recorded
            // of its end, and no stop or unfinished start under way.
            let fresh = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|d| d < FRESH));
            if fresh
                && rs.started_at + 1 >= since
                && rs.boot_id == crate::state::boot_id()
                && !run.join(format!("{ve}.exit")).exists()
                && !run.join(format!("{ve}.stopping")).exists()
            {
                dead.push(Dead {
                    ve: ve.to_string(),
                    rs,
                });
            }
            continue;
        };
        inits.insert(
            rs.pid,
            Watched {
                root: root.to_path_buf(),
                ve: ve.to_string(),
                pidfd,
                rs,
                exit_code: None,
            },
        );
    }
    dead
}

/// An init ended (`code`: its raw status, if the connector said): records
/// how, unless `vectl stop` ended it, and returns the restart its policy asks
/// for.
fn ended_init(root: &Path, ve: &str, init: &RunState, code: Option<u32>) -> Option<Due> {
    let run = root.join("run");
    // `vectl stop` of this very init (a marker a killed stop left behind
    // names another one).
    if fs::read_to_string(run.join(format!("{}.stopping", ve)))
        .is_ok_and(|pid| pid.trim() == init.pid.to_string())
    {
        return None;
    }
    match RunState::load(&run.join(format!("{}.json", ve))) {
        Ok(Some(rs)) if rs.pid == init.pid && rs.start_ticks == init.start_ticks => {}
        _ => return None,
    }
    let (code, signal) = match code {
        Some(raw) if raw & 0x7f != 0 => {
            (None, Some(crate::signal_name((raw & 0x7f).cast_signed())))
        }
        Some(raw) => (Some(((raw >> 8) & 0xff).cast_signed()), None),
        None => (None, None),
    };
    let ran_secs = crate::state::now_secs().saturating_sub(init.started_at);
    let before = if ran_secs < STABLE_SECS {
        init.last_exit.as_ref().map_or(0, |x| x.restarts)
    } else {
        0
    };
    let mut rec = ExitRecord {
        code,
        signal,
        at: crate::state::now_rfc3339(),
        ran_secs,
        restarts: before,
    };
    let policy = VeConfig::load(&root.join("ves").join(format!("{ve}.toml")))
        .ok()
        .flatten()
        .map(|c| c.autostart.restart);
    let Some(policy) = policy else {
        return None; // destroyed meanwhile
    };
    let restart = match policy {
        RestartPolicy::No => false,
        RestartPolicy::OnFailure => rec.failed(),
        RestartPolicy::Always => true,
    };
    let delay = Duration::from_secs(1u64 << before.min(16)).min(MAX_BACKOFF);
    if restart {
        rec.restarts = before + 1;
    }
    let path = run.join(format!("{}.exit", ve));
    if let Err(e) = rec.store(&path) {
        log(&format!("VE {}: cannot record its end: {e}", ve));
    }
    log(&format!(
        "VE {} ({}): {} after {ran_secs}s{}",
        ve,
        root.display(),
        rec.how(),
        if restart {
            format!(", restart {} in {}s", rec.restarts, delay.as_secs())
        } else {
            String::new()
        }
    ));
    let id = ve_id(root, ve)?;
    restart.then(|| Due {
        at: Instant::now() + delay,
        root: root.to_path_buf(),
        ve: ve.to_string(),
        id,
        attempts: 0,
    })
}

/// The soft limit of open files up to the hard one: a pidfd per VE.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The kernel's process connector (linux/cn_proc.h): a netlink socket on
/// which the kernel reports process events, here the exits.
struct ProcConnector {
    fd: OwnedFd,
}

/// Names the host's first network namespace (a file such as
/// `/proc/PID/ns/net`) for a supervisor started in another one.
pub const HOST_NETNS_ENV: &str = "VECTL_HOST_NETNS";

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;

impl ProcConnector {
    /// The connector answers in the host's first network namespace only: a
    /// supervisor run in another one (a test's) makes its socket in that of
    /// PID 1, or of the namespace file [`HOST_NETNS_ENV`] names.
    fn open() -> std::io::Result<ProcConnector> {
        match ProcConnector::open_here() {
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                use nix::sched::{CloneFlags, setns};
                let own = fs::File::open("/proc/self/ns/net")?;
                let path = std::env::var_os(HOST_NETNS_ENV)
                    .map_or_else(|| PathBuf::from("/proc/1/ns/net"), PathBuf::from);
                let host = fs::File::open(&path).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
                setns(&host, CloneFlags::CLONE_NEWNET)?;
                let made = ProcConnector::open_here();
                setns(&own, CloneFlags::CLONE_NEWNET)?;
                made
            }
            made => made,
        }
    }

    fn open_here() -> std::io::Result<ProcConnector> {
        // SAFETY: plain socket(2); the result is checked and owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = CN_IDX_PROC;
        // SAFETY: a valid socket and a sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A big receive buffer: every exit on the host comes through here.
        let size: libc::c_int = 4 << 20;
        // SAFETY: a valid socket and an int option of the size passed.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                std::ptr::addr_of!(size).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + CN_MSG_LEN + 4);
        let total = (NLMSG_HDRLEN + CN_MSG_LEN + 4) as u32;
        msg.extend_from_slice(&total.to_ne_bytes());
        msg.extend_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&std::process::id().to_ne_bytes());
        msg.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // ack
        msg.extend_from_slice(&4u16.to_ne_bytes()); // len
        msg.extend_from_slice(&0u16.to_ne_bytes()); // flags
        msg.extend_from_slice(&PROC_CN_MCAST_LISTEN.to_ne_bytes());
        let sent = nix::unistd::write(&fd, &msg)?;
        if sent != msg.len() {
            return Err(std::io::Error::other(
                "short write to the process connector",
            ));
        }
        Ok(ProcConnector { fd })
    }

    /// Reads every pending event; notes the exit codes of held inits, and
    /// of other processes in `recent`.
    fn drain(&self, inits: &mut HashMap<i32, Watched>, recent: &mut RecentExits) {
        let mut buf = [0u8; 8192];
        loop {
            let n = match nix::unistd::read(self.fd.as_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EAGAIN) => return,
                Ok(n) => n,
                // ENOBUFS: events were lost; go on with those that come.
                Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EINTR) => continue,
                Err(_) => return,
            };
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len = u32_at(&buf, off) as usize;
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                note_exit(&buf[off + NLMSG_HDRLEN..off + len], inits, recent);
                off += (len + 3) & !3;
            }
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// One connector message (a cn_msg and its proc_event).
fn note_exit(msg: &[u8], inits: &mut HashMap<i32, Watched>, recent: &mut RecentExits) {
    let ev = CN_MSG_LEN;
    if msg.len() < ev + 16 + 12 || u32_at(msg, ev) != PROC_EVENT_EXIT {
        return;
    }
    let data = ev + 16;
    let (pid, tgid, code) = (
        u32_at(msg, data).cast_signed(),
        u32_at(msg, data + 4).cast_signed(),
        u32_at(msg, data + 8),
    );
    let at_ns = u64::from(u32_at(msg, ev + 8)) | u64::from(u32_at(msg, ev + 12)) << 32;
    if pid != tgid {
        return;
    }
    match inits.get_mut(&pid) {
        Some(w) => w.exit_code = Some(code),
        None => recent.push(pid, code, at_ns),
    }
}

/// A descriptor taken back from the store: its VE's root, name and init, its
/// stored name, and the descriptor.
pub(crate) type StoredFd = (PathBuf, String, i32, String, OwnedFd);

/// systemd's file descriptor store (`FileDescriptorStoreMax=` in
/// vectl-supervisor.service): what the supervisor holds for running VEs (their
/// consoles' masters, their sysinfo listeners) is also sent there
/// (`FDSTORE=1`), and a supervisor that starts again gets it back
/// (`LISTEN_FDS`) instead of leaving the VEs without them. Each is named
/// `KIND.ROOT.VE.INIT`, ROOT a hash of the root's path (a name holds no `:`
/// and at most 255 characters). Without a service manager (`NOTIFY_SOCKET`
/// unset) nothing is stored.
#[derive(Default)]
pub(crate) struct FdStore(Option<nix::sys::socket::UnixAddr>);

impl FdStore {
    /// The service manager's socket (a path, or `@` and an abstract name).
    pub(crate) fn from_env() -> FdStore {
        use std::os::unix::ffi::OsStrExt;
        let addr = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let b = v.as_bytes();
            match b.strip_prefix(b"@") {
                Some(name) => nix::sys::socket::UnixAddr::new_abstract(name).ok(),
                None if b.starts_with(b"/") => nix::sys::socket::UnixAddr::new(b).ok(),
                None => None,
            }
        });
        FdStore(addr)
    }

    /// The name of what a VE's init `init` holds, of kind `kind`.
    pub(crate) fn name(kind: &str, root: &Path, ve: &str, init: i32) -> String {
        format!("{kind}.{:016x}.{ve}.{init}", path_hash(root))
    }

    /// The root (among `roots`), VE and init a stored name of `kind` names.
    pub(crate) fn parse(
        kind: &str,
        name: &str,
        roots: &[PathBuf],
    ) -> Option<(PathBuf, String, i32)> {
        let rest = name.strip_prefix(kind)?.strip_prefix('.')?;
        let (hash, rest) = rest.split_once('.')?;
        let (ve, init) = rest.rsplit_once('.')?;
        let root = roots
            .iter()
            .find(|r| format!("{:016x}", path_hash(r)) == hash)?;
        Some((root.clone(), ve.to_string(), init.parse().ok()?))
    }

    /// Splits descriptors passed back ([`FdStore::passed`]) into those of
    /// `kind` for VEs of `roots` (root, VE, init, name, descriptor) and the rest.
    pub(crate) fn sort_out(
        kind: &str,
        passed: Vec<(String, OwnedFd)>,
        roots: &[PathBuf],
    ) -> (Vec<StoredFd>, Vec<(String, OwnedFd)>) {
        let (mut mine, mut rest) = (Vec::new(), Vec::new());
        for (name, fd) in passed {
            match FdStore::parse(kind, &name, roots) {
                Some((root, ve, init)) => mine.push((root, ve, init, name, fd)),
                None => rest.push((name, fd)),
            }
        }
        (mine, rest)
    }

    /// Stores `fd` as `name`; with `poll`, systemd drops it by itself when it
    /// hangs up (a listener whose processes are gone), else only when told.
    pub(crate) fn store(&self, name: &str, fd: BorrowedFd<'_>, poll: bool) {
        let msg = format!(
            "FDSTORE=1\nFDNAME={name}{}",
            if poll { "" } else { "\nFDPOLL=0" }
        );
        if self.0.is_some() && !self.send(&msg, Some(fd)) {
            log(&format!(
                "{name}: could not store it with the service manager"
            ));
        }
    }

    /// Drops what is stored as `name`.
    pub(crate) fn remove(&self, name: &str) {
        self.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}"), None);
    }

    /// Tells the service manager the supervisor is ready (`Type=notify`).
    pub(crate) fn ready(&self) {
        self.send("READY=1", None);
    }

    fn send(&self, msg: &str, fd: Option<BorrowedFd<'_>>) -> bool {
        use nix::sys::socket::{
            AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, socket,
        };
        let Some(to) = &self.0 else {
            return false;
        };
        let Ok(sock) = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        ) else {
            return false;
        };
        let raw: Vec<i32> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        sendmsg(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(msg.as_bytes())],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            Some(to),
        )
        .is_ok()
    }

    /// The descriptors the service manager passed to this process
    /// (`LISTEN_FDS`, from fd 3, named by `LISTEN_FDNAMES`), taken once: the
    /// variables leave the environment, and each descriptor becomes
    /// close-on-exec.
    pub(crate) fn passed() -> Vec<(String, OwnedFd)> {
        let var = |k: &str| std::env::var(k).ok();
        let ours =
            var("LISTEN_PID").and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
        let n: i32 = var("LISTEN_FDS").and_then(|n| n.parse().ok()).unwrap_or(0);
        let names = var("LISTEN_FDNAMES").unwrap_or_default();
        for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
            // SAFETY: the supervisor is single-threaded when it starts; nothing
            // else reads the environment meanwhile.
            unsafe { std::env::remove_var(k) };
        }
        if !ours || !(1..=65536).contains(&n) {
            return Vec::new();
        }
        let mut names = names.split(':');
        (3..3 + n)
            .filter_map(|fd| {
                let name = names.next().unwrap_or("").to_string();
                // Only a descriptor that is open is taken.
                // SAFETY: F_SETFD on a number; EBADF if nothing is open there.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
                    return None;
                }
                // SAFETY: the service manager passed this descriptor to us;
                // nothing else in this process owns it.
                Some((name, unsafe { OwnedFd::from_raw_fd(fd) }))
            })
            .collect()
    }
}

/// FNV-1a of a path's bytes: the same in every run of vectl.
fn path_hash(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_event_of_a_held_init_gives_its_code_and_others_are_kept_apart() {
        let (r, _w) = nix::unistd::pipe().unwrap();
        let mut inits = HashMap::new();
        inits.insert(
            4242,
            Watched {
                root: PathBuf::from("/r"),
                ve: "web1".into(),
                pidfd: r,
                rs: RunState {
                    pid: 4242,
                    start_ticks: 1,
                    boot_id: String::new(),
                    started_at: 0,
                    ports: Vec::new(),
                    console: false,
                    sysinfo: false,
                    last_exit: None,
                    proc_view_off: None,
                },
                exit_code: None,
            },
        );
        let event = |what: u32, pid: i32, tgid: i32, code: u32| {
            let mut m = vec![0u8; CN_MSG_LEN];
            m.extend_from_slice(&what.to_ne_bytes());
            m.extend_from_slice(&[0u8; 12]);
            m.extend_from_slice(&pid.to_ne_bytes());
            m.extend_from_slice(&tgid.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0u8; 12]);
            m
        };
        let mut recent = RecentExits::default();
        // A thread of it, another process, a fork event: nothing for it; the
        // other process's status is kept aside, a thread's or a fork's not.
        note_exit(
            &event(PROC_EVENT_EXIT, 4243, 4242, 9),
            &mut inits,
            &mut recent,
        );
        note_exit(&event(PROC_EVENT_EXIT, 77, 77, 9), &mut inits, &mut recent);
        note_exit(&event(1, 4242, 4242, 9), &mut inits, &mut recent);
        assert_eq!(inits[&4242].exit_code, None);
        assert_eq!(recent.of(77, 0), Some(9));
        assert_eq!(recent.of(4243, 0), None);
        note_exit(
            &event(PROC_EVENT_EXIT, 4242, 4242, 3 << 8),
            &mut inits,
            &mut recent,
        );
        assert_eq!(inits[&4242].exit_code, Some(3 << 8));
        assert_eq!(recent.of(4242, 0), None);
        // Bounded: the oldest go first; the newest status of a pid wins.
        for pid in 0..i32::try_from(RECENT_EXITS).unwrap() {
            recent.push(1000 + pid, 0, 5);
        }
        assert_eq!(recent.of(77, 0), None);
        recent.push(1000, 7, 10);
        assert_eq!(recent.of(1000, 0), Some(7));
        // An end before the init started is another process's.
        assert_eq!(recent.of(1001, 6), None);
        assert_eq!(recent.of(1000, 10), Some(7));
    }

    #[test]
    fn stored_names_are_valid_for_systemd_and_name_their_ve() {
        let roots = [PathBuf::from("/var/lib/vectl"), PathBuf::from("/srv/v2")];
        let n = FdStore::name("si", &roots[0], "web-1.a", 42);
        assert!(n.len() <= 255 && !n.contains(':') && n.is_ascii(), "{n}");
        assert_eq!(
            FdStore::parse("si", &n, &roots),
            Some((roots[0].clone(), "web-1.a".to_string(), 42))
        );
        assert_eq!(FdStore::parse("con", &n, &roots), None);
        assert_eq!(FdStore::parse("si", &n, &roots[1..]), None);
        assert_ne!(n, FdStore::name("si", &roots[1], "web-1.a", 42));
        assert_eq!(
            format!("{:016x}", path_hash(Path::new(""))),
            "cbf29ce484222325"
        );
    }

    #[test]
    fn failures_are_told_from_clean_exits() {
        let rec = |code: Option<i32>, signal: Option<&str>| ExitRecord {
            code,
            signal: signal.map(String::from),
            at: String::new(),
            ran_secs: 0,
            restarts: 0,
        };
        assert!(rec(None, Some("SIGKILL")).failed());
        assert!(rec(Some(1), None).failed());
        assert!(!rec(Some(0), None).failed());
        assert!(rec(None, Some("SIGTERM")).failed());
        assert!(rec(None, None).failed(), "an unknown end counts as a crash");
        assert_eq!(rec(Some(3), None).how(), "exit status 3");
    }
}

/// The replications the supervisor runs (`vectl replicate VE`, one process
/// each) on the schedules of its roots (`ROOT/replication/VE.toml` with
/// `every_secs`), checked at each scan.
#[derive(Default)]
struct Replications {
    running: HashMap<(PathBuf, String), std::process::Child>,
}

impl Replications {
    /// Starts the replications of `root` that are due and not running.
    fn start_due(&mut self, root: &Path, vectl: &Path) {
        let dir = root.join("replication");
        let Ok(rd) = fs::read_dir(&dir) else {
            return;
        };
        let now = crate::state::now_secs();
        for e in rd.flatten() {
            let Some(ve) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .filter(|n| crate::config::validate_name(n).is_ok())
                .map(String::from)
            else {
                continue;
            };
            let key = (root.to_path_buf(), ve.clone());
            if self.running.contains_key(&key) {
                continue;
            }
            let every = fs::read_to_string(e.path())
                .ok()
                .and_then(|t| toml::from_str::<crate::replicate::ReplicaSchedule>(&t).ok())
                .and_then(|s| s.every_secs);
            let Some(every) = every else {
                continue;
            };
            let last = fs::read(dir.join(format!("{ve}.json")))
                .ok()
                .and_then(|b| serde_json::from_slice::<crate::replicate::ReplicaRun>(&b).ok())
                .map_or(0, |r| r.at);
            if now < last.saturating_add(every) {
                continue;
            }
            match std::process::Command::new(vectl)
                .arg("--root")
                .arg(root)
                .args(["replicate", &ve])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
            {
                Ok(child) => {
                    self.running.insert(key, child);
                }
                Err(e) => log(&format!("VE {ve}: cannot start its replication: {e}")),
            }
        }
    }

    /// Collects the replications that ended (each records how it went).
    fn reap(&mut self) {
        self.running.retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }
}
