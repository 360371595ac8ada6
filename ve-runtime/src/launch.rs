//! Starting a VE's init: one clone3 into new user (unless privileged), mount,
//! PID, UTS, IPC, network and cgroup namespaces (and into the VE's cgroup),
//! then, in the child: the overlay root, /proc, read-only /sys, a minimal /dev,
//! the hostname, pivot_root, the capability and seccomp restrictions, and exec
//! of init.
//!
//! With a user namespace the child first waits for its root: vectl writes its
//! uid and gid maps and mounts the idmapped layers and the overlay in
//! the child's mount namespace ([`crate::userns::mount_root`]); then the child
//! becomes root of its namespace and goes on. Device nodes cannot be made in a
//! user namespace: the VE's /dev gets bind mounts of the host's harmless ones.
//!
//! Parent and child talk over two pipes. The child does all of its setup at once
//! and then waits on `go`; the parent wires what must be wired from outside (the
//! network, the runtime state file) and writes `go`. The child reports a failure as
//! a message on `err`; a successful exec closes `err` (close-on-exec), which is how
//! the parent learns the VE is up. If the parent dies before `go`, the child reads
//! end-of-file and exits, so a killed `vectl start` never leaves a half-made VE.

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod, umask};
use nix::unistd::{chdir, execve, pivot_root, sethostname, setsid};

use crate::cgroup::Placement;
use crate::error::{Error, Result};
use crate::security::{self, Confinement, Profile};
use crate::step::{Step, StepError, failed, step};
use crate::sys::{self, Forked};
use crate::userns::{self, IdRange};

/// Everything the child needs, prepared by the parent before clone.
#[derive(Debug)]
pub(crate) struct Spec {
    pub ve: String,
    pub lower: PathBuf,
    /// The VE's volume: `upper` and `work` in it.
    pub volume: PathBuf,
    pub mountpoint: PathBuf,
    /// The VE's id range; `None` = privileged (no user namespace).
    pub userns: Option<IdRange>,
    pub hostname: String,
    pub init: Vec<String>,
    /// The LXCFS whose files go over /proc's (`procview.rs`); `None` = the
    /// kernel's.
    pub proc_view: Option<crate::procview::Lxcfs>,
    /// The console pty's slave (`console.rs`), open, and its path on the
    /// host: init's stdio and /dev/console; `None` = /dev/null.
    pub console: Option<(RawFd, PathBuf)>,
    /// sysinfo(2) in the VE goes to the supervisor (`sysinfo.rs`).
    pub sysinfo: bool,
}

/// A started init.
#[derive(Debug)]
pub(crate) struct Started {
    pub pid: i32,
    pub pidfd: OwnedFd,
    /// The seccomp listener for its sysinfo(2) calls ([`Spec::sysinfo`]),
    /// for the supervisor; set once init runs.
    pub sysinfo: Option<OwnedFd>,
}

const NS_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u64;

/// The character devices every VE's /dev holds (and every OCI container's,
/// as runc's): name, major, minor.
pub(crate) const STANDARD_DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The environment a VE's init starts with.
pub(crate) const INIT_ENV: &[&str] = &[
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "TERM=linux",
    "container=vectl",
];

fn cstr(s: impl AsRef<OsStr>) -> Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| Error::Nul(s.as_ref().to_string_lossy().into_owned()))
}

