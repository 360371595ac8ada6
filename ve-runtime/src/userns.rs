//! User namespaces: every VE (but a `--privileged` one) runs in a user
//! namespace of its own, mapped to a range of host ids nothing else uses, and
//! sees its files through idmapped mounts.
//!
//! **Ranges.** A VE's range is `DEFAULT_COUNT` (65536) host ids from a base in
//! [`FIRST_ID`, `END_ID`): the upper part of the block systemd documents for
//! container ranges, away from the host's users. The range is recorded in the
//! VE's config (`[userns] base, count`) and claimed in the root's `userns/`
//! ([`crate::claims`]): the claims of all roots of the host together are the
//! ledger, like /etc/subuid (a root without claims is read from its configs).
//! A new range is the lowest free one, skipping every range of this and every
//! other registered root and the ranges in /etc/subuid and /etc/subgid; a
//! destroyed VE's range is free again once its claim is gone. Ranges are
//! picked under the registry's lock, so two roots creating at once never pick
//! the same.
//!
//! **Files stay unshifted.** Template versions and a VE's own layer keep the ids
//! a plain system has on disk (root is 0); nothing is chowned per VE. At start
//! both are attached to the VE's mount namespace as idmapped mounts (disk id N
//! is host id base+N, which the VE's user namespace shows as N), and overlayfs
//! is mounted over them by vectl, in the host's user namespace, with the VE's
//! root's host id as its file-system id: overlayfs creates the VE's files (copy
//! up, whiteouts, its work directory) with the mounter's credentials, through
//! the idmapped upper layer, so they land on disk as the VE's root (0) without
//! vectl's own root (host id 0, which the range does not map) ever being asked
//! for. Mounted in the host's user namespace, overlayfs keeps its `trusted.`
//! attributes, so a VE's own layer is the same on disk with or without a user
//! namespace: moving a VE into one (`set --userns private`) or out of it
//! changes no file. Every VE of a template reads the template's one inode of a
//! file, so the page cache holds it once.
//!
//! The mounts are made by vectl in the VE's new mount namespace before the
//! VE's init has done anything there: it joins that namespace for the moment
//! (with the VE root's host id as file-system id for the overlay mount) and
//! returns to its own namespace, working directory and ids at once.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::fsutil::Lock;
use crate::host::Host;
use crate::roots::Registry;
use crate::step::{Step, StepError, step};

/// Host ids per VE unless told otherwise.
pub const DEFAULT_COUNT: u32 = 65536;
/// The first host id a VE's range may start at.
pub const FIRST_ID: u32 = 0x4000_0000;
/// The end (exclusive) of the ids VE ranges are taken from.
pub const END_ID: u32 = 0x7000_0000;

/// A VE's range of host ids: ids 0..count inside are base..base+count outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdRange {
    pub base: u32,
    pub count: u32,
}

impl IdRange {
    /// One past the last host id of the range.
    pub fn end(self) -> u64 {
        u64::from(self.base) + u64::from(self.count)
    }

    /// Whether two ranges share an id.
    pub fn overlaps(self, other: IdRange) -> bool {
        u64::from(self.base) < other.end() && u64::from(other.base) < self.end()
    }

    /// The line of a uid_map or gid_map.
    pub(crate) fn map_line(self) -> String {
        format!("0 {} {}\n", self.base, self.count)
    }

    /// The host id of id `inside` of the VE.
    pub fn host_id(self, inside: u32) -> u32 {
        self.base + inside
    }
}

impl fmt::Display for IdRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.base, self.end() - 1)
    }
}

/// The lowest free range of `count` ids in [`FIRST_ID`, `END_ID`), aligned to
/// 65536, that overlaps none of `used`.
pub(crate) fn pick(used: &[IdRange], count: u32) -> Option<IdRange> {
    const ALIGN: u64 = 65536;
    if count == 0 {
        return None;
    }
    let mut used = used.to_vec();
    used.sort();
    let mut base = u64::from(FIRST_ID);
    loop {
        let end = base + u64::from(count);
        if end > u64::from(END_ID) {
            return None;
        }
        let candidate = IdRange {
            base: u32::try_from(base).ok()?,
            count,
        };
        match used.iter().find(|u| u.overlaps(candidate)) {
            None => return Some(candidate),
            Some(u) => base = u.end().div_ceil(ALIGN) * ALIGN,
        }
    }
}

