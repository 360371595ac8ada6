//! The container side of an OCI container: what its init does between clone
//! and exec, and what a process entering it (`exec`) does, both from a
//! [`Plan`] the runtime prepared while it could still return errors.
//!
//! The rootfs is the image's, so hostile: every mount target and device node
//! in it is found with `openat2(RESOLVE_IN_ROOT)` below the rootfs and mounted
//! on through `/proc/self/fd`, so a planted symlink never leads out of it.
//! Sources of bind mounts are the engine's host paths (the config is the
//! engine's, trusted). Masked and read-only paths are applied after
//! `pivot_root`, when the container's root is the only root there is.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::unistd::{Gid, Uid};
use rustix::fs::{Mode as RMode, OFlags, ResolveFlags};

use super::seccomp::Program;
use crate::sys;

type R<T = ()> = std::result::Result<T, String>;

fn sys_err<E: std::fmt::Display>(what: impl std::fmt::Display) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// One mount of the config.
#[derive(Debug, Clone)]
pub(crate) struct MountPlan {
    pub dest: PathBuf,
    pub source: Option<PathBuf>,
    pub fstype: Option<String>,
    pub flags: MsFlags,
    /// Flags for the read-only (and the like) remount of a bind.
    pub remount: Option<MsFlags>,
    pub propagation: Option<MsFlags>,
    pub data: String,
    pub bind: bool,
    /// A `cgroup` mount: the container's own cgroup directories (host paths)
    /// and the names they take below the mount point; empty name = the
    /// mount point itself (cgroup v2).
    pub cgroups: Vec<(String, PathBuf)>,
}

/// A device node to make.
#[derive(Debug, Clone)]
pub(crate) struct DevicePlan {
    pub path: PathBuf,
    pub kind: libc::mode_t,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The capability sets of the process.
#[derive(Debug, Clone, Default)]
pub(crate) struct CapPlan {
    pub bounding: caps::CapsHashSet,
    pub effective: caps::CapsHashSet,
    pub permitted: caps::CapsHashSet,
    pub inheritable: caps::CapsHashSet,
    pub ambient: caps::CapsHashSet,
}

/// The process to run: the container's init, or one entering it.
#[derive(Debug)]
pub(crate) struct ProcPlan {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub caps: CapPlan,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub no_new_privs: bool,
    pub oom_score_adj: Option<i32>,
    pub seccomp: Option<Program>,
    /// A terminal: the connected console socket its master goes to.
    pub console: Option<RawFd>,
    pub console_size: Option<(u16, u16)>,
    /// `PATH` of its environment, for finding `argv[0]`.
    pub path: String,
}

/// What the container's init sets up.
#[derive(Debug)]
pub(crate) struct Plan {
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub root_propagation: MsFlags,
    pub mounts: Vec<MountPlan>,
    pub devices: Vec<DevicePlan>,
    pub masked: Vec<PathBuf>,
    pub readonly: Vec<PathBuf>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    pub sysctl: Vec<(String, String)>,
    pub userns: bool,
    pub process: ProcPlan,
    /// createContainer hooks (run in the container's namespaces before
    /// pivot_root) and startContainer hooks (after `start`, before exec):
    /// path, argv, env.
    pub create_hooks: Vec<HookPlan>,
    pub start_hooks: Vec<HookPlan>,
    pub state_json: Vec<u8>,
    /// exec.fifo, opened O_PATH by the runtime.
    pub fifo: RawFd,
    /// File descriptors 3.. the engine passes on (`--preserve-fds`).
    pub preserve_fds: i32,
}

#[derive(Debug, Clone)]
pub(crate) struct HookPlan {
    pub path: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
}

/// Opens `rel` (a path inside the rootfs) below `root`, creating what is
/// missing: directories on the way, and the last component as a directory or
/// an empty file. Symlinks (dangling ones too) resolve as if the rootfs were
/// `/`, as the container will see them; the final open refuses any symlink, so
/// a link swapped in meanwhile fails the mount instead of leading out.
fn target(root: &OwnedFd, rel: &Path, dir: bool) -> R<OwnedFd> {
    let mut path: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut path, rel);
    for _ in 0..40 {
        match walk(root, &path, dir)? {
            Walked::Done(fd) => return Ok(fd),
            Walked::Link { at, to } => {
                let mut next: Vec<std::ffi::OsString> = if to.is_absolute() {
                    Vec::new()
                } else {
                    path[..at].to_vec()
                };
                push_components(&mut next, &to);
                next.extend(path[at + 1..].iter().cloned());
                path = next;
            }
        }
    }
    Err(format!(
        "{} in the rootfs: too many levels of symbolic links",
        rel.display()
    ))
}