/// Starts the VE's init. `wire` runs in the parent once the child exists and
/// before it may exec (network setup, state file); if it fails, the child is
/// killed and the error returned.
pub(crate) fn start(
    spec: &Spec,
    placement: Placement,
    wire: &mut dyn FnMut(&Started) -> Result<()>,
) -> Result<Started> {
    let fail = |reason: String| Error::Start {
        ve: spec.ve.clone(),
        reason,
    };
    let profile = Profile::of(spec.userns);
    let confinement = Confinement::new(profile)
        .map_err(|e| fail(e.to_string()))?
        .with_sysinfo(spec.sysinfo);
    // A privileged child mounts its overlay itself; with a user namespace
    // vectl does, in the child's mount namespace (userns::mount_root).
    let overlay_opts = match profile {
        Profile::Privileged => Some(cstr(userns::overlay_options(
            &spec.lower,
            &spec.volume.join("upper"),
            &spec.volume.join("work"),
        ))?),
        Profile::Userns => None,
    };
    let argv: Vec<CString> = spec.init.iter().map(cstr).collect::<Result<_>>()?;
    if argv.is_empty() {
        return Err(fail("the init command is empty".into()));
    }
    let env: Vec<CString> = INIT_ENV.iter().map(cstr).collect::<Result<_>>()?;
    debug_assert!(
        sys::single_threaded(),
        "clone3 needs a single-threaded vectl"
    );

    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| fail(format!("pipe: {e}")))?;
    let (err_r, err_w) = sys::report_channel().map_err(|e| fail(format!("socketpair: {e}")))?;

    let (cgroup_fd, back) = match placement {
        Placement::CloneInto { dir, .. } => (Some(dir), Vec::new()),
        Placement::Tasks { join, back, into } => {
            move_self(&join).map_err(|e| fail(format!("join the VE's cgroup: {e}")))?;
            (into, back)
        }
    };
    let flags = match profile {
        Profile::Userns => NS_FLAGS | libc::CLONE_NEWUSER as u64,
        Profile::Privileged => NS_FLAGS,
    };
    let forked = sys::clone3(flags, cgroup_fd.as_ref().map(|f| f.as_fd()));
    let forked = match forked {
        Ok(f) => f,
        Err(e) => {
            let _ = move_self(&back);
            return Err(fail(format!("clone3: {e}")));
        }
    };
    let (pid, pidfd) = match forked {
        Forked::Child => {
            drop(go_w);
            drop(err_r);
            drop(cgroup_fd);
            // Before any path of the VE is looked up (its /proc/self/fd/N/.. would
            // lead back to whatever host directory an open fd names).
            let mut keep = vec![go_r.as_raw_fd(), err_w.as_raw_fd()];
            keep.extend(spec.console.as_ref().map(|c| c.0));
            if let Err(e) = sys::close_fds_except(&keep) {
                let mut w = fs::File::from(err_w);
                let _ = w.write_all(format!("close inherited descriptors: {e}").as_bytes());
                sys::exit_now(1);
            }
            let child = ChildSetup {
                spec,
                overlay_opts: overlay_opts.as_deref(),
                argv: &argv,
                env: &env,
                confinement: &confinement,
            };
            let msg = match child.run(go_r, err_w.as_fd()) {
                Ok(never) => match never {},
                Err(msg) => msg,
            };
            let mut w = fs::File::from(err_w);
            let _ = w.write_all(msg.to_string().as_bytes());
            sys::exit_now(1);
        }
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(go_r);
    drop(err_w);
    let mut started = Started {
        pid,
        pidfd,
        sysinfo: None,
    };
    let mut err_r = Some(err_r);
    // Kills the child and reports why: its own message if it wrote one (it failed
    // first), else the parent's error.
    let mut abort = |e: Error| {
        let _ = sys::pidfd_send_signal(started.pidfd.as_fd(), libc::SIGKILL);
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
        let msg = err_r
            .take()
            .map(|r| sys::read_reports(r.as_fd()).0)
            .unwrap_or_default();
        if msg.is_empty() { e } else { fail(msg) }
    };
    if let Err(e) = move_self(&back) {
        return Err(abort(fail(format!("leave the VE's cgroup: {e}"))));
    }
    let mut go = fs::File::from(go_w);
    if let Some(range) = spec.userns {
        let layers = userns::RootLayers {
            lower: &spec.lower,
            volume: &spec.volume,
            mountpoint: &spec.mountpoint,
            range,
        };
        let mounted = userns::write_maps(started.pid, range)
            .map_err(|e| fail(format!("map its ids: {e}")))
            .and_then(|()| {
                userns::mount_root(started.pidfd.as_fd(), started.pid, &layers).map_err(fail)
            })
            .and_then(|()| {
                sys::write_to_child(&mut go, b"r").map_err(|e| fail(format!("release init: {e}")))
            });
        if let Err(e) = mounted {
            return Err(abort(e));
        }
    }
    crate::failpoint::hit("start-after-clone");
    if let Err(e) = wire(&started) {
        return Err(abort(e));
    }
    crate::failpoint::hit("start-before-go");
    if let Err(e) = sys::write_to_child(&mut go, b"g") {
        return Err(abort(fail(format!("release init: {e}"))));
    }
    drop(go);
    let (msg, fds) = err_r
        .take()
        .map(|r| sys::read_reports(r.as_fd()))
        .unwrap_or_default();
    started.sysinfo = fds.into_iter().next();
    if !msg.is_empty() {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(started.pid), None);
        return Err(fail(msg));
    }
    Ok(started)
}

/// Makes every mount of the caller's (new) mount namespace private, so that
/// nothing mounted in it reaches the host's.
pub(crate) fn make_mounts_private() -> Step {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step(|| "make mounts private".into()))
}

/// Moves the calling thread into the cgroups whose `tasks` files are given.
pub(crate) fn move_self(tasks: &[PathBuf]) -> std::io::Result<()> {
    for t in tasks {
        fs::OpenOptions::new()
            .write(true)
            .open(t)
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", t.display())))?;
    }
    Ok(())
}