/// The ranges /etc/subuid and /etc/subgid give to the host's users.
pub(crate) fn host_subids() -> Vec<IdRange> {
    let mut out = Vec::new();
    for file in ["/etc/subuid", "/etc/subgid"] {
        let Ok(text) = fs::read_to_string(file) else {
            continue;
        };
        out.extend(parse_subids(&text));
    }
    out
}

fn parse_subids(text: &str) -> Vec<IdRange> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (_, base, count) = (f.next()?, f.next()?, f.next()?);
            Some(IdRange {
                base: base.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            })
        })
        .collect()
}

impl Host {
    /// A free range of host ids for VE `ve`'s user namespace. The registry's
    /// lock comes with it: hold it until the VE's config is written, so that
    /// no other root picks the same range meanwhile (a registry that cannot
    /// be locked does not stop the create).
    pub(crate) fn allocate_ids(&self, ve: &str) -> Result<(IdRange, Option<Lock>)> {
        let lock = Registry::open().lock().ok();
        let claimed = |c: &crate::claims::Claims| -> Result<Vec<IdRange>> {
            Ok(c.keys()?
                .iter()
                .filter_map(|k| crate::claims::parse_range_key(k))
                .collect())
        };
        let mine = crate::claims::Claims::new(self.root().join("userns"));
        // Another root's claims, or its configs if it has none (made by a
        // vectl before claims).
        let mut elsewhere = host_subids();
        for other in self.others() {
            let theirs = crate::claims::Claims::new(other.root.join("userns"));
            if theirs.built() {
                elsewhere.extend(claimed(&theirs)?);
            } else {
                elsewhere.extend(other.ves().into_iter().filter_map(|c| c.userns));
            }
        }
        let mut used = if mine.built() {
            claimed(&mine)?
        } else {
            self.configs()?
                .into_iter()
                .filter_map(|c| c.userns)
                .collect()
        };
        used.extend_from_slice(&elsewhere);
        let mut range = pick(&used, DEFAULT_COUNT);
        if range.is_none() && mine.built() {
            // Full: the claims here that a killed command left are freed.
            let key = crate::claims::range_key;
            let mut used: Vec<IdRange> = claimed(&mine)?
                .into_iter()
                .filter(|r| {
                    self.claim_blocks(&mine, &key(*r), ve, |c| c.userns == Some(*r))
                        .is_some()
                })
                .collect();
            used.extend(elsewhere);
            range = pick(&used, DEFAULT_COUNT);
        }
        let range = range.ok_or_else(|| {
            Error::ve(
                ve,
                format!(
                    "no free range of {DEFAULT_COUNT} host ids is left for its user namespace \
                     ({FIRST_ID}-{} are taken; destroy VEs or create it with --privileged)",
                    END_ID - 1
                ),
            )
        })?;
        Ok((range, lock))
    }
}

impl Host {
    /// See [`crate::Ves::set_userns`].
    pub(crate) fn set_userns(&self, name_or_id: &str, private: bool) -> Result<Option<IdRange>> {
        let ve = self.resolve_existing(name_or_id)?;
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        if let Some(rs) = self.alive_state(&ve)? {
            return Err(Error::ve(
                &ve,
                format!(
                    "running (init pid {}): its user namespace changes only while it is stopped",
                    rs.pid
                ),
            ));
        }
        match (private, cfg.userns) {
            (true, Some(r)) => return Ok(Some(r)),
            (false, None) => return Ok(None),
            (true, None) => {
                let upper = self.pool().ve_volume(&ve).upper();
                if let Some((path, id)) = id_beyond(&upper, DEFAULT_COUNT)
                    .map_err(|e| Error::ve(&ve, format!("{}: {e}", upper.display())))?
                {
                    return Err(Error::ve(
                        &ve,
                        format!(
                            "{} in its own files is owned by id {id}, which a user namespace \
                             of {DEFAULT_COUNT} ids cannot map (chown it below {DEFAULT_COUNT} \
                             first)",
                            path.display()
                        ),
                    ));
                }
                let (range, _ids) = self.allocate_ids(&ve)?;
                let claims = self.range_claims()?;
                let key = crate::claims::range_key(range);
                claims.take(&key, &ve)?;
                cfg.userns = Some(range);
                if let Err(e) = cfg.store(&self.config_path(&ve)) {
                    // Refused: the range goes back (stale, it would block it
                    // here and in every other root until a sweep).
                    let _ = claims.release(&key, &ve);
                    return Err(e);
                }
            }
            (false, Some(r)) => {
                cfg.userns = None;
                cfg.store(&self.config_path(&ve))?;
                crate::claims::Claims::new(self.root().join("userns"))
                    .release(&crate::claims::range_key(r), &ve)?;
            }
        }
        Ok(cfg.userns)
    }
}

