//! Storage for vectl: the pool that holds template versions and the VEs' private
//! layers, and the volumes inside it.
//!
//! Backends sit behind [`Pool`]: `btrfs` (the default: a loop-mounted image file, a
//! block device or an existing btrfs mount; each volume is a subvolume with a quota
//! limit) and `dir` (plain directories on any filesystem, no disk limits).
//! A [`Volume`] is one directory tree the pool accounts for: a VE's private layer
//! (`ves/<name>`, holding the overlay `upper` and `work` directories) or a template
//! version (`templates/<name>/<version>`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub mod btrfs;
pub mod loopdev;

/// Errors from the pool. Each names the path or volume it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path of the pool.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The pool directory does not exist or is not a directory.
    #[error("pool {0}: not a directory (run `vectl init`)")]
    NotAPool(PathBuf),
    /// A volume that should be new already exists.
    #[error("volume {0} already exists")]
    VolumeExists(PathBuf),
    /// The backend cannot do what was asked (for example a disk limit on `dir`).
    #[error("the {backend} storage backend {what}")]
    Unsupported {
        backend: Backend,
        what: &'static str,
    },
    /// A disk limit below what the volume already uses.
    #[error("VE {ve}: the disk limit {limit} is below the {used} the VE already uses")]
    BelowUsage {
        ve: String,
        limit: String,
        used: String,
    },
    /// A snapshot of that name exists already.
    #[error("VE {ve}: a snapshot named {name:?} exists already")]
    SnapshotExists { ve: String, name: String },
    /// No snapshot of that name.
    #[error("VE {ve}: no snapshot named {name:?}")]
    NoSnapshot { ve: String, name: String },
    /// A name that cannot be used.
    #[error("{0}")]
    BadName(String),
    /// Setting up or mounting the pool failed.
    #[error("pool {path}: {why}")]
    Setup { path: PathBuf, why: String },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The storage backend of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Plain directories on any filesystem. No disk limits, no snapshots.
    #[default]
    Dir,
    /// A btrfs file system: subvolumes with quota limits.
    Btrfs,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Dir => f.write_str("dir"),
            Backend::Btrfs => f.write_str("btrfs"),
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dir" => Ok(Backend::Dir),
            "btrfs" => Ok(Backend::Btrfs),
            _ => Err(format!(
                "unknown storage backend {s:?}: expected btrfs or dir"
            )),
        }
    }
}

/// What a btrfs pool is mounted from, so any command can mount it again (after
/// a reboot, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Source {
    /// An image file attached to a loop device.
    Image { path: PathBuf },
    /// A block device.
    Device { path: PathBuf },
    /// A btrfs mounted by the operator: vectl never mounts it.
    Mounted,
}

/// A storage pool: a directory with `templates/` and `ves/` below it.
#[derive(Debug, Clone)]
pub struct Pool {
    dir: PathBuf,
    backend: Backend,
    /// btrfs: the file system's id, for qgroup numbers in sysfs (read once).
    fsid: std::sync::OnceLock<Option<String>>,
}

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

/// How to make a new btrfs pool (`vectl init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewBtrfs {
    /// A sparse image file of this size, formatted and loop-mounted.
    Image { path: PathBuf, size: u64 },
    /// A block device: used as it is if it holds btrfs, formatted if it is blank.
    Device { path: PathBuf },
    /// The pool directory is already on a btrfs mount.
    Mounted,
}

/// The smallest pool vectl makes: btrfs itself wants ~114 MiB, VEs want room.
pub const MIN_POOL_BYTES: u64 = 256 << 20;

/// A pool's totals, for `pool info`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PoolSpace {
    /// The file system's size.
    pub size_bytes: u64,
    /// Used (size - free, as `df` counts it).
    pub used_bytes: u64,
    /// Free for new data.
    pub free_bytes: u64,
}

