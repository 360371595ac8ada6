//! VE consoles: each VE's init gets a pseudo-terminal as its stdin, stdout,
//! stderr and /dev/console; the supervisor holds the other end, writes what
//! comes out to a bounded log per VE and lets `vectl console` attach to it.
//!
//! - **At start** vectl opens a pty on the host, connects to the root's
//!   `run/console.sock` (the supervisor listens there for each root it
//!   watches) and, once init runs, hands the master over with SCM_RIGHTS. No
//!   supervisor listening: no pty; the console is /dev/null, as `show` says.
//! - **The log** is `run/NAME.console.log`, at most [`LOG_CAP`] bytes; then
//!   it becomes `NAME.console.log.1` (the one before goes) and a new one
//!   starts. `vectl logs` reads both, without the supervisor.
//! - **Attach**: `vectl console NAME` asks the supervisor over the same
//!   socket; what the VE writes reaches every attached client, what a client
//!   types goes to the VE. Ctrl-] detaches.
//! - **A supervisor restart** under systemd keeps the consoles: each master is
//!   also in the unit's file descriptor store (without FDPOLL: a console lives
//!   while its init does, even when no slave is open for a moment) until the
//!   VE's init ends, and the next supervisor takes it back
//!   ([`Consoles::adopt`]).
//!
//! VE content never names a path here: the log's path is the root's, and the
//! console's bytes are only copied.

use std::collections::HashMap;
use std::fs;
use std::io::{IoSlice, IoSliceMut, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::error::{Error, Result};

/// The largest console log before it is rotated (one older log is kept).
pub const LOG_CAP: u64 = 1 << 20;
/// Ctrl-]: detaches `vectl console`.
pub const DETACH_KEY: u8 = 0x1d;

/// Where the supervisor takes consoles and attach requests for a root.
pub(crate) fn socket_path(root: &Path) -> PathBuf {
    root.join("run").join("console.sock")
}

/// A VE's console log (and `.1`, the one before).
pub(crate) fn log_path(root: &Path, ve: &str) -> PathBuf {
    root.join("run").join(format!("{ve}.console.log"))
}

/// The pty of a starting VE and the supervisor that will hold its master.
pub(crate) struct Console {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// The slave's path on the host (`/dev/pts/N`): the starting VE binds it
    /// as its /dev/console (a bind needs a path of its own mount namespace,
    /// not an fd opened in the host's).
    pub path: PathBuf,
    socket: PathBuf,
}

impl Console {
    /// A console for a VE whose root is host id `owner` (its /dev/console must
    /// be its root's); `None` when no supervisor listens for the root.
    pub(crate) fn open(root: &Path, owner: Option<u32>) -> Option<Console> {
        // Someone listens (the connection goes at once: the supervisor reads
        // each request as it comes, and the hand-over connects again).
        let socket = socket_path(root);
        drop(UnixStream::connect(&socket).ok()?);
        let master = nix::fcntl::open(
            "/dev/pts/ptmx",
            nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .ok()?;
        let slave = crate::sys::pty_peer(master.as_fd()).ok()?;
        let mut n: libc::c_uint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int to the pointer, which is valid.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } < 0 {
            return None;
        }
        let path = PathBuf::from(format!("/dev/pts/{n}"));
        if let Some(id) = owner {
            let (u, g) = (
                Some(nix::unistd::Uid::from_raw(id)),
                Some(nix::unistd::Gid::from_raw(id)),
            );
            nix::unistd::fchown(&slave, u, g).ok()?;
        }
        nix::sys::stat::fchmod(&slave, nix::sys::stat::Mode::from_bits_truncate(0o620)).ok()?;
        Some(Console {
            master,
            slave,
            path,
            socket,
        })
    }

    /// Gives the master to the supervisor, with the init's sysinfo listener
    /// (`sysinfo.rs`) if it has one, and waits until it has them.
    pub(crate) fn hand_over(
        self,
        ve: &str,
        init: i32,
        sysinfo: Option<OwnedFd>,
    ) -> std::result::Result<(), String> {
        // Only the VE holds the slave now: when it stops, the master reads EIO.
        drop(self.slave);
        let mut fds = vec![self.master.as_fd()];
        fds.extend(sysinfo.as_ref().map(|l| l.as_fd()));
        request(
            &self.socket,
            &format!("hand {ve} {init}"),
            &fds,
            "the console",
        )
    }
}

/// Sends the supervisor listening on `socket` a request (`line`) with the
/// descriptors `fds` (`what` they are, for errors) and waits for its answer:
/// `ok`, or `!why`.
pub(crate) fn request(
    socket: &Path,
    line: &str,
    fds: &[BorrowedFd<'_>],
    what: &str,
) -> std::result::Result<(), String> {
    let conn = UnixStream::connect(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    let msg = format!("{line}\n");
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(msg.as_bytes())],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| format!("hand {what} to the supervisor: {e}"))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    match read_line(&conn) {
        Some(l) if l == "ok" => Ok(()),
        Some(l) => Err(l.trim_start_matches('!').to_string()),
        None => Err("the supervisor did not answer".into()),
    }
}

/// Reads one line (without its newline), byte by byte: nothing after it is
/// taken from the stream.
fn read_line(mut s: &UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) if line.len() < 256 => line.push(b[0]),
            _ => return None,
        }
    }
}