/// The first file under `dir` (not following symlinks) whose owner or group
/// is `limit` or more, with that id.
fn id_beyond(dir: &Path, limit: u32) -> std::io::Result<Option<(PathBuf, u32)>> {
    use std::os::unix::fs::MetadataExt;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let md = e.metadata()?;
            if let Some(id) = [md.uid(), md.gid()].into_iter().find(|&i| i >= limit) {
                return Ok(Some((
                    e.path()
                        .strip_prefix(dir)
                        .unwrap_or(&e.path())
                        .to_path_buf(),
                    id,
                )));
            }
            if md.is_dir() {
                todo.push(e.path());
            }
        }
    }
    Ok(None)
}

/// Writes a child's uid and gid maps (vectl holds CAP_SETUID and CAP_SETGID on
/// the host, so setgroups stays allowed in the VE).
pub(crate) fn write_maps(pid: i32, range: IdRange) -> Result<()> {
    for file in ["uid_map", "gid_map"] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(range.map_line().as_bytes()))
            .map_err(io_err(&path))?;
    }
    Ok(())
}

/// What the VE's root is made of.
#[derive(Debug)]
pub(crate) struct RootLayers<'a> {
    /// The template version (overlay lower layer).
    pub lower: &'a Path,
    /// The VE's volume: `upper` and `work` in it.
    pub volume: &'a Path,
    /// The directory the staging mounts and the root go on.
    pub mountpoint: &'a Path,
    pub range: IdRange,
}

/// Where the VE's root is mounted below its mountpoint (in its own mount
/// namespace only).
pub(crate) fn root_dir(mountpoint: &Path) -> PathBuf {
    mountpoint.join("root")
}

/// Mounts the VE's root in the mount namespace of the child `ve` (pid `pid`),
/// which has not touched it yet: its template and volume as idmapped mounts on
/// a private tmpfs at the mountpoint, and overlayfs over them at
/// [`root_dir`]. vectl joins that namespace for the moment and comes back to
/// its own (and its working directory and file-system ids) before it returns,
/// whatever happened: no helper process to fork and wait for, which was most of
/// what a user namespace added to a start. Needs a single-threaded vectl
/// (setns of a mount namespace does), as the clone before it does.
pub(crate) fn mount_root(
    ve: BorrowedFd<'_>,
    pid: i32,
    layers: &RootLayers<'_>,
) -> std::result::Result<(), String> {
    let ns_path = format!("/proc/{pid}/ns/user");
    let userns = fs::File::open(&ns_path).map_err(|e| format!("{ns_path}: {e}"))?;
    let home =
        fs::File::open("/proc/self/ns/mnt").map_err(|e| format!("/proc/self/ns/mnt: {e}"))?;
    // setns resets the root and working directories to the namespace's: both
    // are put back (a vectl run in a chroot stays in it).
    let dir = |p: &str| {
        nix::fcntl::open(
            p,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| format!("open {p}: {e}"))
    };
    let (root, cwd) = (dir("/")?, dir(".")?);
    setns(ve, CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("join the VE's mount namespace: {e}"))?;
    // An invalid id changes nothing and tells the current one.
    let (fsuid, fsgid) = set_fs_ids(u32::MAX, u32::MAX);
    let mounted = mount_in(userns.as_fd(), layers);
    // Back to what they were (back to 0, the kernel raises the file-system
    // capabilities again).
    set_fs_ids(fsuid, fsgid);
    let back = setns(home.as_fd(), CloneFlags::CLONE_NEWNS)
        .and_then(|()| nix::unistd::fchdir(&root))
        .and_then(|()| nix::unistd::chroot("."))
        .and_then(|()| nix::unistd::fchdir(&cwd))
        .map_err(|e| format!("return to vectl's own mount namespace: {e}"));
    mounted.map_err(|e| e.to_string())?;
    back
}