impl Pool {
    /// Creates the pool's directories if needed (idempotent) and opens it. A btrfs
    /// pool must already be mounted at `dir` (see [`Pool::make_btrfs`]).
    pub fn init(dir: &Path, backend: Backend) -> Result<Pool> {
        for sub in ["", "templates", "ves"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let pool = Pool::new(dir, backend);
        if backend == Backend::Btrfs {
            if !btrfs::is_btrfs(dir) {
                return Err(Error::Setup {
                    path: dir.to_path_buf(),
                    why: "not on a btrfs file system".into(),
                });
            }
            btrfs::enable_quota(dir).map_err(|e| Error::Setup {
                path: dir.to_path_buf(),
                why: format!("cannot enable quotas: {e}"),
            })?;
        }
        Ok(pool)
    }

    fn new(dir: &Path, backend: Backend) -> Pool {
        Pool {
            dir: dir.to_path_buf(),
            backend,
            fsid: std::sync::OnceLock::new(),
        }
    }

    /// Makes a new btrfs file system for a pool at `dir` and mounts it there, or
    /// checks that `dir` is on btrfs ([`NewBtrfs::Mounted`]). Returns how to mount
    /// it again. `dir` must be an empty directory or not exist.
    pub fn make_btrfs(dir: &Path, how: &NewBtrfs) -> Result<Source> {
        let setup = |path: &Path, why: String| Error::Setup {
            path: path.to_path_buf(),
            why,
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let source = match how {
            NewBtrfs::Mounted => {
                if !btrfs::is_btrfs(dir) {
                    return Err(setup(
                        dir,
                        "not on a btrfs file system (give --pool-size, --pool-dev, or --backend dir)"
                            .into(),
                    ));
                }
                return Ok(Source::Mounted);
            }
            NewBtrfs::Image { path, size } => {
                if *size < MIN_POOL_BYTES {
                    return Err(setup(
                        path,
                        format!("a pool needs at least {} MiB", MIN_POOL_BYTES >> 20),
                    ));
                }
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::AlreadyExists {
                            setup(
                                path,
                                "already exists (a pool image of another vectl root?)".into(),
                            )
                        } else {
                            io_err(path)(e)
                        }
                    })?;
                f.set_len(*size).map_err(io_err(path))?;
                drop(f);
                if let Err(e) = mkfs(path) {
                    let _ = fs::remove_file(path);
                    return Err(e);
                }
                Source::Image { path: path.clone() }
            }
            NewBtrfs::Device { path } => {
                use std::os::unix::fs::FileTypeExt;
                let md = fs::metadata(path).map_err(io_err(path))?;
                if !md.file_type().is_block_device() {
                    return Err(setup(path, "not a block device".into()));
                }
                if !is_btrfs_device(path) {
                    mkfs(path)?;
                }
                Source::Device { path: path.clone() }
            }
        };
        if let Err(e) = mount(dir, &source) {
            if let Source::Image { path } = &source {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        Ok(source)
    }

    /// Opens an existing pool; a btrfs pool that is not mounted (after a reboot)
    /// is mounted again from `source`.
    pub fn open(dir: &Path, backend: Backend, source: Option<&Source>) -> Result<Pool> {
        if backend == Backend::Btrfs && !btrfs::is_btrfs(dir) {
            match source {
                Some(src @ (Source::Image { .. } | Source::Device { .. })) => mount(dir, src)?,
                _ => {
                    return Err(Error::Setup {
                        path: dir.to_path_buf(),
                        why: "the btrfs pool is not mounted".into(),
                    });
                }
            }
        }
        if !dir.join("ves").is_dir() || !dir.join("templates").is_dir() {
            return Err(Error::NotAPool(dir.to_path_buf()));
        }
        Ok(Pool::new(dir, backend))
    }

    /// Unmounts a pool vectl mounted (the loop device goes with it). Not mounted
    /// is fine.
    pub fn unmount(dir: &Path) -> Result<()> {
        if !btrfs::is_btrfs(dir) {
            return Ok(());
        }
        nix::mount::umount2(dir, nix::mount::MntFlags::MNT_DETACH).map_err(|e| Error::Setup {
            path: dir.to_path_buf(),
            why: format!("cannot unmount: {e}"),
        })
    }

    /// The pool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pool's backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Where template versions live.
    pub fn templates_dir(&self) -> PathBuf {
        self.dir.join("templates")
    }

    /// The private volume of a VE (which may not exist yet).
    pub fn ve_volume(&self, ve: &str) -> Volume {
        Volume {
            dir: self.dir.join("ves").join(ve),
        }
    }

    fn fsid(&self) -> Option<&str> {
        self.fsid
            .get_or_init(|| btrfs::fsid(&self.dir).ok())
            .as_deref()
    }

    /// Creates a VE's private volume with empty `upper` and `work` directories.
    /// A leftover volume of the same name (from a create that was killed before it
    /// wrote the VE's config) is the caller's to remove first.
    pub fn create_ve_volume(&self, ve: &str) -> Result<Volume> {
        let vol = self.ve_volume(ve);
        if vol.dir.symlink_metadata().is_ok() {
            return Err(Error::VolumeExists(vol.dir));
        }
        match self.backend {
            Backend::Dir => fs::create_dir(&vol.dir),
            Backend::Btrfs => btrfs::create_subvolume(&vol.dir),
        }
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                Error::VolumeExists(vol.dir.clone())
            } else {
                io_err(&vol.dir)(e)
            }
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
        if self.backend == Backend::Dir {
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

    /// Removes what [`Pool::clone_source`] made (nothing on the dir backend).
    pub fn drop_clone_source(&self, src: &str) -> Result<()> {
        if self.backend == Backend::Dir {
            return Ok(());
        }
        self.delete_volume(&self.clone_source_path(src))
    }

    /// Makes VE `dst`'s private volume a copy of `source` (from
    /// [`Pool::clone_source`]). On btrfs with full quota groups a writable
    /// snapshot (no data copied, shared extents); with simple quotas, which
    /// charge data to the subvolume that wrote it, and on the dir backend, the
    /// files are copied, so they count against `dst`'s own limit. No limit is set
    /// on the new volume.
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
        if let Err(e) = copy_tree(&source.join("upper"), &to.upper()) {
            let _ = self.delete_volume(&to.dir);
            return Err(e);
        }
        Ok(to)
    }

    /// Removes a VE's private volume and everything in it (on btrfs: the
    /// subvolume and its qgroup), its snapshots, and leftovers of a restore that
    /// was killed. Missing is fine.
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
        self.delete_volume(&self.ve_volume(ve).dir)?;
        // The groups of earlier removals whose subvolumes are dropped by now.
        self.sweep_qgroups();
        Ok(())
    }

    fn snapshots_dir(&self, ve: &str) -> PathBuf {
        self.dir.join("snapshots").join(ve)
    }

    fn snapshot_names(&self, ve: &str) -> Result<Vec<String>> {
        let dir = self.snapshots_dir(ve);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect();
        names.sort();
        Ok(names)
    }

    fn need_btrfs(&self, what: &'static str) -> Result<()> {
        if self.backend == Backend::Dir {
            return Err(Error::Unsupported {
                backend: self.backend,
                what,
            });
        }
        Ok(())
    }

    /// Takes a read-only snapshot `name` of a VE's private layer. The caller
    /// makes it consistent (the VE frozen or stopped).
    pub fn create_snapshot(&self, ve: &str, name: &str) -> Result<()> {
        self.need_btrfs("has no snapshots (use the btrfs pool)")?;
        check_snapshot_name(name)?;
        let dir = self.snapshots_dir(ve);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let dest = dir.join(name);
        if dest.symlink_metadata().is_ok() {
            return Err(Error::SnapshotExists {
                ve: ve.to_string(),
                name: name.to_string(),
            });
        }
        btrfs::snapshot(&self.ve_volume(ve).dir, &dest, true).map_err(io_err(&dest))
    }

    /// A VE's snapshots, oldest first.
    pub fn list_snapshots(&self, ve: &str) -> Result<Vec<SnapshotInfo>> {
        let dir = self.snapshots_dir(ve);
        let mut out = Vec::new();
        for name in self.snapshot_names(ve)? {
            let path = dir.join(&name);
            let created = btrfs::created(&path).map_err(io_err(&path))?;
            out.push(SnapshotInfo {
                name,
                created_unix: created,
                exclusive_bytes: self.volume_exclusive(&path),
            });
        }
        out.sort_by(|a, b| (a.created_unix, &a.name).cmp(&(b.created_unix, &b.name)));
        Ok(out)
    }

    fn volume_exclusive(&self, path: &Path) -> u64 {
        btrfs::subvolume_id(path)
            .ok()
            .and_then(|id| btrfs::qgroup_usage(self.fsid()?, id))
            .map_or(0, |q| q.exclusive)
    }

    /// Deletes snapshot `name` of a VE.
    pub fn remove_snapshot(&self, ve: &str, name: &str) -> Result<()> {
        check_snapshot_name(name)?;
        let path = self.snapshots_dir(ve).join(name);
        if !btrfs::is_subvolume(&path) {
            return Err(Error::NoSnapshot {
                ve: ve.to_string(),
                name: name.to_string(),
            });
        }
        self.delete_volume(&path)
    }

    /// Puts a VE's private layer back to snapshot `name` (the VE must be
    /// stopped; the caller checks). The snapshot stays. Crash-safe: the old layer
    /// is renamed aside before the new one takes its place, and a killed restore is
    /// rolled back by the next one (or finished by `finish_restore`).
    pub fn restore_snapshot(&self, ve: &str, name: &str) -> Result<()> {
        self.stage_restore(ve, name)?;
        self.commit_restore(ve)
    }

    /// The first half of [`Pool::restore_snapshot`]: snapshot `name`'s files as
    /// a new volume beside the VE's own layer, which is not touched (the VE may
    /// run meanwhile). Fails, leaving nothing, when they do not fit the VE's
    /// disk limit. A staged volume left unused is removed by the next restore,
    /// `finish_restore` or the VE's removal.
    pub fn stage_restore(&self, ve: &str, name: &str) -> Result<()> {
        self.need_btrfs("has no snapshots (use the btrfs pool)")?;
        check_snapshot_name(name)?;
        let snap = self.snapshots_dir(ve).join(name);
        if !btrfs::is_subvolume(&snap) {
            return Err(Error::NoSnapshot {
                ve: ve.to_string(),
                name: name.to_string(),
            });
        }
        self.finish_restore(ve)?;
        let fresh = self.dir.join("ves").join(format!(".{ve}.restore"));
        let limit = self.disk(ve)?.limit;
        let does_not_fit = |l: u64| Error::Setup {
            path: snap.clone(),
            why: format!(
                "VE {ve}: the snapshot does not fit the VE's disk limit {}",
                human(l)
            ),
        };
        if self.quota_mode() == Some(btrfs::QuotaMode::Simple) {
            // Simple quotas charge data to the subvolume that wrote it: a
            // snapshot-made volume would hold the VE's files free of its limit.
            // Copy them into a new volume under the limit instead.
            btrfs::create_subvolume(&fresh).map_err(io_err(&fresh))?;
            if let Err(e) = btrfs::set_limit(&fresh, limit)
                .map_err(io_err(&fresh))
                .and_then(|()| copy_tree(&snap, &fresh))
            {
                let _ = self.delete_volume(&fresh);
                return Err(match (e, limit) {
                    (Error::Setup { why, .. }, Some(l)) if why.contains("quota") => does_not_fit(l),
                    (e, _) => e,
                });
            }
        } else {
            // A snapshot carries the limit of its day: the VE's current one
            // goes on it, if its files fit (usage is counted at commit).
            btrfs::snapshot(&snap, &fresh, false).map_err(io_err(&fresh))?;
            let fits = || -> Result<bool> {
                let Some(l) = limit else { return Ok(true) };
                btrfs::sync(&fresh).map_err(io_err(&fresh))?;
                let id = btrfs::subvolume_id(&fresh).map_err(io_err(&fresh))?;
                let used = self
                    .fsid()
                    .and_then(|f| btrfs::qgroup_usage(f, id))
                    .map_or(0, |q| q.referenced);
                Ok(used <= l)
            };
            let limited = fits().and_then(|ok| match limit {
                Some(l) if !ok => Err(does_not_fit(l)),
                _ => btrfs::set_limit(&fresh, limit).map_err(io_err(&fresh)),
            });
            if let Err(e) = limited {
                let _ = self.delete_volume(&fresh);
                return Err(e);
            }
        }
        Ok(())
    }

    /// The second half of [`Pool::restore_snapshot`]: the staged volume takes
    /// the place of the VE's own layer (stopped VE).
    pub fn commit_restore(&self, ve: &str) -> Result<()> {
        let ves = self.dir.join("ves");
        let fresh = ves.join(format!(".{ve}.restore"));
        let old = ves.join(format!(".{ve}.old"));
        let live = self.ve_volume(ve).dir;
        if !btrfs::is_subvolume(&fresh) {
            return Err(Error::Setup {
                path: fresh,
                why: format!("VE {ve}: no restore was staged"),
            });
        }
        fs::rename(&live, &old).map_err(io_err(&live))?;
        if let Err(e) = fs::rename(&fresh, &live) {
            let _ = fs::rename(&old, &live);
            let _ = self.delete_volume(&fresh);
            return Err(io_err(&live)(e));
        }
        self.delete_volume(&old)
    }

    /// Cleans up after a restore that was killed: the VE's layer is put back if
    /// it was renamed aside, and the half-made copy is deleted.
    pub fn finish_restore(&self, ve: &str) -> Result<()> {
        let ves = self.dir.join("ves");
        let fresh = ves.join(format!(".{ve}.restore"));
        let old = ves.join(format!(".{ve}.old"));
        let live = self.ve_volume(ve).dir;
        if old.symlink_metadata().is_ok() {
            if live.symlink_metadata().is_err() {
                fs::rename(&old, &live).map_err(io_err(&live))?;
            } else {
                self.delete_volume(&old)?;
            }
        }
        self.delete_volume(&fresh)
    }

    /// Creates an empty volume at `path` (inside the pool) for a template version
    /// being built.
    pub fn create_dir_volume(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Dir => fs::create_dir(path),
            Backend::Btrfs => btrfs::create_subvolume(path),
        }
        .map_err(io_err(path))
    }

