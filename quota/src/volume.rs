//! Volumes: a VE's private layer (`ves/<name>`, with the overlay `upper` and
//! `work` directories) and template versions; creating, cloning, sealing and
//! deleting them, listing the VE volumes, and counting the space a tree uses.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, io_err};
use crate::pool::{Backend, Pool};
use crate::{btrfs, xfs};

/// The private layer of one VE: overlay upper and work directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The volume's own directory (`<pool>/ves/<name>`).
    pub dir: PathBuf,
}

impl Volume {
    /// The overlay upper directory: the VE's own files.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    /// The overlay work directory.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
}

/// Space used below a path, as `du` would count it (allocated blocks, hard links once).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub files: u64,
}

impl Pool {
    /// The private volume of a VE (which may not exist yet).
    pub fn ve_volume(&self, ve: &str) -> Volume {
        Volume {
            dir: self.dir.join("ves").join(ve),
        }
    }

    /// Creates a VE's private volume with empty `upper` and `work` directories.
    /// A leftover volume of the same name (from a create that was killed before it
    /// wrote the VE's config) is the caller's to remove first.
    pub fn create_ve_volume(&self, ve: &str) -> Result<Volume> {
        let vol = self.ve_volume(ve);
        if vol.dir.symlink_metadata().is_ok() {
            return Err(Error::VolumeExists(vol.dir));
        }
        self.make_volume(&vol.dir).map_err(|e| match e {
            Error::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists => {
                Error::VolumeExists(vol.dir.clone())
            }
            e => e,
        })?;
        fs::set_permissions(&vol.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&vol.dir))?;
        for p in [vol.upper(), vol.work()] {
            fs::create_dir(&p).map_err(io_err(&p))?;
        }
        // The VE's root directory gets its mode from the upper layer once written;
        // until then overlayfs shows the template's. Keep upper at the usual 0755.
        fs::set_permissions(vol.upper(), fs::Permissions::from_mode(0o755))
            .map_err(io_err(&vol.upper()))?;
        Ok(vol)
    }

    /// Where a clone of VE `src` is copied from. On btrfs: a read-only snapshot
    /// `ves/.SRC.clone`, taken in a moment (the caller keeps `src` still for
    /// it, frozen or stopped), so the copy itself needs no freezing; remove it
    /// with [`Pool::drop_clone_source`]. On the dir backend: the VE's own volume
    /// (the caller keeps `src` still for the whole copy).
    pub fn clone_source(&self, src: &str) -> Result<PathBuf> {
        let from = self.ve_volume(src);
        if !from.upper().is_dir() {
            return Err(Error::Setup {
                path: from.dir.clone(),
                why: format!("VE {src}: its private layer is missing"),
            });
        }
        if self.backend != Backend::Btrfs {
            return Ok(from.dir);
        }
        let snap = self.clone_source_path(src);
        self.delete_volume(&snap)?;
        btrfs::snapshot(&from.dir, &snap, true).map_err(io_err(&snap))?;
        Ok(snap)
    }

    fn clone_source_path(&self, src: &str) -> PathBuf {
        self.dir.join("ves").join(format!(".{src}.clone"))
    }

    /// Removes what [`Pool::clone_source`] made (nothing but on btrfs).
    pub fn drop_clone_source(&self, src: &str) -> Result<()> {
        if self.backend != Backend::Btrfs {
            return Ok(());
        }
        self.delete_volume(&self.clone_source_path(src))
    }

    /// Makes VE `dst`'s private volume a copy of `source` (from
    /// [`Pool::clone_source`]). On btrfs with full quota groups a writable
    /// snapshot (no data copied, shared extents); with simple quotas, which
    /// charge data to the subvolume that wrote it, and on the dir backend, the
    /// files are copied, so they count against `dst`'s own limit. On xfs the
    /// copies are reflinks (extents shared, each file charged to its project).
    /// No limit is set on the new volume.
    pub fn clone_ve_volume(&self, source: &Path, dst: &str) -> Result<Volume> {
        let to = self.ve_volume(dst);
        if to.dir.symlink_metadata().is_ok() {
            return Err(Error::VolumeExists(to.dir));
        }
        if self.backend == Backend::Btrfs && self.quota_mode() != Some(btrfs::QuotaMode::Simple) {
            btrfs::snapshot(source, &to.dir, false).map_err(io_err(&to.dir))?;
            return Ok(to);
        }
        self.create_ve_volume(dst)?;
        if let Err(e) = copy_tree(
            &source.join("upper"),
            &to.upper(),
            self.backend == Backend::Xfs,
        ) {
            let _ = self.delete_volume(&to.dir);
            return Err(e);
        }
        Ok(to)
    }

    /// Removes a VE's private volume and everything in it (on btrfs: the
    /// subvolume and its qgroup), its snapshots and backup bases, and leftovers
    /// of a restore that was killed. Missing is fine.
    pub fn remove_ve_volume(&self, ve: &str) -> Result<()> {
        let snaps = self.snapshots_dir(ve);
        for name in self.snapshot_names(ve)? {
            self.delete_volume(&snaps.join(name))?;
        }
        match fs::remove_dir(&snaps) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&snaps)(e)),
            _ => {}
        }
        let ves = self.dir.join("ves");
        self.delete_volume(&ves.join(format!(".{ve}.clone")))?;
        self.delete_volume(&ves.join(format!(".{ve}.restore")))?;
        self.delete_volume(&ves.join(format!(".{ve}.old")))?;
        self.remove_received(ve)?;
        self.prune_backup_bases(ve, None)?;
        self.delete_volume(&self.ve_volume(ve).dir)?;
        // The groups of earlier removals whose subvolumes are dropped by now.
        self.sweep_qgroups();
        Ok(())
    }

    /// Creates an empty volume at `path` (inside the pool) for a template version
    /// being built.
    pub fn create_dir_volume(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Dir | Backend::Xfs => fs::create_dir(path),
            Backend::Btrfs => btrfs::create_subvolume(path),
        }
        .map_err(io_err(path))
    }

    /// Makes an empty volume at `path` that the pool accounts for on its own:
    /// a subvolume on btrfs, a directory with a new project on xfs, a plain
    /// directory on `dir`.
    pub(crate) fn make_volume(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Dir => fs::create_dir(path).map_err(io_err(path)),
            Backend::Btrfs => btrfs::create_subvolume(path).map_err(io_err(path)),
            Backend::Xfs => {
                fs::create_dir(path).map_err(io_err(path))?;
                let made = self
                    .new_project()
                    .and_then(|id| xfs::set_project(path, id).map_err(io_err(path)));
                if made.is_err() {
                    let _ = fs::remove_dir(path);
                }
                made
            }
        }
    }

    /// A project id no volume of the pool has had (xfs): the next of a counter
    /// kept in the pool (written atomically and durably), under a lock of its
    /// own, past any id the file system holds a record of. Ids start high,
    /// clear of projects an operator numbers by hand on a shared XFS.
    fn new_project(&self) -> Result<u32> {
        use std::io::Write;
        const FIRST: u32 = 1 << 20;
        let lock_path = self.dir.join(".vectl-projects.lock");
        let lock = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        // Released when `lock` is closed.
        lock.lock().map_err(io_err(&lock_path))?;
        let path = self.dir.join(".vectl-projects");
        let mut id = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u32>().map_err(|_| Error::Setup {
                path: path.clone(),
                why: format!("not a project id: {:?}", text.trim()),
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => FIRST,
            Err(e) => return Err(io_err(&path)(e)),
        }
        .max(FIRST);
        // Never one the file system has use or limits for (a counter put back).
        let exhausted = || Error::Setup {
            path: path.clone(),
            why: "no XFS project ids left".into(),
        };
        while xfs::quota(&self.dir, id).is_ok_and(|q| q != xfs::ProjectQuota::default()) {
            id = id.checked_add(1).ok_or_else(exhausted)?;
        }
        let next = id.checked_add(1).ok_or_else(exhausted)?;
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(format!("{next}\n").as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(id)
    }

    /// Seals a finished template version: from now on nothing writes to it.
    /// On `dir` and xfs this is a promise kept by vectl (overlayfs never writes
    /// to a lower layer); btrfs makes the subvolume read-only.
    pub fn seal_volume(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Dir | Backend::Xfs => {
                fs::metadata(path).map_err(io_err(path))?;
                Ok(())
            }
            Backend::Btrfs => btrfs::set_readonly(path, true).map_err(io_err(path)),
        }
    }

    /// Deletes a volume (a subvolume with its qgroup, a directory tree with
    /// its project's limits, or a directory tree). Missing is fine.
    pub fn delete_volume(&self, path: &Path) -> Result<()> {
        if self.backend == Backend::Btrfs && btrfs::is_subvolume(path) {
            let id = btrfs::subvolume_id(path).map_err(io_err(path))?;
            btrfs::delete_subvolume(path).map_err(io_err(path))?;
            return self.forget_qgroup(id);
        }
        let project = match self.backend {
            Backend::Xfs => xfs::project(path).ok().filter(|&id| id != 0),
            _ => None,
        };
        remove_tree(path)?;
        if let Some(id) = project {
            xfs::set_limits(&self.dir, id, None, None).map_err(io_err(path))?;
        }
        Ok(())
    }

    /// Whether `path` is a volume of the pool: a subvolume on btrfs, a
    /// directory (not a symlink) elsewhere.
    pub(crate) fn is_volume(&self, path: &Path) -> bool {
        match self.backend {
            Backend::Btrfs => btrfs::is_subvolume(path),
            _ => fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()),
        }
    }

    /// The VE volumes in the pool (names under `ves/`; not a restore's
    /// `.NAME.*` leftovers).
    pub fn ve_volumes(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("ves");
        let mut out: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    }
}

