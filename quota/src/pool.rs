//! The pool itself: its backend and where a btrfs pool is mounted from, making
//! a new btrfs pool (`vectl init`), opening (mounting again after a reboot),
//! unmounting and growing it, and its size and free space.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::{btrfs, disk::human_bytes, loopdev, xfs};

/// The storage backend of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Plain directories on any filesystem. No disk limits, no snapshots.
    #[default]
    Dir,
    /// A btrfs file system: subvolumes with quota limits.
    Btrfs,
    /// An XFS file system mounted with project quotas: each volume a directory
    /// with a project of its own, whose limit `df` in the VE shows.
    Xfs,
}

impl Backend {
    /// Whether the backend enforces per-VE disk limits.
    pub fn has_limits(self) -> bool {
        self != Backend::Dir
    }

    /// Whether the backend keeps snapshots of VEs (btrfs: subvolume snapshots;
    /// xfs: reflinked copies).
    pub fn has_snapshots(self) -> bool {
        self != Backend::Dir
    }

    /// Whether vectl makes and mounts the backend's file system (btrfs, xfs).
    pub fn has_file_system(self) -> bool {
        self != Backend::Dir
    }

    /// The file system vectl makes for the backend.
    fn fs_type(self) -> &'static str {
        match self {
            Backend::Xfs => "xfs",
            _ => "btrfs",
        }
    }

    /// The Debian package of the backend's tools.
    fn tools(self) -> &'static str {
        match self {
            Backend::Xfs => "xfsprogs",
            _ => "btrfs-progs",
        }
    }

    /// The smallest pool vectl makes on this backend: btrfs itself wants
    /// ~114 MiB, mkfs.xfs refuses less than 300 MiB; VEs want room.
    pub fn min_pool_bytes(self) -> u64 {
        match self {
            Backend::Xfs => 320 << 20,
            _ => MIN_POOL_BYTES,
        }
    }

    /// Whether `dir` is on this backend's file system (always, for `dir`). A
    /// directory on a host's own XFS or btrfs root passes too: what vectl
    /// mounted itself is checked with [`is_mount_point`] as well.
    pub fn is_mounted_at(self, dir: &Path) -> bool {
        match self {
            Backend::Dir => true,
            Backend::Btrfs => btrfs::is_btrfs(dir),
            Backend::Xfs => xfs::is_xfs(dir),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Dir => f.write_str("dir"),
            Backend::Btrfs => f.write_str("btrfs"),
            Backend::Xfs => f.write_str("xfs"),
        }
    }
}

/// A storage backend name that is not `btrfs`, `xfs` or `dir`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown storage backend {0:?}: expected btrfs, xfs or dir")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownBackend> {
        match s {
            "dir" => Ok(Backend::Dir),
            "btrfs" => Ok(Backend::Btrfs),
            "xfs" => Ok(Backend::Xfs),
            _ => Err(UnknownBackend(s.to_string())),
        }
    }
}

/// What a btrfs or xfs pool is mounted from, so any command can mount it again (after
/// a reboot, say).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", deny_unknown_fields)]
pub enum Source {
    /// An image file attached to a loop device.
    Image { path: PathBuf },
    /// A block device.
    Device { path: PathBuf },
    /// A file system mounted by the operator: vectl never mounts it.
    Mounted,
}

/// A storage pool: a directory with `templates/` and `ves/` below it.
#[derive(Debug, Clone)]
pub struct Pool {
    pub(crate) dir: PathBuf,
    pub(crate) backend: Backend,
    /// btrfs: the file system's id, for qgroup numbers in sysfs (read once).
    fsid: std::sync::OnceLock<Option<String>>,
}