    /// Seals a finished template version: from now on nothing writes to it.
    /// On `dir` this is a promise kept by vectl (overlayfs never writes to a lower
    /// layer); btrfs makes the subvolume read-only.
    pub fn seal_volume(&self, path: &Path) -> Result<()> {
        match self.backend {
            Backend::Dir => {
                fs::metadata(path).map_err(io_err(path))?;
                Ok(())
            }
            Backend::Btrfs => btrfs::set_readonly(path, true).map_err(io_err(path)),
        }
    }

    /// Deletes a volume (a subvolume with its qgroup, or a directory tree).
    /// Missing is fine.
    pub fn delete_volume(&self, path: &Path) -> Result<()> {
        if self.backend == Backend::Btrfs && btrfs::is_subvolume(path) {
            let id = btrfs::subvolume_id(path).map_err(io_err(path))?;
            btrfs::delete_subvolume(path).map_err(io_err(path))?;
            return self.forget_qgroup(id);
        }
        remove_tree(path)
    }

    /// Removes the qgroup a deleted subvolume leaves behind. The kernel may
    /// refuse (EBUSY) until its cleaner thread has dropped the subvolume, which
    /// takes up to its commit interval (30 s). Recent kernels then remove the
    /// group themselves; for older ones the id goes on a list that the next
    /// volume removal or creation sweeps ([`Pool::sweep_qgroups`]).
    fn forget_qgroup(&self, id: u64) -> Result<()> {
        match btrfs::destroy_qgroup(&self.dir, id) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                let path = self.pending_qgroups_path();
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                io::Write::write_all(&mut f, format!("{id}\n").as_bytes()).map_err(io_err(&path))
            }
            Err(e) => Err(io_err(&self.dir)(e)),
        }
    }

    /// The qgroups of deleted subvolumes still to remove, one id a line.
    fn pending_qgroups_path(&self) -> PathBuf {
        self.dir.join(".vectl-pending-qgroups")
    }

    /// Removes the pending qgroups (see [`Pool::forget_qgroup`]) whose
    /// subvolumes the kernel has dropped by now. Best effort and cheap: nothing
    /// to do is one failed open. Called with the host lock held.
    pub fn sweep_qgroups(&self) {
        let path = self.pending_qgroups_path();
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        let left: Vec<u64> = text
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .filter(|&id| {
                let gone = btrfs::subvolume_exists(&self.dir, id).is_ok_and(|e| !e)
                    && btrfs::destroy_qgroup(&self.dir, id).is_ok();
                !gone
            })
            .collect();
        if left.is_empty() {
            let _ = fs::remove_file(&path);
        } else {
            let text: String = left.iter().map(|id| format!("{id}\n")).collect();
            let tmp = path.with_extension("tmp");
            if fs::write(&tmp, text).is_ok() {
                let _ = fs::rename(&tmp, &path);
            }
        }
    }

    /// Sets (`None`: removes) a VE volume's disk limit. A limit below what the
    /// volume uses is refused, naming the use; data is never touched.
    pub fn set_disk_limit(&self, ve: &str, bytes: Option<u64>) -> Result<()> {
        match self.backend {
            Backend::Dir => Err(Error::Unsupported {
                backend: self.backend,
                what: "has no disk limits (use the btrfs pool)",
            }),
            Backend::Btrfs => {
                let dir = self.ve_volume(ve).dir;
                if let Some(limit) = bytes {
                    let now = self.disk(ve)?;
                    let shrinking = now.limit.is_none_or(|l| limit < l);
                    if shrinking {
                        // Usage is counted at commit: commit first for the truth.
                        btrfs::sync(&dir).map_err(io_err(&dir))?;
                        let used = self.disk(ve)?.used;
                        if used > limit {
                            return Err(Error::BelowUsage {
                                ve: ve.to_string(),
                                limit: human(limit),
                                used: human(used),
                            });
                        }
                    }
                }
                btrfs::set_limit(&dir, bytes).map_err(io_err(&dir))
            }
        }
    }

    /// Sets a VE volume's limit without looking at its use (btrfs takes a limit
    /// below use; writes then fail until the volume shrinks). For putting a
    /// limit back, not for operators' changes. A no-op on `dir`.
    pub fn force_disk_limit(&self, ve: &str, bytes: Option<u64>) -> Result<()> {
        if self.backend == Backend::Dir {
            return Ok(());
        }
        let dir = self.ve_volume(ve).dir;
        btrfs::set_limit(&dir, bytes).map_err(io_err(&dir))
    }

    /// A VE volume's disk use and limit.
    pub fn disk(&self, ve: &str) -> Result<DiskUsage> {
        let dir = self.ve_volume(ve).dir;
        match self.backend {
            Backend::Dir => Ok(DiskUsage {
                used: usage(&dir)?.bytes,
                limit: None,
            }),
            Backend::Btrfs => {
                let id = btrfs::subvolume_id(&dir).map_err(io_err(&dir))?;
                let q = self
                    .fsid()
                    .and_then(|f| btrfs::qgroup_usage(f, id))
                    .ok_or_else(|| Error::Setup {
                        path: self.dir.clone(),
                        why: format!("no quota group for VE {ve} (are quotas enabled?)"),
                    })?;
                Ok(DiskUsage {
                    used: q.referenced,
                    limit: q.max_referenced,
                })
            }
        }
    }

    /// Disk used by any volume of the pool (a template version, say): its
    /// qgroup's referenced bytes on btrfs, a walk of its files on `dir`.
    pub fn volume_bytes(&self, path: &Path) -> Result<u64> {
        if self.backend == Backend::Btrfs && btrfs::is_subvolume(path) {
            let id = btrfs::subvolume_id(path).map_err(io_err(path))?;
            if let Some(q) = self.fsid().and_then(|f| btrfs::qgroup_usage(f, id)) {
                return Ok(q.referenced);
            }
        }
        Ok(usage(path)?.bytes)
    }

    /// How quotas are accounted (`None`: not btrfs, or quotas are off).
    pub fn quota_mode(&self) -> Option<btrfs::QuotaMode> {
        self.fsid().and_then(btrfs::quota_mode)
    }

    /// Commits the file system so qgroup numbers are current (btrfs counts at
    /// commit). A no-op on `dir`.
    pub fn commit(&self) -> Result<()> {
        if self.backend == Backend::Btrfs {
            btrfs::sync(&self.dir).map_err(io_err(&self.dir))?;
        }
        Ok(())
    }

    /// The qgroups whose subvolume is gone (`0/ID` with no tree), and those of
    /// subvolumes that exist but are none of the pool's volumes (deleted ones the
    /// kernel's cleaner has not dropped yet, which it then removes itself, or the
    /// operator's own on a shared btrfs): (stale, other).
    pub fn stale_qgroups(&self) -> Result<(Vec<u64>, Vec<u64>)> {
        let Some(fsid) = self.fsid() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let known = self.volume_ids();
        let mut stale = Vec::new();
        let mut other = Vec::new();
        for id in btrfs::qgroup_ids(fsid) {
            if id == 5 || known.contains(&id) {
                continue;
            }
            if btrfs::subvolume_exists(&self.dir, id).map_err(io_err(&self.dir))? {
                other.push(id);
            } else {
                stale.push(id);
            }
        }
        Ok((stale, other))
    }

    /// The subvolume ids of the pool's volumes: templates/*/*, ves/*,
    /// snapshots/*/*.
    fn volume_ids(&self) -> std::collections::HashSet<u64> {
        let mut out = std::collections::HashSet::new();
        let mut visit = |dir: &Path, depth: u32| {
            let mut stack = vec![(dir.to_path_buf(), 0)];
            while let Some((d, level)) = stack.pop() {
                for e in fs::read_dir(&d).into_iter().flatten().flatten() {
                    let p = e.path();
                    if level + 1 == depth {
                        if btrfs::is_subvolume(&p)
                            && let Ok(id) = btrfs::subvolume_id(&p)
                        {
                            out.insert(id);
                        }
                    } else if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push((p, level + 1));
                    }
                }
            }
        };
        visit(&self.dir.join("templates"), 2);
        visit(&self.dir.join("ves"), 1);
        visit(&self.dir.join("snapshots"), 2);
        out
    }

    /// The bytes qgroup `0/id` is charged (`None`: no such group).
    pub fn qgroup_bytes(&self, id: u64) -> Option<u64> {
        btrfs::qgroup_usage(self.fsid()?, id).map(|q| q.referenced)
    }

    /// Removes a stale qgroup (see [`Pool::stale_qgroups`]).
    pub fn remove_qgroup(&self, id: u64) -> Result<()> {
        btrfs::destroy_qgroup(&self.dir, id).map_err(io_err(&self.dir))
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

    /// VEs with a restore's leftovers under `ves/` (`.NAME.restore`, a staged
    /// copy of a snapshot; `.NAME.old`, the layer it replaced): what a killed
    /// restore or rollback left, removed by [`Pool::finish_restore`].
    pub fn restore_leftovers(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("ves");
        let mut out: Vec<String> = fs::read_dir(&dir)
            .map_err(io_err(&dir))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                let ve = n.strip_prefix('.')?;
                ve.strip_suffix(".restore")
                    .or_else(|| ve.strip_suffix(".old"))
                    .map(String::from)
            })
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Grows the pool online. An image pool's file is enlarged to `size` (and
    /// its loop device told); a device pool takes what its device has now.
    /// btrfs then grows into it. Shrinking is refused.
    pub fn grow(&self, source: &Source, size: Option<u64>) -> Result<()> {
        let setup = |why: String| Error::Setup {
            path: self.dir.clone(),
            why,
        };
        match source {
            Source::Image { path } => {
                let size = size.ok_or_else(|| setup("give the new size (--size)".into()))?;
                let now = fs::metadata(path).map_err(io_err(path))?.len();
                if size <= now {
                    return Err(setup(format!(
                        "the pool is {} already; it can only grow (shrinking is not supported)",
                        human(now)
                    )));
                }
                let free = nix::sys::statvfs::statvfs(path.parent().unwrap_or(Path::new("/")))
                    .map(|s| s.blocks_available() * s.fragment_size())
                    .unwrap_or(u64::MAX);
                if size - now > free {
                    return Err(setup(format!(
                        "growing by {} needs more than the {} free beside {}",
                        human(size - now),
                        human(free),
                        path.display()
                    )));
                }
                let dev = loopdev::find(path).ok_or_else(|| {
                    setup(format!(
                        "{} is not attached to a loop device",
                        path.display()
                    ))
                })?;
                let f = fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(size).map_err(io_err(path))?;
                if let Err(e) = loopdev::refresh_capacity(&dev) {
                    let _ = f.set_len(now);
                    return Err(setup(format!(
                        "{}: cannot refresh its size: {e}",
                        dev.display()
                    )));
                }
            }
            Source::Device { .. } => {
                if size.is_some() {
                    return Err(setup(
                        "a device pool grows with its device: enlarge the device, then run `vectl pool grow` without --size".into(),
                    ));
                }
            }
            Source::Mounted => {
                return Err(setup(
                    "the operator's own btrfs mount: grow it with `btrfs filesystem resize`".into(),
                ));
            }
        }
        btrfs::resize(&self.dir, "max").map_err(|e| setup(format!("btrfs resize: {e}")))
    }

    /// The pool's size, use and free space.
    pub fn space(&self) -> Result<PoolSpace> {
        let st = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| io_err(&self.dir)(e.into()))?;
        let frag = st.fragment_size();
        let size = st.blocks() * frag;
        let free = st.blocks_available() * frag;
        Ok(PoolSpace {
            size_bytes: size,
            used_bytes: size.saturating_sub(st.blocks_free() * frag),
            free_bytes: free,
        })
    }
}