struct ChildSetup<'a> {
    spec: &'a Spec,
    /// The overlay's options when the child mounts it (privileged).
    overlay_opts: Option<&'a std::ffi::CStr>,
    argv: &'a [CString],
    env: &'a [CString],
    confinement: &'a Confinement,
}

impl ChildSetup<'_> {
    /// Runs in the child: sets up the VE's root and execs init. Returns only on
    /// failure, with the message for the parent.
    fn run(&self, go: OwnedFd, report: BorrowedFd<'_>) -> Step<std::convert::Infallible> {
        let mut go = fs::File::from(go);
        if self.overlay_opts.is_none() {
            // Wait for the maps and the root; the parent gone = nobody will
            // ever track this VE.
            let mut byte = [0u8; 1];
            if !matches!(go.read(&mut byte), Ok(1)) {
                sys::exit_now(0);
            }
            userns::become_root()?;
        }
        umask(Mode::empty());
        setsid().map_err(step(|| "setsid".into()))?;
        let root = match self.overlay_opts {
            // vectl, mounting the root, made this namespace's mounts private
            // already.
            None => userns::root_dir(&self.spec.mountpoint),
            Some(opts) => {
                make_mounts_private()?;
                let root = self.spec.mountpoint.clone();
                mount(
                    Some("overlay"),
                    &root,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts),
                )
                .map_err(step(|| {
                    format!("mount the overlay root at {}", root.display())
                }))?;
                root
            }
        };
        let root = &root;
        self.mount_proc(root)?;
        ensure_dir(&root.join("sys"), 0o555)?;
        mount(
            Some("sysfs"),
            &root.join("sys"),
            Some("sysfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(step(|| "mount /sys".into()))?;
        let firmware = root.join("sys/firmware");
        if firmware.is_dir() {
            hide(&firmware, true)?;
        }
        if let Some(lxcfs) = &self.spec.proc_view {
            crate::procview::bind_at_start(lxcfs, root)?;
        }
        self.mount_dev(root)?;
        sethostname(&self.spec.hostname).map_err(step(|| "set the hostname".into()))?;
        chdir(root).map_err(step(|| format!("chdir {}", root.display())))?;
        pivot_root(".", ".").map_err(step(|| "pivot_root".into()))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(step(|| "detach the host's root".into()))?;
        chdir("/").map_err(step(|| "chdir /".into()))?;

        // Init's stdio: the console, or /dev/null without one.
        let stdio = match &self.spec.console {
            // SAFETY: the slave is open in this process (kept through
            // close_fds_except) and owned by nothing else here.
            Some((fd, _)) => unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(*fd) },
            None => nix::fcntl::open("/dev/null", nix::fcntl::OFlag::O_RDWR, Mode::empty())
                .map_err(step(|| "open /dev/null".into()))?,
        };
        nix::unistd::dup2_stdin(&stdio).map_err(step(|| "redirect stdin".into()))?;
        nix::unistd::dup2_stdout(&stdio).map_err(step(|| "redirect stdout".into()))?;
        nix::unistd::dup2_stderr(&stdio).map_err(step(|| "redirect stderr".into()))?;
        if stdio.as_raw_fd() > 2 {
            drop(stdio);
        } else {
            std::mem::forget(stdio);
        }

        // Wait for the parent: network wired, state recorded.
        let mut byte = [0u8; 1];
        match go.read(&mut byte) {
            Ok(1) => {}
            // The parent is gone: nobody will ever track this VE. Leave quietly.
            _ => sys::exit_now(0),
        }
        drop(go);

        sys::reset_signals();
        umask(Mode::from_bits_truncate(0o022));
        if let Some(listener) = security::confine(self.confinement)? {
            sys::send_fd(report, listener.as_fd())
                .map_err(step(|| "hand on the sysinfo listener".into()))?;
        }
        let e = match execve(&self.argv[0], self.argv, self.env) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        let init = self.argv[0].to_string_lossy();
        Err(match e {
            nix::Error::ENOENT => StepError::Refused(format!(
                "init {init}: not found in the VE (give `--init CMD` or use a template with {init})"
            )),
            nix::Error::EACCES => StepError::Refused(format!("init {init}: not executable")),
            e => failed(format!("exec init {init}"), e),
        })
    }

    fn mount_proc(&self, root: &Path) -> Step {
        let proc_dir = root.join("proc");
        ensure_dir(&proc_dir, 0o555)?;
        let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(Some("proc"), &proc_dir, Some("proc"), hard, None::<&str>)
            .map_err(step(|| "mount /proc".into()))?;
        // Kernel-wide knobs stay read-only; the VE's own network namespace's stay
        // writable.
        bind_self(&proc_dir.join("sys"), hard | MsFlags::MS_RDONLY)?;
        bind_self(&proc_dir.join("sys/net"), hard)?;
        for ro in READ_ONLY_PROC {
            let p = proc_dir.join(ro);
            if p.exists() {
                bind_self(&p, hard | MsFlags::MS_RDONLY)?;
            }
        }
        // Host facts a VE has no business reading.
        for hidden in HIDDEN_PROC {
            let p = proc_dir.join(hidden);
            if let Ok(md) = fs::symlink_metadata(&p) {
                hide(&p, md.is_dir())?;
            }
        }
        Ok(())
    }

    fn mount_dev(&self, root: &Path) -> Step {
        let dev = root.join("dev");
        ensure_dir(&dev, 0o755)?;
        mount(
            Some("tmpfs"),
            &dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("mode=755,size=1024k,nr_inodes=4096"),
        )
        .map_err(step(|| "mount /dev".into()))?;
        for &(name, major, minor) in STANDARD_DEVICES {
            let p = dev.join(name);
            if self.spec.userns.is_some() {
                // No device nodes in a user namespace: the host's own, bound.
                let host = Path::new("/dev").join(name);
                let md = fs::metadata(&host).map_err(step(|| format!("{}", host.display())))?;
                let want = makedev(major.into(), minor.into());
                if !md.file_type().is_char_device() || md.rdev() != want {
                    return Err(StepError::Refused(format!(
                        "the host's {} is not the device {major}:{minor}",
                        host.display()
                    )));
                }
                fs::File::create(&p).map_err(step(|| format!("create /dev/{name}")))?;
                mount(
                    Some(&host),
                    &p,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(step(|| format!("bind /dev/{name}")))?;
                continue;
            }
            mknod(
                &p,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major.into(), minor.into()),
            )
            .map_err(step(|| format!("mknod /dev/{name}")))?;
        }
        // /dev/console: the host's console must stay out of reach: the VE's
        // own pty (its slave, open here), or /dev/null without one.
        let console = dev.join("console");
        fs::File::create(&console).map_err(step(|| "create /dev/console".into()))?;
        let source = match &self.spec.console {
            Some((_, path)) => path.clone(),
            None => dev.join("null"),
        };
        mount(
            Some(&source),
            &console,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(step(|| "bind /dev/console".into()))?;
        let pts = dev.join("pts");
        ensure_dir(&pts, 0o755)?;
        mount(
            Some("devpts"),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        )
        .map_err(step(|| "mount /dev/pts".into()))?;
        symlink("pts/ptmx", &dev.join("ptmx"))?;
        for (dir, fstype, opts) in [
            ("shm", "tmpfs", Some("mode=1777,size=65536k")),
            ("mqueue", "mqueue", None),
        ] {
            let p = dev.join(dir);
            ensure_dir(&p, 0o755)?;
            mount(
                Some(fstype),
                &p,
                Some(fstype),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                opts,
            )
            .map_err(step(|| format!("mount /dev/{dir}")))?;
        }
        for (link, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            symlink(target, &dev.join(link))?;
        }
        Ok(())
    }
}