/// How to make a new btrfs or xfs pool (`vectl init`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewPool {
    /// A sparse image file of this size, formatted and loop-mounted.
    Image { path: PathBuf, size: u64 },
    /// A block device: used as it is if it holds the backend's file system,
    /// formatted if it is blank.
    Device { path: PathBuf },
    /// The pool directory is already on a mount of the backend's file system
    /// (for xfs: mounted with project quotas, `prjquota`).
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
    /// pool must already be mounted at `dir` (see [`Pool::make`]).
    pub fn init(dir: &Path, backend: Backend) -> Result<Pool> {
        for sub in ["", "templates", "ves"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let pool = Pool::new(dir, backend);
        if backend == Backend::Xfs {
            check_project_quotas(dir)?;
        }
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

    /// Makes a new file system of `backend` (btrfs or xfs) for a pool at `dir`
    /// and mounts it there, or checks that `dir` is on one ([`NewPool::Mounted`]).
    /// Returns how to mount it again. `dir` must be an empty directory or not
    /// exist.
    pub fn make(dir: &Path, backend: Backend, how: &NewPool) -> Result<Source> {
        let setup = |path: &Path, why: String| Error::Setup {
            path: path.to_path_buf(),
            why,
        };
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let source = match how {
            NewPool::Mounted => {
                if !backend.is_mounted_at(dir) {
                    return Err(setup(
                        dir,
                        format!(
                            "not on a {} file system (give --pool-size, --pool-dev, or --backend dir)",
                            backend.fs_type()
                        ),
                    ));
                }
                if backend == Backend::Xfs {
                    check_project_quotas(dir)?;
                }
                return Ok(Source::Mounted);
            }
            NewPool::Image { path, size } => {
                if *size < backend.min_pool_bytes() {
                    return Err(setup(
                        path,
                        format!(
                            "a {backend} pool needs at least {} MiB",
                            backend.min_pool_bytes() >> 20
                        ),
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
                if let Err(e) = mkfs(backend, path) {
                    let _ = fs::remove_file(path);
                    return Err(e);
                }
                Source::Image { path: path.clone() }
            }
            NewPool::Device { path } => {
                use std::os::unix::fs::FileTypeExt;
                let md = fs::metadata(path).map_err(io_err(path))?;
                if !md.file_type().is_block_device() {
                    return Err(setup(path, "not a block device".into()));
                }
                if !holds_file_system(backend, path) {
                    mkfs(backend, path)?;
                }
                Source::Device { path: path.clone() }
            }
        };
        if let Err(e) = mount(dir, backend, &source) {
            if let Source::Image { path } = &source {
                let _ = fs::remove_file(path);
            }
            return Err(e);
        }
        Ok(source)
    }

    /// Opens an existing pool; a btrfs or xfs pool that is not mounted (after a
    /// reboot) is mounted again from `source`.
    pub fn open(dir: &Path, backend: Backend, source: Option<&Source>) -> Result<Pool> {
        let ours = matches!(source, Some(Source::Image { .. } | Source::Device { .. }));
        if !backend.is_mounted_at(dir) || (ours && !is_mount_point(dir)) {
            match source {
                Some(src @ (Source::Image { .. } | Source::Device { .. })) => {
                    mount(dir, backend, src)?
                }
                _ => {
                    return Err(Error::Setup {
                        path: dir.to_path_buf(),
                        why: format!("the {backend} pool is not mounted"),
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
        if !is_mount_point(dir) || (!btrfs::is_btrfs(dir) && !xfs::is_xfs(dir)) {
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

    pub(crate) fn fsid(&self) -> Option<&str> {
        self.fsid
            .get_or_init(|| btrfs::fsid(&self.dir).ok())
            .as_deref()
    }

    /// Grows the pool online. An image pool's file is enlarged to `size` (and
    /// its loop device told); a device pool takes what its device has now.
    /// btrfs or xfs then grows into it. Shrinking is refused.
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
                        human_bytes(now)
                    )));
                }
                let free = nix::sys::statvfs::statvfs(path.parent().unwrap_or(Path::new("/")))
                    .map(|s| s.blocks_available() * s.fragment_size())
                    .unwrap_or(u64::MAX);
                if size - now > free {
                    return Err(setup(format!(
                        "growing by {} needs more than the {} free beside {}",
                        human_bytes(size - now),
                        human_bytes(free),
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
        match self.backend {
            Backend::Xfs => run_tool(
                Backend::Xfs,
                "xfs_growfs",
                &["-d".as_ref(), self.dir.as_os_str()],
            )
            .map_err(|e| setup(format!("xfs_growfs: {e}"))),
            _ => btrfs::resize(&self.dir, "max").map_err(|e| setup(format!("btrfs resize: {e}"))),
        }
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

/// An image pool mounted from a loop device whose file is no longer at the
/// image's path: deleted (the pool's data lives only in the device until it is
/// unmounted), moved, or replaced by another file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostImage {
    /// The image path the settings name.
    pub image: PathBuf,
    /// The loop device the pool is mounted from.
    pub device: PathBuf,
    /// What the device reads now: `None` if its file was deleted.
    pub moved_to: Option<PathBuf>,
}

impl std::fmt::Display for LostImage {
    /// One line: what happened, what it means, and how to keep the data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (image, dev) = (self.image.display(), self.device.display());
        match &self.moved_to {
            None => write!(
                f,
                "pool image {image} was deleted while the pool is mounted from {dev}: its data \
                 lives only in {dev} and is lost when the pool is unmounted (or the host \
                 reboots); stop every VE, then copy it back with \
                 `cp --sparse=always {dev} {image}` before anything unmounts the pool"
            ),
            Some(p) => write!(
                f,
                "pool image {image} is not the file the pool is mounted from ({dev} reads {}): \
                 the pool cannot be mounted again after an unmount or reboot; move that file \
                 back to {image}",
                p.display()
            ),
        }
    }
}

impl Pool {
    /// For an image pool: whether the image file is still the one its loop
    /// device reads. `None` when it is (or the pool is not an image pool, or not
    /// mounted from a loop device).
    pub fn lost_image(&self, source: &Source) -> Option<LostImage> {
        let Source::Image { path: image } = source else {
            return None;
        };
        let names: Vec<String> = match self.backend {
            Backend::Dir => return None,
            Backend::Btrfs => {
                let fsid = self.fsid()?;
                fs::read_dir(format!("/sys/fs/btrfs/{fsid}/devices"))
                    .ok()?
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            }
            Backend::Xfs => {
                use std::os::unix::fs::MetadataExt;
                let dev = fs::metadata(&self.dir).ok()?.dev();
                let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
                let node = fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()?;
                vec![node.file_name()?.to_string_lossy().into_owned()]
            }
        };
        for name in names {
            if !name.starts_with("loop") {
                continue;
            }
            let device = PathBuf::from(format!("/dev/{name}"));
            let Ok(backing) = loopdev::backing(&device) else {
                continue;
            };
            if !backing.deleted && loopdev::is_backing(image, &backing) {
                return None;
            }
            return Some(LostImage {
                image: image.clone(),
                device,
                moved_to: if backing.deleted { None } else { backing.path },
            });
        }
        None
    }
}

/// Whether `dir` is the root of a mount: on another device than its parent
/// (a pool vectl mounted), not a directory on the host's own file system.
pub fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().unwrap_or(Path::new("/"));
    match (fs::metadata(dir), fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.dev() != p.dev() || d.ino() == p.ino(),
        _ => false,
    }
}

/// Runs one of the file system tools; `Err` is its last line of complaint.
fn run_tool(
    backend: Backend,
    prog: &str,
    args: &[&std::ffi::OsStr],
) -> std::result::Result<(), String> {
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {prog} (install {}): {e}", backend.tools()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("failed");
    Err(last.trim().to_string())
}

/// mkfs.btrfs or mkfs.xfs on an image or a device. Never forces: a device
/// holding another file system is refused by mkfs, and so by vectl.
fn mkfs(backend: Backend, target: &Path) -> Result<()> {
    let prog = format!("mkfs.{}", backend.fs_type());
    run_tool(
        backend,
        &prog,
        &[
            "-q".as_ref(),
            "-L".as_ref(),
            "vectl-pool".as_ref(),
            target.as_os_str(),
        ],
    )
    .map_err(|e| Error::Setup {
        path: target.to_path_buf(),
        why: if e.starts_with("cannot run") {
            e
        } else {
            format!("{prog}: {e}")
        },
    })
}

/// Whether a device holds the backend's file system (by its superblock's magic).
fn holds_file_system(backend: Backend, dev: &Path) -> bool {
    match backend {
        Backend::Xfs => is_xfs_device(dev),
        _ => is_btrfs_device(dev),
    }
}

/// True if a device holds an XFS (its superblock magic `XFSB` at offset 0).
fn is_xfs_device(dev: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 4];
    fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut magic, 0))
        .is_ok_and(|()| &magic == b"XFSB")
}

/// An xfs pool needs project quotas on: refused, saying why, otherwise.
fn check_project_quotas(dir: &Path) -> Result<()> {
    match xfs::quota(dir, 0) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::Setup {
            path: dir.to_path_buf(),
            why: format!("no XFS project quotas here ({e}): mount it with -o prjquota"),
        }),
    }
}

/// True if a device holds a btrfs (its superblock magic `_BHRfS_M` at 64 KiB + 64).
fn is_btrfs_device(dev: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 8];
    fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut magic, 0x10000 + 0x40))
        .is_ok_and(|()| &magic == b"_BHRfS_M")
}

/// Mounts a btrfs or xfs pool from its source at `dir` (xfs with project
/// quotas).
fn mount(dir: &Path, backend: Backend, source: &Source) -> Result<()> {
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
    let fstype = backend.fs_type();
    if !holds_file_system(backend, &dev) {
        return Err(setup(format!(
            "{} holds no {fstype} file system",
            dev.display()
        )));
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let data = (backend == Backend::Xfs).then_some("prjquota");
    nix::mount::mount(
        Some(dev.as_path()),
        dir,
        Some(fstype),
        nix::mount::MsFlags::MS_NOATIME,
        data,
    )
    .map_err(|e| {
        let hint = if backend == Backend::Xfs && e == nix::errno::Errno::EINVAL {
            " (XFS project quotas need a kernel built with CONFIG_XFS_QUOTA)"
        } else {
            ""
        };
        setup(format!("cannot mount {}: {e}{hint}", dev.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!("xfs".parse::<Backend>(), Ok(Backend::Xfs));
        assert!("zfs".parse::<Backend>().is_err());
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
