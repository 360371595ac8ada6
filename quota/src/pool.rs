//! The pool itself: its backend and where a btrfs pool is mounted from, making
//! a new btrfs pool (`vectl init`), opening (mounting again after a reboot),
//! unmounting and growing it, and its size and free space.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::{btrfs, disk::human_bytes, loopdev};

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

/// A storage backend name that is neither `btrfs` nor `dir`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown storage backend {0:?}: expected btrfs or dir")]
pub struct UnknownBackend(pub String);

impl std::str::FromStr for Backend {
    type Err = UnknownBackend;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownBackend> {
        match s {
            "dir" => Ok(Backend::Dir),
            "btrfs" => Ok(Backend::Btrfs),
            _ => Err(UnknownBackend(s.to_string())),
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
    pub(crate) dir: PathBuf,
    pub(crate) backend: Backend,
    /// btrfs: the file system's id, for qgroup numbers in sysfs (read once).
    fsid: std::sync::OnceLock<Option<String>>,
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

    pub(crate) fn fsid(&self) -> Option<&str> {
        self.fsid
            .get_or_init(|| btrfs::fsid(&self.dir).ok())
            .as_deref()
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
        if self.backend != Backend::Btrfs {
            return None;
        }
        let fsid = self.fsid()?;
        let devices = fs::read_dir(format!("/sys/fs/btrfs/{fsid}/devices")).ok()?;
        for entry in devices.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
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