/// Sets the calling thread's file-system uid and gid (group first) and returns
/// the ones it had. Only this thread's credentials change.
fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsgid takes an id and returns the previous one; an id that is
    // not allowed changes nothing.
    let old_gid = unsafe { libc::setfsgid(gid) };
    // SAFETY: as above, for the uid.
    let old_uid = unsafe { libc::setfsuid(uid) };
    (old_uid.cast_unsigned(), old_gid.cast_unsigned())
}

/// A VE root's overlayfs options: no features that would make its own layer
/// depend on the index or on redirects (it is copied, snapshotted and moved
/// between template versions as a plain tree).
pub(crate) fn overlay_options(lower: &Path, upper: &Path, work: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off,index=off",
        lower.display(),
        upper.display(),
        work.display()
    )
}

/// The mounts, made in the VE's mount namespace.
fn mount_in(userns: BorrowedFd<'_>, l: &RootLayers<'_>) -> Step {
    crate::launch::make_mounts_private()?;
    let mp = l.mountpoint;
    mount(
        Some("tmpfs"),
        mp,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=711,size=16k,nr_inodes=16"),
    )
    .map_err(step(|| {
        format!("mount a staging tmpfs on {}", mp.display())
    }))?;
    let (lower, own, root) = (mp.join("lower"), mp.join("own"), root_dir(mp));
    for (d, mode) in [(&lower, 0o700), (&own, 0o700), (&root, 0o711)] {
        fs::DirBuilder::new()
            .mode(mode)
            .create(d)
            .map_err(step(|| format!("create {}", d.display())))?;
    }
    attach_idmapped(l.lower, userns, &lower)?;
    attach_idmapped(l.volume, userns, &own)?;
    let opts = overlay_options(&lower, &own.join("upper"), &own.join("work"));
    // overlayfs keeps the mounter's credentials for its own work on the layers:
    // with the VE root's host id as file-system id they map to 0 on disk
    // through the idmapped layers. Setting it clears the file-system
    // capabilities from the effective set; they are raised again.
    // (vectl is single-threaded here; mount_root puts them back.)
    let root_id = l.range.host_id(0);
    set_fs_ids(root_id, root_id);
    if set_fs_ids(u32::MAX, u32::MAX) != (root_id, root_id) {
        return Err(StepError::Refused(format!(
            "could not take the VE root's host id {root_id} as file-system id"
        )));
    }
    let permitted = caps::read(None, caps::CapSet::Permitted)
        .map_err(step(|| "read the permitted capabilities".into()))?;
    caps::set(None, caps::CapSet::Effective, &permitted)
        .map_err(step(|| "raise the effective capabilities".into()))?;
    mount(
        Some("overlay"),
        &root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(step(|| {
        format!("mount the overlay root at {}", root.display())
    }))
}

/// Attaches `src` at `dst` as an idmapped mount through `userns`'s mapping.
fn attach_idmapped(src: &Path, userns: BorrowedFd<'_>, dst: &Path) -> Step {
    use rustix::mount::{MoveMountFlags, OpenTreeFlags, move_mount, open_tree};
    let tree = open_tree(
        rustix::fs::CWD,
        src,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(step(|| format!("open_tree {}", src.display())))?;
    set_idmap(tree.as_fd(), userns).map_err(|e| match e.raw_os_error() {
        Some(libc::EINVAL | libc::EOPNOTSUPP) => StepError::Refused(format!(
            "{}: its file system cannot be idmapped on this kernel, so a VE cannot use it \
             in a user namespace (create the VE with --privileged, or keep the pool on \
             btrfs, ext4 or xfs)",
            src.display()
        )),
        _ => StepError::Failed {
            what: format!("idmap {}", src.display()),
            cause: e.into(),
        },
    })?;
    move_mount(
        tree.as_fd(),
        "",
        rustix::fs::CWD,
        dst,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(step(|| {
        format!("attach {} at {}", src.display(), dst.display())
    }))
}

/// `struct mount_attr` (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// MOUNT_ATTR_IDMAP (linux/mount.h).
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// MOUNT_ATTR_RDONLY | NOSUID | NODEV | NOEXEC (linux/mount.h).
pub(crate) const MOUNT_ATTR_LOCKED_DOWN: u64 = 0x1 | 0x2 | 0x4 | 0x8;

/// mount_setattr(tree, "", AT_EMPTY_PATH) with MOUNT_ATTR_IDMAP.
fn set_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>) -> std::io::Result<()> {
    set_mount_attr(tree, MOUNT_ATTR_IDMAP, Some(userns))
}

/// mount_setattr(tree, "", AT_EMPTY_PATH) setting `attrs` (with `userns` for
/// MOUNT_ATTR_IDMAP).
pub(crate) fn set_mount_attr(
    tree: BorrowedFd<'_>,
    attrs: u64,
    userns: Option<BorrowedFd<'_>>,
) -> std::io::Result<()> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |u| u64::try_from(u.as_raw_fd()).unwrap_or(u64::MAX)),
    };
    // SAFETY: a valid mount fd, an empty C string, and a mount_attr of the size
    // passed that lives across the call; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether process `pid` runs in a user namespace other than vectl's (an
