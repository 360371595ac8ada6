//! CRIU for `vectl migrate --live`: a running VE's processes checkpointed on
//! the source (`criu dump`) and restored on the target (`criu restore`) into
//! the cgroups, root and NIC ports vectl prepares there, so its processes go
//! on where they were instead of booting again.
//!
//! Tested in the VM suite (Debian's 6.1 kernel, criu 3.17: `migrate
//! live_migration`); where `criu check` fails, `--live` is refused.
//! What CRIU 3.17 needs:
//! - `--network-lock nftables` (no iptables on a vectl host; 3.17 has no
//!   `skip`), and the lock table `inet CRIU-<pid>` it leaves in the restored
//!   network namespace removed afterwards ([`unlock_network`]);
//! - the VE's bind mounts of LXCFS and devtmpfs files as external mounts found
//!   by CRIU itself (`--ext-mount-map auto`);
//! - the root given with `--root` (the VE's overlay, mounted on the host), and
//!   each NIC as `--external veth[ethN]:PORT` (vectl wires the host port).

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::cgroup::Placement;
use crate::error::{Error, Result as VResult, io_err};
use crate::host::Host;
use crate::state::{self, RunState};
use crate::units::Size;

/// What `criu check` says when CRIU cannot work here, in one line; `Ok` when
/// it can.
pub(crate) fn usable() -> Result<(), String> {
    let out = Command::new("criu")
        .arg("check")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("criu: {e} (apt-get install criu)"))?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    // The first error that says what is missing (not a helper's exit status
    // nor the summary).
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    let first = errors
        .iter()
        .find(|l| !l.contains("util.c") && !l.contains("crtools.c"))
        .or(errors.first())
        .copied()
        .or_else(|| text.lines().next())
        .unwrap_or("no message")
        .trim()
        .to_string();
    Err(format!("`criu check` fails on this kernel: {first}"))
}

/// Options both ends share.
const COMMON: &[&str] = &[
    "--tcp-established",
    "--file-locks",
    "--ext-mount-map",
    "auto",
    "--manage-cgroups=ignore",
    "-v2",
];

/// Checkpoints the process tree of init `pid` into `dir`; its processes are
/// left stopped (SIGSTOP), to be killed once the target runs them or resumed
/// ([`resume`]) if the move fails. The log is `dir/dump.log`.
pub(crate) fn dump(pid: i32, dir: &Path) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let st = Command::new("criu")
        .arg("dump")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-D")
        .arg(dir)
        .args([
            "-o",
            "dump.log",
            "--leave-stopped",
            "--network-lock",
            "nftables",
        ])
        .args(["--enable-external-masters", "--enable-external-sharing"])
        .args(COMMON)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("criu: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!(
            "criu dump: {st}: {}",
            log_error(&dir.join("dump.log"))
        ))
    }
}

/// The first error line of a CRIU log.
fn log_error(log: &Path) -> String {
    fs::read_to_string(log)
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.contains("Error") && !l.contains("tables"))
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| format!("see {}", log.display()))
}

/// Resumes the processes of a VE left stopped by [`dump`] (the move failed):
/// its network unlocked, every process of its cgroup continued.
pub(crate) fn resume(init: i32, procs: &[i32]) {
    let _ = unlock_network(init);
    for p in procs {
        // SAFETY: kill(2) with a pid and a signal number; no memory involved.
        unsafe {
            libc::kill(*p, libc::SIGCONT);
        }
    }
}