/// Appends `p`'s components to `out`, `..` taking one off (never above `/`).
fn push_components(out: &mut Vec<std::ffi::OsString>, p: &Path) {
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
}

enum Walked {
    Done(OwnedFd),
    /// Component `at` is a symlink to `to`.
    Link {
        at: usize,
        to: PathBuf,
    },
}

fn walk(root: &OwnedFd, path: &[std::ffi::OsString], dir: bool) -> R<Walked> {
    let strict = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
    let open = |p: &Path, flags: OFlags| {
        rustix::fs::openat2(
            root.as_fd(),
            p,
            flags | OFlags::CLOEXEC,
            RMode::empty(),
            strict,
        )
    };
    let mut sofar = PathBuf::from("/");
    for (i, name) in path.iter().enumerate() {
        let parent = open(&sofar, OFlags::PATH | OFlags::DIRECTORY)
            .map_err(sys_err(format!("open {} in the rootfs", sofar.display())))?;
        sofar.push(name);
        match rustix::fs::statat(parent.as_fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st)
                if rustix::fs::FileType::from_raw_mode(st.st_mode)
                    == rustix::fs::FileType::Symlink =>
            {
                let to = rustix::fs::readlinkat(parent.as_fd(), name, Vec::new()).map_err(
                    sys_err(format!("readlink {} in the rootfs", sofar.display())),
                )?;
                let to = PathBuf::from(std::ffi::OsString::from_vec(to.into_bytes()));
                return Ok(Walked::Link { at: i, to });
            }
            Ok(_) => continue,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(format!("stat {} in the rootfs: {e}", sofar.display())),
        }
        let made = if i + 1 == path.len() && !dir {
            rustix::fs::openat(
                parent.as_fd(),
                name,
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                RMode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(parent.as_fd(), name, RMode::from_raw_mode(0o755))
        };
        match made {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(format!("create {} in the rootfs: {e}", sofar.display())),
        }
    }
    open(&sofar, OFlags::PATH)
        .map(Walked::Done)
        .map_err(sys_err(format!("open {} in the rootfs", sofar.display())))
}

fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn do_mount(
    src: Option<&Path>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: &str,
    what: &Path,
) -> R {
    let data = (!data.is_empty()).then_some(data);
    mount(src, target, fstype, flags, data).map_err(sys_err(format!("mount {}", what.display())))
}