/// One snapshot of a VE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub name: String,
    /// When it was taken, seconds since the epoch.
    pub created_unix: u64,
    /// Data only this snapshot holds (what deleting it frees).
    pub exclusive_bytes: u64,
}

/// Snapshot names: letters, digits, `.`, `_`, `-`; up to 64; not starting with `.`.
fn check_snapshot_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(format!(
            "invalid snapshot name {name:?}: letters, digits, '.', '_' and '-', up to 64, not starting with '.'"
        )))
    }
}

/// A VE's disk use against its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub used: u64,
    pub limit: Option<u64>,
}

/// `12.5M`-style sizes for messages.
fn human(b: u64) -> String {
    const UNITS: [&str; 5] = ["", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}")
    } else if v.fract() == 0.0 {
        format!("{v}{}", UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// Copies a tree with everything overlayfs keeps in an upper layer (owners,
/// modes, times, xattrs such as trusted.overlay.*, whiteout devices, hard links),
/// without sharing extents (`cp -a --reflink=never`).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .args(["-a", "--reflink=never", "--"])
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

/// mkfs.btrfs on an image or a device. Never forces: a device holding another
/// file system is refused by mkfs, and so by vectl.
fn mkfs(target: &Path) -> Result<()> {
    let out = std::process::Command::new("mkfs.btrfs")
        .args(["-q", "-L", "vectl-pool"])
        .arg(target)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::Setup {
            path: target.to_path_buf(),
            why: format!("cannot run mkfs.btrfs (install btrfs-progs): {e}"),
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("failed");
        return Err(Error::Setup {
            path: target.to_path_buf(),
            why: format!("mkfs.btrfs: {}", last.trim()),
        });
    }
    Ok(())
}

/// True if a device holds a btrfs (its superblock magic `_BHRfS_M` at 64 KiB + 64).
fn is_btrfs_device(dev: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 8];
    fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut magic, 0x10000 + 0x40))
        .is_ok_and(|()| &magic == b"_BHRfS_M")
}