/// Removes the `inet CRIU-*` tables CRIU's network lock leaves in the network
/// namespace of `pid`.
pub(crate) fn unlock_network(pid: i32) -> Result<(), String> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| format!("/proc/{pid}/ns/net: {e}"))?;
    let in_ns = |args: &[&str]| -> Result<String, String> {
        let mut c = Command::new("nft");
        c.args(args).stdin(Stdio::null());
        let fd = ns.as_raw_fd();
        let enter = move || {
            // SAFETY: setns(2) on a descriptor that outlives the command; it
            // touches no memory.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook only calls setns(2), async-signal-safe, between
        // fork and exec.
        unsafe {
            c.pre_exec(enter);
        }
        let out = c.output().map_err(|e| format!("nft: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "nft {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let tables = in_ns(&["list", "tables"])?;
    for line in tables.lines() {
        let mut w = line.split_ascii_whitespace().skip(1);
        if let (Some(family), Some(name)) = (w.next(), w.next())
            && name.starts_with("CRIU-")
        {
            in_ns(&["delete", "table", family, name])?;
        }
    }
    Ok(())
}

/// A restore: the images, the VE's root mounted on the host, and its NICs as
/// `(name in the VE, host port to make)`.
pub(crate) struct Restore<'a> {
    pub images: &'a Path,
    pub root: &'a Path,
    pub nics: &'a [(String, String)],
}

/// Restores the tree of `r.images` into the VE's cgroups (`placement`: criu
/// runs there, and what it restores stays there) and returns its init's host
/// pid. The log is `images/restore.log`.
pub(crate) fn restore(r: &Restore<'_>, placement: &Placement) -> Result<i32, String> {
    let pidfile = r.images.join("restored.pid");
    let _ = fs::remove_file(&pidfile);
    let mut c = Command::new("criu");
    c.arg("restore")
        .arg("-D")
        .arg(r.images)
        .arg("--root")
        .arg(r.root)
        .args(["-o", "restore.log", "--restore-detached", "--pidfile"])
        .arg(&pidfile)
        .args(COMMON)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (inside, port) in r.nics {
        c.arg("--external").arg(format!("veth[{inside}]:{port}"));
    }
    join_on_exec(&mut c, placement)?;
    let st = c.status().map_err(|e| format!("criu: {e}"))?;
    if !st.success() {
        return Err(format!(
            "criu restore: {st}: {}",
            log_error(&r.images.join("restore.log"))
        ));
    }
    let text = fs::read_to_string(&pidfile).map_err(|e| format!("{}: {e}", pidfile.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not a pid: {text:?}", pidfile.display()))
}

/// Makes `c` move itself into the VE's cgroups before it execs.
fn join_on_exec(c: &mut Command, placement: &Placement) -> Result<(), String> {
    // Opened now: between fork and exec only raw syscalls run.
    let mut files: Vec<OwnedFd> = Vec::new();
    let open_at = |dir: Option<&OwnedFd>, path: &Path| -> Result<OwnedFd, String> {
        let name = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| format!("{}: a NUL in the path", path.display()))?;
        let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        // SAFETY: openat(2) with a valid C string; the result is checked.
        let fd = unsafe { libc::openat(dirfd, name.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!(
                "{}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: a descriptor just opened and owned by nobody else.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    };
    match placement {
        Placement::CloneInto { dir, .. } => {
            files.push(open_at(Some(dir), Path::new("cgroup.procs"))?)
        }
        Placement::Tasks { join, into, .. } => {
            for t in join {
                files.push(open_at(None, t)?);
            }
            if let Some(d) = into {
                files.push(open_at(Some(d), Path::new("cgroup.procs"))?);
            }
        }
    }
    let raw: Vec<i32> = files.iter().map(AsRawFd::as_raw_fd).collect();
    // The descriptors live as long as the command (moved into the hook).
    let join = move || {
        let _keep = &files;
        for fd in &raw {
            // SAFETY: write(2) of one byte from a static buffer to a
            // descriptor the hook owns.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook calls write(2) only, async-signal-safe, between fork
    // and exec.
    unsafe {
        c.pre_exec(join);
    }
    Ok(())
}

/// Where a VE's checkpoint is kept while it moves: `ROOT/tmp/checkpoint-VE`.
pub(crate) fn images_dir(root: &Path, ve: &str) -> PathBuf {
    root.join("tmp").join(format!("checkpoint-{ve}"))
}

impl Host {
    /// Starts VE `ve` (made here from a migration's files) from the checkpoint
    /// in `images` instead of booting its init: `start` up to the launch, then
    /// `criu restore` into the cgroups, root and ports made for it.
    pub(crate) fn start_from_checkpoint(&self, ve: &str, images: &Path) -> VResult<RunState> {
        let fail = |reason: String| Error::Start {
            ve: ve.to_string(),
            reason,
        };
        self.ensure_nets_up(ve)?;
        let (_host, _lock, mut cfg) = self.lock_for_guarantees(ve, None)?;
        if let Some(rs) = self.alive_state(ve)? {
            return Err(Error::AlreadyRunning {
                ve: ve.to_string(),
                pid: rs.pid,
            });
        }
        if cfg.userns.is_some() {
            return Err(fail(
                "--live: a VE in a user namespace cannot be restored by CRIU yet (its idmapped root)".into(),
            ));
        }
        self.check_unique_id(ve, cfg.id)?;
        self.claim_own(&cfg)?;
        self.finish_move(&mut cfg)?;
        self.clean_up_stopped(ve)?;
        let tref: ve_templates::TemplateRef = cfg.template.parse()?;
        let tv = self
            .store()
            .resolve(&tref)
            .map_err(|e| fail(format!("its template: {e}")))?;
        let vol = self.pool().ve_volume(ve);
        let limits = cfg
            .limits
            .resolve(ve, cfg.id, &self.facts_for(&cfg.limits))?;
        self.admit(ve, &cfg.limits, false)?;
        let nets = self.nets_of(&cfg)?;
        let attachments = self.attachments(&cfg, &nets);
        let cg = self.cgroups()?;
        cg.prepare_parent()?;
        cg.create(ve, &limits)?;
        self.count_io(ve, &limits)?;
        let root = self.mount_dir(ve);
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let lifted = match cfg.limits.disk {
            Some(Size(d)) if self.pool().backend().has_limits() => {
                self.lift_disk_limit(ve)?;
                Some(d)
            }
            _ => None,
        };
        let opts =
            crate::userns::overlay_options(&self.store().path(&tv), &vol.upper(), &vol.work());
        let mounted = nix::mount::mount(
            Some("overlay"),
            &root,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| fail(format!("mount its root at {}: {e}", root.display())));
        let ports: Vec<String> = attachments.iter().map(|a| a.ports[0].clone()).collect();
        let nics: Vec<(String, String)> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| (netns::nic::ve_ifname(i), p.clone()))
            .collect();
        let restored = mounted.and_then(|()| {
            let placement = cg.placement(ve)?;
            let r = Restore {
                images,
                root: &root,
                nics: &nics,
            };
            restore(&r, &placement).map_err(fail)
        });
        // The restored mount namespace holds its own copy of the root.
        let _ = nix::mount::umount2(&root, nix::mount::MntFlags::MNT_DETACH);
        if let Some(d) = lifted {
            let _ = self.put_back_disk_limit(ve, Some(d));
        }
        let pid = match restored {
            Ok(p) => p,
            Err(e) => {
                let _ = self.clean_up_stopped(ve);
                return Err(e);
            }
        };
        let wired = unlock_network(pid).map_err(fail).and_then(|()| {
            netns::link::wire(&attachments, &ports).map_err(|source| Error::Network {
                ve: ve.to_string(),
                source,
            })
        });
        let stat = state::proc_stat(pid).ok_or_else(|| fail("its restored init is gone".into()));
        let recorded = wired.and(stat).and_then(|stat| {
            let rs = RunState {
                pid,
                start_ticks: stat.start_ticks,
                boot_id: state::boot_id(),
                started_at: state::now_secs(),
                ports: ports.clone(),
                console: false,
                sysinfo: false,
                last_exit: None,
                proc_view_off: None,
            };
            rs.store(&self.run_path(ve))?;
            Ok(rs)
        });
        match recorded {
            Ok(rs) => Ok(rs),
            Err(e) => {
                let _ = cg.kill_all(ve);
                let _ = self.clean_up_stopped(ve);
                Err(e)
            }
        }
    }
}