impl Plan {
    /// Runs in the cloned init. Returns only on failure, with the message for
    /// the runtime (before the report is sent) or for stderr (after).
    /// `report` is taken (and closed) once the setup is reported done.
    pub(crate) fn run(
        &self,
        go: OwnedFd,
        report: &mut Option<OwnedFd>,
    ) -> R<std::convert::Infallible> {
        let mut go = fs::File::from(go);
        if self.userns {
            let mut b = [0u8; 1];
            if !matches!(go.read(&mut b), Ok(1)) {
                sys::exit_now(0);
            }
            crate::userns::become_root().map_err(|e| e.to_string())?;
        }
        drop(go);
        nix::unistd::setsid().map_err(sys_err("setsid"))?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | self.root_propagation,
            None::<&str>,
        )
        .map_err(sys_err("set the mount propagation of /"))?;
        // The rootfs becomes a mount of its own (pivot_root wants one).
        mount(
            Some(&self.rootfs),
            &self.rootfs,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys_err(format!(
            "bind the rootfs {}",
            self.rootfs.display()
        )))?;
        let root: OwnedFd = rustix::fs::open(
            &self.rootfs,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            RMode::empty(),
        )
        .map_err(sys_err(format!(
            "open the rootfs {}",
            self.rootfs.display()
        )))?;
        for m in &self.mounts {
            self.mount_one(&root, m)?;
        }
        self.make_devices(&root)?;
        if let Some(h) = &self.hostname {
            nix::unistd::sethostname(h).map_err(sys_err("set the hostname"))?;
        }
        if let Some(d) = &self.domainname {
            // SAFETY: a valid buffer and its length.
            let rc = unsafe { libc::setdomainname(d.as_ptr().cast(), d.len()) };
            if rc != 0 {
                return Err(format!(
                    "set the domain name: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        for h in &self.create_hooks {
            run_hook(h, &self.state_json)?;
        }
        nix::unistd::fchdir(&root).map_err(sys_err("chdir to the rootfs"))?;
        nix::unistd::pivot_root(".", ".").map_err(sys_err("pivot_root"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(sys_err("detach the host's root"))?;
        nix::unistd::chdir("/").map_err(sys_err("chdir /"))?;
        drop(root);
        for (key, value) in &self.sysctl {
            let p = format!("/proc/sys/{}", key.replace('.', "/"));
            fs::write(&p, value).map_err(sys_err(format!("sysctl {key}")))?;
        }
        for p in &self.masked {
            mask(p)?;
        }
        for p in &self.readonly {
            if fs::symlink_metadata(p).is_ok() {
                bind_ro(p)?;
            }
        }
        if self.readonly_root {
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(sys_err("make the root read-only"))?;
        }
        let exe = self.process.prepare()?;
        // Set up: the runtime may return. Then wait for `start`.
        if let Some(fd) = report.take() {
            fs::File::from(fd)
                .write_all(&[0])
                .map_err(sys_err("report to the runtime"))?;
        }
        let fifo = format!("/proc/self/fd/{}", self.fifo);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .map_err(sys_err("open exec.fifo"))?;
        f.write_all(b"0").map_err(sys_err("write exec.fifo"))?;
        drop(f);
        // SAFETY: the fifo's O_PATH fd is ours and used no more.
        drop(unsafe { OwnedFd::from_raw_fd(self.fifo) });
        for h in &self.start_hooks {
            run_hook(h, &self.state_json)?;
        }
        self.process.set_oom_score_adj()?;
        self.process.confine()?;
        self.process.exec(&exe)
    }

    fn mount_one(&self, root: &OwnedFd, m: &MountPlan) -> R {
        if !m.cgroups.is_empty() {
            return self.mount_cgroups(root, m);
        }
        let src_is_dir = match (&m.source, m.bind) {
            (Some(s), true) => fs::metadata(s)
                .map_err(sys_err(format!("bind source {}", s.display())))?
                .is_dir(),
            _ => true,
        };
        let t = target(root, &m.dest, src_is_dir)?;
        let tp = fd_path(&t);
        if m.bind {
            let src = m.source.as_deref().unwrap_or(Path::new("none"));
            do_mount(Some(src), &tp, None, m.flags, "", &m.dest)?;
            if let Some(re) = m.remount {
                // A bind takes its flags on a remount (reopened: the fd
                // names the directory below the new mount).
                let t = target(root, &m.dest, src_is_dir)?;
                do_mount(
                    None,
                    &fd_path(&t),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | re,
                    "",
                    &m.dest,
                )?;
            }
        } else {
            let src = m.source.as_deref().unwrap_or(Path::new("none"));
            do_mount(
                Some(src),
                &tp,
                m.fstype.as_deref(),
                m.flags,
                &m.data,
                &m.dest,
            )?;
        }
        if let Some(p) = m.propagation {
            let t = target(root, &m.dest, src_is_dir)?;
            do_mount(None, &fd_path(&t), None, p, "", &m.dest)?;
        }
        Ok(())
    }

    /// A `cgroup` mount: the container's own cgroups, nothing of the host's.
    fn mount_cgroups(&self, root: &OwnedFd, m: &MountPlan) -> R {
        let ro = m.flags.contains(MsFlags::MS_RDONLY);
        let hard = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let single = m.cgroups.len() == 1 && m.cgroups[0].0.is_empty();
        if !single {
            let t = target(root, &m.dest, true)?;
            do_mount(
                Some(Path::new("tmpfs")),
                &fd_path(&t),
                Some("tmpfs"),
                hard,
                "mode=755",
                &m.dest,
            )?;
        }
        for (name, dir) in &m.cgroups {
            let dest = if name.is_empty() {
                m.dest.clone()
            } else {
                m.dest.join(name)
            };
            let t = target(root, &dest, true)?;
            do_mount(Some(dir), &fd_path(&t), None, MsFlags::MS_BIND, "", &dest)?;
            if ro {
                let t = target(root, &dest, true)?;
                do_mount(
                    None,
                    &fd_path(&t),
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hard,
                    "",
                    &dest,
                )?;
            }
        }
        if ro && !single {
            let t = target(root, &m.dest, true)?;
            do_mount(
                None,
                &fd_path(&t),
                None,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hard,
                "mode=755",
                &m.dest,
            )?;
        }
        Ok(())
    }

    fn make_devices(&self, root: &OwnedFd) -> R {
        let mut all: Vec<DevicePlan> = crate::launch::STANDARD_DEVICES
            .iter()
            .map(|(n, major, minor)| DevicePlan {
                path: Path::new("/dev").join(n),
                kind: libc::S_IFCHR,
                major: *major,
                minor: *minor,
                mode: 0o666,
                uid: 0,
                gid: 0,
            })
            .collect();
        all.extend(self.devices.iter().cloned());
        for d in &all {
            let parent = d.path.parent().unwrap_or(Path::new("/"));
            let name = d
                .path
                .file_name()
                .ok_or_else(|| format!("device path {}", d.path.display()))?;
            let dir = target(root, parent, true)?;
            // An O_PATH fd cannot be a mknodat dirfd: reopen it as a directory.
            let dir = rustix::fs::openat(
                dir.as_fd(),
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                RMode::empty(),
            )
            .map_err(sys_err(format!("open {}", parent.display())))?;
            let _ = rustix::fs::unlinkat(dir.as_fd(), name, rustix::fs::AtFlags::empty());
            if self.userns {
                // No device nodes in a user namespace: the host's node at the
                // same path, bound, if it is the device the spec names.
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let host = d.path.clone();
                let md = fs::metadata(&host).map_err(|e| format!("{}: {e}", host.display()))?;
                let same_kind = match d.kind {
                    libc::S_IFBLK => md.file_type().is_block_device(),
                    libc::S_IFIFO => md.file_type().is_fifo(),
                    _ => md.file_type().is_char_device(),
                };
                let rdev = nix::sys::stat::makedev(d.major.into(), d.minor.into());
                if !same_kind || (d.kind != libc::S_IFIFO && md.rdev() != rdev) {
                    return Err(format!(
                        "device {}: the host's is not {}:{}",
                        host.display(),
                        d.major,
                        d.minor
                    ));
                }
                rustix::fs::openat(
                    dir.as_fd(),
                    name,
                    OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    RMode::from_raw_mode(0o644),
                )
                .map_err(sys_err(format!("create {}", d.path.display())))?;
                let t = target(root, &d.path, false)?;
                do_mount(
                    Some(&host),
                    &fd_path(&t),
                    None,
                    MsFlags::MS_BIND,
                    "",
                    &d.path,
                )?;
                continue;
            }
            let kind = if d.kind == libc::S_IFBLK {
                rustix::fs::FileType::BlockDevice
            } else if d.kind == libc::S_IFIFO {
                rustix::fs::FileType::Fifo
            } else {
                rustix::fs::FileType::CharacterDevice
            };
            rustix::fs::mknodat(
                dir.as_fd(),
                name,
                kind,
                RMode::from_raw_mode(d.mode & 0o7777),
                rustix::fs::makedev(d.major, d.minor),
            )
            .map_err(sys_err(format!("mknod {}", d.path.display())))?;
            rustix::fs::chownat(
                dir.as_fd(),
                name,
                Some(rustix::fs::Uid::from_raw(d.uid)),
                Some(rustix::fs::Gid::from_raw(d.gid)),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(sys_err(format!("chown {}", d.path.display())))?;
            // mknod honours the umask; the mode asked for is the mode.
            rustix::fs::chmodat(
                dir.as_fd(),
                name,
                RMode::from_raw_mode(d.mode & 0o7777),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(sys_err(format!("chmod {}", d.path.display())))?;
        }
        let dev = target(root, Path::new("/dev"), true)?;
        let dev = rustix::fs::openat(
            dev.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            RMode::empty(),
        )
        .map_err(sys_err("open /dev"))?;
        for (link, to) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ] {
            match rustix::fs::symlinkat(to, dev.as_fd(), link) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(format!("symlink /dev/{link}: {e}")),
            }
        }
        Ok(())
    }
}

/// Covers a path: a directory with an empty read-only tmpfs, anything else
/// with /dev/null. A path that is not there is left alone.
fn mask(p: &Path) -> R {
    let Ok(md) = fs::symlink_metadata(p) else {
        return Ok(());
    };
    if md.is_dir() {
        do_mount(
            Some(Path::new("tmpfs")),
            &p.to_string_lossy(),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            "size=0,mode=555",
            p,
        )
    } else {
        do_mount(
            Some(Path::new("/dev/null")),
            &p.to_string_lossy(),
            None,
            MsFlags::MS_BIND,
            "",
            p,
        )
    }
}

fn bind_ro(p: &Path) -> R {
    let s = p.to_string_lossy();
    do_mount(Some(p), &s, None, MsFlags::MS_BIND | MsFlags::MS_REC, "", p)?;
    do_mount(
        None,
        &s,
        None,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        "",
        p,
    )
}

/// Runs a hook with the container's state on its stdin and waits for it.
pub(crate) fn run_hook(h: &HookPlan, state: &[u8]) -> R {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys_err("pipe"))?;
    match sys::clone3(0, None).map_err(sys_err("fork a hook"))? {
        sys::Forked::Child => {
            drop(w);
            let _ = nix::unistd::dup2_stdin(&r);
            let _ = nix::unistd::execve(&h.path, &h.argv, &h.env);
            sys::exit_now(127);
        }
        sys::Forked::Parent { pid, .. } => {
            drop(r);
            let _ = fs::File::from(w).write_all(state);
            let st = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            match st {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                other => Err(format!("hook {}: {other:?}", h.path.to_string_lossy())),
            }
        }
    }
}

impl ProcPlan {
    /// What can fail visibly before the process is released: the terminal,
    /// the working directory, the executable. Returns the executable's path.
    pub(crate) fn prepare(&self) -> R<CString> {
        if let Some(sock) = self.console {
            self.terminal(sock)?;
        }
        nix::unistd::chdir(&self.cwd).map_err(sys_err(format!("chdir {}", self.cwd.display())))?;
        let arg0 = self.argv.first().ok_or("process.args is empty")?;
        let name = arg0.to_string_lossy().into_owned();
        if name.contains('/') {
            return Ok(arg0.clone());
        }
        for dir in self.path.split(':').filter(|d| !d.is_empty()) {
            let cand = Path::new(dir).join(&name);
            if let Ok(md) = fs::metadata(&cand)
                && md.is_file()
            {
                return CString::new(cand.into_os_string().into_encoded_bytes())
                    .map_err(|_| "a NUL byte in the executable's path".to_string());
            }
        }
        Err(format!("exec: {name}: executable file not found in $PATH"))
    }

    /// A new pty of the container's devpts: its master goes to the engine over
    /// the console socket, its slave becomes stdio and the controlling tty.
    fn terminal(&self, sock: RawFd) -> R {
        // A session of its own, whose controlling tty the slave becomes (the
        // init has one already).
        let _ = nix::unistd::setsid();
        let master =
            nix::pty::posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
                .map_err(sys_err("open /dev/ptmx"))?;
        nix::pty::grantpt(&master).map_err(sys_err("grantpt"))?;
        nix::pty::unlockpt(&master).map_err(sys_err("unlockpt"))?;
        let slave = sys::pty_peer(master.as_fd()).map_err(sys_err("open the pty's slave"))?;
        if let Some((rows, cols)) = self.console_size {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            sys::set_winsize(slave.as_fd(), &ws);
        }
        // SAFETY: the socket fd was kept open for this and is owned here.
        let sock = unsafe { OwnedFd::from_raw_fd(sock) };
        sys::send_fd(sock.as_fd(), master.as_fd())
            .map_err(sys_err("send the pty to the console socket"))?;
        drop(sock);
        drop(master);
        nix::unistd::dup2_stdin(&slave).map_err(sys_err("stdin"))?;
        nix::unistd::dup2_stdout(&slave).map_err(sys_err("stdout"))?;
        nix::unistd::dup2_stderr(&slave).map_err(sys_err("stderr"))?;
        sys::set_controlling_tty(slave.as_fd()).map_err(sys_err("set the controlling tty"))?;
        Ok(())
    }

    /// The process's OOM score adjustment (inherited by its children). For
    /// `exec`, written before the helper joins the container's mount
    /// namespace: its /proc/self is not there (the helper is outside the
    /// container's PID namespace until it forks).
    pub(crate) fn set_oom_score_adj(&self) -> R {
        if let Some(adj) = self.oom_score_adj {
            fs::write("/proc/self/oom_score_adj", adj.to_string())
                .map_err(sys_err("oom_score_adj"))?;
        }
        Ok(())
    }

    /// Limits, identity, capabilities and seccomp: what the process runs
    /// under, all set before it may exec (for `exec`, before it is forked
    /// into the container's PID namespace; its OOM score comes earlier,
    /// [`ProcPlan::set_oom_score_adj`]).
    pub(crate) fn confine(&self) -> R {
        for (res, soft, hard) in &self.rlimits {
            let lim = libc::rlimit {
                rlim_cur: *soft,
                rlim_max: *hard,
            };
            // SAFETY: a valid rlimit for a resource number of the spec.
            if unsafe { libc::setrlimit(*res, &lim) } != 0 {
                return Err(format!(
                    "setrlimit {res}: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        if self.no_new_privs {
            // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
            }
        } else if let Some(p) = &self.seccomp {
            // Without no_new_privs the filter needs CAP_SYS_ADMIN, which goes below.
            super::seccomp::install(p)?;
        }
        // The bounding set first: dropping from it needs CAP_SETPCAP, which
        // a process that becomes another user loses from its effective set.
        let c = &self.caps;
        for cap in caps::all() {
            if !c.bounding.contains(&cap) {
                caps::drop(None, caps::CapSet::Bounding, cap)
                    .map_err(sys_err(format!("drop {cap} from the bounding set")))?;
            }
        }
        // Keep the permitted set across the change of uid, then set it.
        // SAFETY: PR_SET_KEEPCAPS takes plain integers.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
        let gids: Vec<Gid> = self.groups.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&gids).map_err(sys_err("setgroups"))?;
        let g = Gid::from_raw(self.gid);
        nix::unistd::setresgid(g, g, g).map_err(sys_err(format!("setgid {}", self.gid)))?;
        let u = Uid::from_raw(self.uid);
        nix::unistd::setresuid(u, u, u).map_err(sys_err(format!("setuid {}", self.uid)))?;
        let set = |s: caps::CapSet, v: &caps::CapsHashSet| {
            caps::set(None, s, v).map_err(sys_err(format!("set the {s:?} capabilities")))
        };
        set(
            caps::CapSet::Effective,
            &c.effective.union(&c.permitted).cloned().collect(),
        )?;
        set(caps::CapSet::Permitted, &c.permitted)?;
        set(caps::CapSet::Inheritable, &c.inheritable)?;
        set(caps::CapSet::Effective, &c.effective)?;
        caps::clear(None, caps::CapSet::Ambient)
            .map_err(sys_err("clear the ambient capabilities"))?;
        for cap in &c.ambient {
            caps::raise(None, caps::CapSet::Ambient, *cap)
                .map_err(sys_err(format!("raise ambient {cap}")))?;
        }
        if let Some(m) = self.umask {
            nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(m as libc::mode_t));
        }
        if self.no_new_privs
            && let Some(p) = &self.seccomp
        {
            super::seccomp::install(p)?;
        }
        Ok(())
    }

    /// Execs the process (confined already). Returns only on failure.
    pub(crate) fn exec(&self, exe: &CString) -> R<std::convert::Infallible> {
        sys::reset_signals();
        let e = match nix::unistd::execve(exe, &self.argv, &self.env) {
            Ok(never) => match never {},
            Err(e) => e,
        };
        Err(format!("exec {}: {e}", exe.to_string_lossy()))
    }
}