/// /proc entries that are bound read-only in a VE (besides /proc/sys): they
/// configure the host's hardware and kernel.
const READ_ONLY_PROC: &[&str] = &["sysrq-trigger", "bus", "fs", "irq"];

/// /proc entries hidden from a VE (files become /dev/null, directories empty).
const HIDDEN_PROC: &[&str] = &[
    "kcore",
    "keys",
    "slabinfo",
    "timer_list",
    "sched_debug",
    "latency_stats",
    "acpi",
    "scsi",
];

/// Covers a path: a file with /dev/null, a directory with an empty read-only tmpfs.
fn hide(p: &Path, is_dir: bool) -> Step {
    if is_dir {
        mount(
            Some("tmpfs"),
            p,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=555"),
        )
        .map_err(step(|| format!("hide {}", p.display())))
    } else {
        mount(
            Some("/dev/null"),
            p,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(step(|| format!("hide {}", p.display())))
    }
}

fn ensure_dir(p: &Path, mode: u32) -> Step {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(StepError::Refused(format!(
            "{} in the VE is not a directory",
            p.display()
        ))),
        Err(_) => {
            fs::create_dir_all(p).map_err(step(|| format!("create {}", p.display())))?;
            fs::set_permissions(p, fs::Permissions::from_mode(mode))
                .map_err(step(|| format!("chmod {}", p.display())))
        }
    }
}

fn symlink(target: &str, link: &Path) -> Step {
    std::os::unix::fs::symlink(target, link).map_err(step(|| format!("symlink {}", link.display())))
}

/// Bind-mounts a path onto itself with `flags` (read-only and the like).
fn bind_self(p: &Path, flags: MsFlags) -> Step {
    mount(Some(p), p, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(step(|| format!("bind {}", p.display())))?;
    mount(
        None::<&str>,
        p,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    )
    .map_err(step(|| format!("remount {}", p.display())))
}