/// Mounts a btrfs pool from its source at `dir`.
fn mount(dir: &Path, source: &Source) -> Result<()> {
    let setup = |why: String| Error::Setup {
        path: dir.to_path_buf(),
        why,
    };
    // Held until the mount is done (an auto-clearing loop device goes at its
    // last close).
    let mut _loop_handle = None;
    let dev = match source {
        Source::Image { path } => match loopdev::find(path) {
            Some(dev) => dev,
            None => {
                let (dev, handle) = loopdev::attach(path).map_err(|e| {
                    setup(format!(
                        "cannot attach {} to a loop device: {e}",
                        path.display()
                    ))
                })?;
                _loop_handle = Some(handle);
                dev
            }
        },
        Source::Device { path } => path.clone(),
        Source::Mounted => return Err(setup("not mounted (vectl does not mount it)".into())),
    };
    if !is_btrfs_device(&dev) {
        return Err(setup(format!(
            "{} holds no btrfs file system",
            dev.display()
        )));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    nix::mount::mount(
        Some(dev.as_path()),
        dir,
        Some("btrfs"),
        nix::mount::MsFlags::MS_NOATIME,
        None::<&str>,
    )
    .map_err(|e| setup(format!("cannot mount {}: {e}", dev.display())))
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

    #[test]
    fn dir_backend_refuses_disk_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        let err = pool.set_disk_limit("web1", Some(1 << 30)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the dir storage backend has no disk limits (use the btrfs pool)"
        );
    }

    #[test]
    fn snapshot_names_are_checked() {
        for ok in ["s1", "before-upgrade", "2026.11.26_1"] {
            assert!(check_snapshot_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "x y", &"n".repeat(65)] {
            assert!(check_snapshot_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sources_and_backends_read_back() {
        for src in [
            Source::Image {
                path: "/var/lib/vectl/pool.img".into(),
            },
            Source::Device {
                path: "/dev/sdb".into(),
            },
            Source::Mounted,
        ] {
            let text = serde_json::to_string(&src).unwrap();
            assert_eq!(serde_json::from_str::<Source>(&text).unwrap(), src);
        }
        assert_eq!("btrfs".parse::<Backend>(), Ok(Backend::Btrfs));
        assert_eq!("dir".parse::<Backend>(), Ok(Backend::Dir));
        assert!("zfs".parse::<Backend>().is_err());
        assert_eq!(human(50 << 20), "50M");
        assert_eq!(human(1536), "1.5K");
    }

    #[test]
    fn snapshots_and_disk_limits_need_btrfs() {
        let tmp = tempfile::tempdir().unwrap();
        let pool = Pool::init(tmp.path(), Backend::Dir).unwrap();
        pool.create_ve_volume("web1").unwrap();
        let err = pool.create_snapshot("web1", "s1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the dir storage backend has no snapshots (use the btrfs pool)"
        );
        assert!(pool.list_snapshots("web1").unwrap().is_empty());
        assert_eq!(pool.disk("web1").unwrap().limit, None);
    }

    #[test]
    fn open_requires_an_initialised_pool() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            Pool::open(&tmp.path().join("nope"), Backend::Dir, None),
            Err(Error::NotAPool(_))
        ));
    }
}