/// Copies a tree with everything overlayfs keeps in an upper layer (owners,
/// modes, times, xattrs such as trusted.overlay.*, whiteout devices, hard links),
/// sharing extents where the file system can and `reflink` asks
/// (`cp -a --reflink=auto`), otherwise not (`--reflink=never`: on btrfs simple
/// quotas charge shared extents to their first owner only).
pub(crate) fn copy_tree(from: &Path, to: &Path, reflink: bool) -> Result<()> {
    let mode = if reflink {
        "--reflink=auto"
    } else {
        "--reflink=never"
    };
    let out = std::process::Command::new("cp")
        .args(["-a", mode, "--"])
        .arg(from.join("."))
        .arg(to)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(io_err(to))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Setup {
            path: to.to_path_buf(),
            why: format!("copy failed: {}", err.lines().next().unwrap_or("cp failed")),
        });
    }
    Ok(())
}

/// Removes a directory tree; a missing path is not an error.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Counts allocated bytes and files below `path` without following symlinks or
/// crossing into other filesystems; hard-linked files count once.
pub fn usage(path: &Path) -> Result<Usage> {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;

    let root = fs::symlink_metadata(path).map_err(io_err(path))?;
    let dev = root.dev();
    let mut seen = HashSet::new();
    let mut total = Usage::default();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = match fs::symlink_metadata(&p) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&p)(e)),
        };
        if md.dev() != dev {
            continue;
        }
        if md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino()) {
            continue;
        }
        total.bytes += md.blocks() * 512;
        total.files += 1;
        if md.is_dir() {
            let rd = match fs::read_dir(&p) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(&p)(e)),
            };
            for entry in rd {
                let entry = entry.map_err(io_err(&p))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_lifecycle_on_dir_backend() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        Pool::init(tmp.path(), Backend::Dir).unwrap(); // idempotent
        let vol = pool.create_ve_volume("web1").unwrap();
        assert!(vol.upper().is_dir() && vol.work().is_dir());
        assert!(matches!(
            pool.create_ve_volume("web1"),
            Err(Error::VolumeExists(_))
        ));
        fs::write(vol.upper().join("f"), vec![1u8; 10000]).unwrap();
        let u = usage(&vol.dir).unwrap();
        assert!(u.bytes >= 10000 && u.files == 4, "{u:?}");
        assert_eq!(pool.disk("web1").unwrap().used, u.bytes);
        pool.remove_ve_volume("web1").unwrap();
        pool.remove_ve_volume("web1").unwrap();
        assert!(!vol.dir.exists());
    }
}