/// One console the supervisor holds.
struct Held {
    master: OwnedFd,
    /// A slave of its own: the console lives while the VE's init does, even
    /// when no process of the VE has it open for a moment (systemd reopens
    /// /dev/console as it needs it). It goes with the init ([`Consoles::ended`]).
    _slave: OwnedFd,
    /// The VE's init (host pid).
    init: i32,
    log: fs::File,
    size: u64,
}

/// The supervisor's side: a listener per root, the consoles it holds, the
/// clients attached to them.
#[derive(Default)]
pub(crate) struct Consoles {
    listeners: HashMap<PathBuf, UnixListener>,
    held: HashMap<(PathBuf, String), Held>,
    clients: Vec<((PathBuf, String), UnixStream)>,
    /// The sysinfo listeners of the VEs' processes (`sysinfo.rs`).
    pub notifiers: crate::sysinfo::Notifiers,
    /// Where each console's master is also stored, to outlive a restart of
    /// the supervisor.
    pub store: crate::supervise::FdStore,
}

/// What a descriptor in the supervisor's poll set is.
#[derive(Clone)]
pub(crate) enum Polled {
    Listener(PathBuf),
    Master(PathBuf, String),
    Client(usize),
    Notifier(u64),
}

impl Consoles {
    /// Listens for `root` (again, if its socket went).
    pub(crate) fn listen(&mut self, root: &Path) {
        let path = socket_path(root);
        if self.listeners.contains_key(root) && path.exists() {
            return;
        }
        let _ = fs::remove_file(&path);
        match UnixListener::bind(&path) {
            Ok(l) => {
                let _ = l.set_nonblocking(true);
                let _ =
                    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600));
                self.listeners.insert(root.to_path_buf(), l);
            }
            Err(e) => crate::supervise::log(&format!("{}: {e}", path.display())),
        }
    }

    /// The descriptors to poll, with what each is.
    pub(crate) fn fds(&self) -> Vec<(BorrowedFd<'_>, Polled)> {
        let mut out = Vec::new();
        for (root, l) in &self.listeners {
            out.push((l.as_fd(), Polled::Listener(root.clone())));
        }
        for ((root, ve), h) in &self.held {
            out.push((h.master.as_fd(), Polled::Master(root.clone(), ve.clone())));
        }
        for (i, (_, s)) in self.clients.iter().enumerate() {
            out.push((s.as_fd(), Polled::Client(i)));
        }
        out.extend(
            self.notifiers
                .fds()
                .map(|(fd, k)| (fd, Polled::Notifier(k))),
        );
        out
    }

    /// Handles what made `p` ready.
    pub(crate) fn ready(&mut self, p: Polled) {
        match p {
            Polled::Listener(root) => self.accept(&root),
            Polled::Master(root, ve) => self.output(root, ve),
            Polled::Client(i) => self.input(i),
            Polled::Notifier(k) => self.notifiers.ready(k),
        }
    }

    fn accept(&mut self, root: &Path) {
        let Some(l) = self.listeners.get(root) else {
            return;
        };
        let mut accepted = Vec::new();
        while let Ok((s, _)) = l.accept() {
            accepted.push(s);
        }
        for s in accepted {
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 300];
            let mut cmsg = nix::cmsg_space!([RawFd; 2]);
            let (n, fds) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let Ok(msg) = recvmsg::<()>(
                    s.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) else {
                    continue;
                };
                let fds: Vec<RawFd> = msg
                    .cmsgs()
                    .ok()
                    .into_iter()
                    .flatten()
                    .flat_map(|m| match m {
                        ControlMessageOwned::ScmRights(fds) => fds,
                        _ => Vec::new(),
                    })
                    .collect();
                (msg.bytes, fds)
            };
            // SAFETY: the kernel gave us these descriptors with the message;
            // they are ours alone.
            let mut fds = fds.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) });
            let (fd, second) = (fds.next(), fds.next());
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let Some(line) = text.strip_suffix('\n') else {
                continue;
            };
            let reply = match (line.split_once(' '), fd) {
                (Some(("hand", rest)), Some(master)) => match ve_and_init(rest) {
                    Some((ve, init)) => self.hold(root, ve, master, init, false).and_then(|()| {
                        second.map_or(Ok(()), |l| self.notifiers.hold(root, ve, init, l))
                    }),
                    None => Err("bad request".into()),
                },
                (Some(("sysinfo", rest)), Some(listener)) => match ve_and_init(rest) {
                    Some((ve, init)) => self.notifiers.hold(root, ve, init, listener),
                    None => Err("bad request".into()),
                },
                (Some(("attach", ve)), None) if self.held.contains_key(&key(root, ve)) => {
                    let _ = send_now(s.as_fd(), b"ok\n", true);
                    let _ = s.set_nonblocking(true);
                    self.clients.push((key(root, ve), s));
                    continue;
                }
                (Some(("attach", ve)), None) => Err(format!(
                    "VE {ve}: no console is held for it (it is stopped, or it started while \
                     no supervisor ran: restart it)"
                )),
                _ => Err("bad request".into()),
            };
            let reply = match &reply {
                Ok(()) => "ok\n".to_string(),
                Err(e) => format!("!{e}\n"),
            };
            let _ = send_now(s.as_fd(), reply.as_bytes(), true);
        }
    }

    /// Lets go of the consoles whose init is gone unseen (it ended before
    /// the supervisor held its pidfd).
    pub(crate) fn prune(&mut self) {
        let gone: Vec<(PathBuf, String, i32)> = self
            .held
            .iter()
            .filter(|(_, h)| !Path::new(&format!("/proc/{}", h.init)).exists())
            .map(|((r, v), h)| (r.clone(), v.clone(), h.init))
            .collect();
        for (r, v, init) in gone {
            self.ended(&r, &v, init);
        }
    }

    /// The init `init` of VE `ve` ended: its console goes (not a newer one's).
    pub(crate) fn ended(&mut self, root: &Path, ve: &str, init: i32) {
        let k = key(root, ve);
        if self.held.get(&k).is_some_and(|h| h.init == init) {
            self.drop_console(&k);
        }
    }

    /// Lets go of a console, here and in the service manager's store.
    fn drop_console(&mut self, k: &(PathBuf, String)) {
        if let Some(h) = self.held.remove(k) {
            self.store.remove(&store_name(&k.0, &k.1, h.init));
        }
        self.clients.retain(|(ck, _)| ck != k);
    }

    /// Takes back the consoles an earlier supervisor stored, of VEs of
    /// `roots` whose init still runs; a stored one of an init that is gone
    /// is dropped from the store. Returns the other descriptors.
    pub(crate) fn adopt(
        &mut self,
        roots: &[PathBuf],
        passed: Vec<(String, OwnedFd)>,
    ) -> Vec<(String, OwnedFd)> {
        let (mine, left) = crate::supervise::FdStore::sort_out("con", passed, roots);
        for (root, ve, init, name, fd) in mine {
            // Its init still runs: the one the VE's run state names, with the
            // start time recorded there (not a later process of that pid).
            let run = root.join("run").join(format!("{ve}.json"));
            let alive = crate::state::RunState::load(&run)
                .ok()
                .flatten()
                .is_some_and(|rs| {
                    rs.pid == init
                        && crate::state::proc_stat(init)
                            .is_some_and(|s| s.alive() && s.start_ticks == rs.start_ticks)
                });
            if !alive || self.hold(&root, &ve, fd, init, true).is_err() {
                self.store.remove(&name);
            }
        }
        left
    }

    /// Holds VE `ve`'s console master; `adopted`: from an earlier supervisor
    /// (stored already).
    fn hold(
        &mut self,
        root: &Path,
        ve: &str,
        master: OwnedFd,
        init: i32,
        adopted: bool,
    ) -> std::result::Result<(), String> {
        let slave = crate::sys::pty_peer(master.as_fd()).map_err(|e| format!("pty peer: {e}"))?;
        let path = log_path(root, ve);
        let mut log = open_log(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let size = log.metadata().map_or(0, |m| m.len());
        let mark = if adopted {
            format!(
                "\n-- vectl: the supervisor took VE {ve}'s console back at {} --\n",
                crate::state::now_rfc3339()
            )
        } else {
            // Kept while the init lives, even with no slave open for a moment
            // (no FDPOLL): dropped from the store when the init ends.
            self.store
                .store(&store_name(root, ve, init), master.as_fd(), false);
            format!(
                "\n-- vectl: VE {ve} started at {} --\n",
                crate::state::now_rfc3339()
            )
        };
        let _ = log.write_all(mark.as_bytes());
        let _ = nix::fcntl::fcntl(
            &master,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        // A restarted VE's new console replaces the old one; its clients stay.
        if let Some(old) = self.held.get(&key(root, ve))
            && old.init != init
        {
            self.store.remove(&store_name(root, ve, old.init));
        }
        self.held.insert(
            key(root, ve),
            Held {
                master,
                _slave: slave,
                init,
                log,
                size: size + mark.len() as u64,
            },
        );
        Ok(())
    }

    fn output(&mut self, root: PathBuf, ve: String) {
        let k = (root, ve);
        let mut buf = [0u8; 65536];
        let Some(h) = self.held.get_mut(&k) else {
            return;
        };
        match nix::unistd::read(h.master.as_fd(), &mut buf) {
            Ok(n) if n > 0 => {
                let data = &buf[..n];
                if h.size + n as u64 > LOG_CAP {
                    let path = log_path(&k.0, &k.1);
                    let _ = fs::rename(&path, path.with_extension("log.1"));
                    if let Ok(l) = open_log(&path) {
                        h.log = l;
                        h.size = 0;
                    }
                }
                if h.log.write_all(data).is_ok() {
                    h.size += n as u64;
                }
                // A client that cannot take it now is dropped: it must never
                // hold up the supervisor, which serves every VE.
                self.clients
                    .retain(|(ck, s)| *ck != k || send_now(s.as_fd(), data, true));
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
            // EIO cannot come while the supervisor holds a slave; any other
            // error ends the console.
            _ => self.drop_console(&k),
        }
    }

    fn input(&mut self, i: usize) {
        let Some((k, s)) = self.clients.get(i) else {
            return;
        };
        let mut buf = [0u8; 4096];
        let keep = match nix::unistd::read(s.as_fd(), &mut buf) {
            Ok(0) => false,
            // Input the VE does not read now is dropped, not waited for.
            Ok(n) => {
                if let Some(h) = self.held.get(k) {
                    let _ = send_now(h.master.as_fd(), &buf[..n], false);
                }
                true
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => true,
            Err(_) => false,
        };
        if !keep {
            self.clients.remove(i);
        }
    }
}

/// Sends `data` to a socket or pty without waiting and without SIGPIPE:
/// `false` if not all of it went (a slow or gone reader).
fn send_now(fd: BorrowedFd<'_>, mut data: &[u8], socket: bool) -> bool {
    while !data.is_empty() {
        let n = if socket {
            nix::sys::socket::send(
                fd.as_raw_fd(),
                data,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
            )
        } else {
            nix::unistd::write(fd, data)
        };
        match n {
            Ok(n) if n > 0 => data = &data[n..],
            Err(nix::errno::Errno::EINTR) => {}
            _ => return false,
        }
    }
    true
}

/// The name a console's master is stored under: `con.ROOT.VE.INIT`.
fn store_name(root: &Path, ve: &str, init: i32) -> String {
    crate::supervise::FdStore::name("con", root, ve, init)
}

/// `VE INIT` of a request: a valid VE name and a pid.
fn ve_and_init(rest: &str) -> Option<(&str, i32)> {
    let (ve, init) = rest.split_once(' ')?;
    crate::validate_name(ve).ok()?;
    Some((ve, init.parse().ok()?))
}

fn key(root: &Path, ve: &str) -> (PathBuf, String) {
    (root.to_path_buf(), ve.to_string())
}

fn open_log(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// `vectl console`: attaches this terminal to the VE's console until Ctrl-],
/// the end of input, or the VE's stop.
pub(crate) fn attach(root: &Path, ve: &str) -> Result<()> {
    let refused = |reason: String| Error::ve(ve, reason);
    let s = UnixStream::connect(socket_path(root)).map_err(|e| {
        refused(format!(
            "no console to attach to: the supervisor is not running for this root \
             (vectl supervise; {e})"
        ))
    })?;
    // The supervisor may go away: its socket's EPIPE must not kill us with
    // the terminal in raw mode.
    // SAFETY: changing a signal disposition of this short-lived client.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    (&s).write_all(format!("attach {ve}\n").as_bytes())
        .map_err(|e| refused(format!("ask the supervisor: {e}")))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    match read_line(&s) {
        Some(l) if l == "ok" => {}
        Some(l) => {
            return Err(refused(
                l.trim_start_matches('!')
                    .trim_start_matches(&format!("VE {ve}: "))
                    .to_string(),
            ));
        }
        None => return Err(refused("the supervisor did not answer".into())),
    }
    let _ = s.set_read_timeout(None);
    let stdin = std::io::stdin();
    let tty = nix::unistd::isatty(stdin.as_fd()).unwrap_or(false);
    if tty {
        eprintln!("Attached to the console of VE {ve}; Ctrl-] detaches.\r");
    }
    let _raw = tty.then(crate::exec::RawMode::enter);
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            nix::poll::PollFd::new(stdin.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(s.as_fd(), nix::poll::PollFlags::POLLIN),
        ];
        if nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE).is_err() {
            continue;
        }
        let ready = |f: &nix::poll::PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        if ready(&fds[1]) {
            match nix::unistd::read(s.as_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut out = std::io::stdout();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
            }
        }
        if ready(&fds[0]) {
            match nix::unistd::read(stdin.as_fd(), &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = &buf[..n];
                    let (send, detach) = match data.iter().position(|b| *b == DETACH_KEY) {
                        Some(at) => (&data[..at], true),
                        None => (data, false),
                    };
                    if !crate::exec::write_all_fd(s.as_fd(), send) || detach {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// `vectl logs`: the VE's console log (the rotated one first), its last
/// `lines` lines if given, then with `follow` what comes until interrupted.
pub(crate) fn logs(
    root: &Path,
    ve: &str,
    lines: Option<usize>,
    follow: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let path = log_path(root, ve);
    let old = fs::read(path.with_extension("log.1")).unwrap_or_default();
    let mut file = fs::File::open(&path).ok();
    let mut cur = Vec::new();
    if let Some(f) = &mut file {
        let _ = f.read_to_end(&mut cur);
    }
    let mut all = old;
    all.extend_from_slice(&cur);
    let start = match lines {
        None => 0,
        Some(n) => {
            let mut seen = 0;
            let mut at = all.len();
            let body = all.strip_suffix(b"\n").unwrap_or(&all);
            for (i, b) in body.iter().enumerate().rev() {
                if *b == b'\n' {
                    seen += 1;
                    if seen == n {
                        at = i + 1;
                        break;
                    }
                }
            }
            if seen < n { 0 } else { at }
        }
    };
    out.write_all(&all[start..])
        .map_err(|e| Error::ve(ve, format!("write: {e}")))?;
    let _ = out.flush();
    if !follow {
        return Ok(());
    }
    let mut pos = cur.len() as u64;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        // Rotated: the new file from its start.
        let rotated = match (&file, fs::metadata(&path)) {
            (Some(f), Ok(m)) => f.metadata().is_ok_and(|fm| {
                std::os::unix::fs::MetadataExt::ino(&fm) != std::os::unix::fs::MetadataExt::ino(&m)
            }),
            (None, Ok(_)) => true,
            _ => false,
        };
        if rotated {
            file = fs::File::open(&path).ok();
            pos = 0;
        }
        if let Some(f) = &mut file {
            let mut more = Vec::new();
            if f.seek(SeekFrom::Start(pos)).is_ok()
                && f.read_to_end(&mut more).is_ok()
                && !more.is_empty()
            {
                pos += more.len() as u64;
                if out.write_all(&more).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
            }
        }
    }
}