/// error if that cannot be told: a caller must not guess).
pub(crate) fn has_own_userns(pid: i32) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| fs::metadata(p).map(|m| (m.dev(), m.ino()));
    Ok(ns(&format!("/proc/{pid}/ns/user"))? != ns("/proc/self/ns/user")?)
}

/// Becomes root of the user namespace just joined or made: no supplementary
/// groups of the host, and uid and gid 0 inside (the VE root's host ids).
pub(crate) fn become_root() -> Step {
    nix::unistd::setgroups(&[]).map_err(step(|| "setgroups".into()))?;
    let zero_g = nix::unistd::Gid::from_raw(0);
    let zero_u = nix::unistd::Uid::from_raw(0);
    nix::unistd::setresgid(zero_g, zero_g, zero_g).map_err(step(|| "setresgid 0".into()))?;
    nix::unistd::setresuid(zero_u, zero_u, zero_u).map_err(step(|| "setresuid 0".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u32) -> IdRange {
        IdRange {
            base,
            count: DEFAULT_COUNT,
        }
    }

    #[test]
    fn ranges_are_the_lowest_free_aligned_ones() {
        assert_eq!(pick(&[], DEFAULT_COUNT), Some(r(FIRST_ID)));
        let used = [r(FIRST_ID), r(FIRST_ID + 2 * 65536)];
        assert_eq!(pick(&used, DEFAULT_COUNT), Some(r(FIRST_ID + 65536)));
        // A foreign range off the grid pushes to the next aligned base.
        let odd = IdRange {
            base: FIRST_ID + 100,
            count: 10,
        };
        assert_eq!(pick(&[odd], DEFAULT_COUNT), Some(r(FIRST_ID + 65536)));
        // Full.
        let all: Vec<IdRange> = (0..(END_ID - FIRST_ID) / 65536)
            .map(|i| r(FIRST_ID + i * 65536))
            .collect();
        assert_eq!(pick(&all, DEFAULT_COUNT), None);
        assert_eq!(pick(&all[1..], DEFAULT_COUNT), Some(r(FIRST_ID)));
    }

    #[test]
    fn overlap_and_subid_lines() {
        assert!(r(FIRST_ID).overlaps(IdRange {
            base: FIRST_ID + 65535,
            count: 1
        }));
        assert!(!r(FIRST_ID).overlaps(r(FIRST_ID + 65536)));
        assert_eq!(
            parse_subids("alice:100000:65536\n# junk\nbob:x:1\n"),
            vec![IdRange {
                base: 100_000,
                count: 65536
            }]
        );
        assert_eq!(r(FIRST_ID).map_line(), "0 1073741824 65536\n");
        assert_eq!(r(FIRST_ID).to_string(), "1073741824-1073807359");
    }
}
