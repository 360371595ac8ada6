//! The few btrfs ioctls the pool needs, called directly (no `btrfs` program on
//! the per-VE paths). Numbers and layouts from linux/btrfs.h (magic 0x94).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::errno;

const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
/// `BTRFS_SUBVOL_RDONLY`.
const SUBVOL_RDONLY: u64 = 1 << 1;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2`: fd, transid, flags, a 32-byte union, name.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtl {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
#[derive(Default)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

/// `struct btrfs_ioctl_qgroup_create_args`.
#[repr(C)]
struct QgroupCreate {
    create: u64,
    qgroupid: u64,
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookup {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_fs_info_args` (its first fields; the kernel's is 1024 bytes).
#[repr(C)]
struct FsInfo {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

/// `struct btrfs_ioctl_timespec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Timespec {
    sec: u64,
    nsec: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct SubvolInfo {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: Timespec,
    otime: Timespec,
    stime: Timespec,
    rtime: Timespec,
    reserved: [u64; 8],
}

/// `struct btrfs_ioctl_search_args`: a key, then a buffer for the items found.
#[repr(C)]
struct SearchArgs {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused_rest: [u64; 4],
    buf: [u8; 4096 - 104],
}

nix::ioctl_write_ptr!(ioc_resize, 0x94, 3, VolArgs);
nix::ioctl_readwrite!(ioc_tree_search, 0x94, 17, SearchArgs);
nix::ioctl_read!(ioc_get_subvol_info, 0x94, 60, SubvolInfo);
nix::ioctl_write_ptr!(ioc_subvol_create, 0x94, 14, VolArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, 0x94, 18, InoLookup);
nix::ioctl_write_ptr!(ioc_snap_create_v2, 0x94, 23, VolArgsV2);
nix::ioctl_read!(ioc_subvol_getflags, 0x94, 25, u64);
nix::ioctl_write_ptr!(ioc_subvol_setflags, 0x94, 26, u64);
nix::ioctl_read!(ioc_fs_info, 0x94, 31, FsInfo);
nix::ioctl_readwrite!(ioc_quota_ctl, 0x94, 40, QuotaCtl);
nix::ioctl_write_ptr!(ioc_qgroup_create, 0x94, 42, QgroupCreate);
// Declared _IOR by the kernel although it only reads from user space.
nix::ioctl_read!(ioc_qgroup_limit, 0x94, 43, QgroupLimitArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy_v2, 0x94, 63, VolArgsV2);

fn open_dir(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

/// The parent directory (opened) and the last component of `path`.
fn split(path: &Path, max: usize) -> io::Result<(File, Vec<u8>)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .as_bytes()
        .to_vec();
    if name.len() > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok((open_dir(parent)?, name))
}

fn vol_args(name: &[u8]) -> Box<VolArgs> {
    let mut a = Box::new(VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    });
    a.name[..name.len()].copy_from_slice(name);
    a
}

fn vol_args_v2(name: &[u8]) -> Box<VolArgsV2> {
    let mut a = Box::new(VolArgsV2 {
        fd: 0,
        transid: 0,
        flags: 0,
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    });
    a.name[..name.len()].copy_from_slice(name);
    a
}

/// True if `path` is on btrfs.
pub fn is_btrfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Creates an empty subvolume at `path`.
pub fn create_subvolume(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path, BTRFS_PATH_NAME_MAX)?;
    let args = vol_args(&name);
    // SAFETY: `args` is a valid, initialised btrfs_ioctl_vol_args the kernel only reads.
    unsafe { ioc_subvol_create(dir.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Snapshots subvolume `source` as `dest`, read-only if asked.
pub fn snapshot(source: &Path, dest: &Path, readonly: bool) -> io::Result<()> {
    let src = open_dir(source)?;
    let (dir, name) = split(dest, BTRFS_SUBVOL_NAME_MAX)?;
    let mut args = vol_args_v2(&name);
    args.fd = i64::from(src.as_raw_fd());
    if readonly {
        args.flags = SUBVOL_RDONLY;
    }
    // SAFETY: `args` is a valid btrfs_ioctl_vol_args_v2; `fd` is open for the call.
    unsafe { ioc_snap_create_v2(dir.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Deletes the subvolume at `path` with everything in it (also a read-only one).
pub fn delete_subvolume(path: &Path) -> io::Result<()> {
    let (dir, name) = split(path, BTRFS_SUBVOL_NAME_MAX)?;
    let args = vol_args_v2(&name);
    // SAFETY: `args` is a valid btrfs_ioctl_vol_args_v2 naming a child of `dir`.
    unsafe { ioc_snap_destroy_v2(dir.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Makes a subvolume read-only (or writable again).
pub fn set_readonly(path: &Path, readonly: bool) -> io::Result<()> {
    let f = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: the kernel writes one u64 into `flags`.
    unsafe { ioc_subvol_getflags(f.as_raw_fd(), &mut flags) }.map_err(errno)?;
    flags = if readonly {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    // SAFETY: the kernel reads one u64 from `flags`.
    unsafe { ioc_subvol_setflags(f.as_raw_fd(), &flags) }.map_err(errno)?;
    Ok(())
}

/// The id of the subvolume holding `path` (the `0/ID` qgroup's id).
pub fn subvolume_id(path: &Path) -> io::Result<u64> {
    let f = open_dir(path)?;
    let mut args = Box::new(InoLookup {
        treeid: 0,
        objectid: 256, // BTRFS_FIRST_FREE_OBJECTID: the subvolume's root directory
        name: [0; 4080],
    });
    // SAFETY: `args` is a valid btrfs_ioctl_ino_lookup_args the kernel fills in.
    unsafe { ioc_ino_lookup(f.as_raw_fd(), &mut *args) }.map_err(errno)?;
    Ok(args.treeid)
}

/// True if subvolume `id` still exists (not deleted, or deleted but not yet
/// dropped by the cleaner) in the file system of `pool`.
pub fn subvolume_exists(pool: &Path, id: u64) -> io::Result<bool> {
    // Its ROOT_ITEM (type 132) in the root tree (1); INO_LOOKUP cannot tell, as
    // it answers for any tree id when asked for a subvolume's root directory.
    let f = open_dir(pool)?;
    let mut args = Box::new(SearchArgs {
        tree_id: 1,
        min_objectid: id,
        max_objectid: id,
        min_offset: 0,
        max_offset: u64::MAX,
        min_transid: 0,
        max_transid: u64::MAX,
        min_type: 132,
        max_type: 132,
        nr_items: 1,
        unused: 0,
        unused_rest: [0; 4],
        buf: [0; 4096 - 104],
    });
    // SAFETY: `args` is a valid btrfs_ioctl_search_args the kernel fills in.
    unsafe { ioc_tree_search(f.as_raw_fd(), &mut *args) }.map_err(errno)?;
    Ok(args.nr_items > 0)
}

/// The ids of the level-0 qgroups (`0/ID`) the file system has.
pub fn qgroup_ids(fsid: &str) -> Vec<u64> {
    let dir = Path::new("/sys/fs/btrfs").join(fsid).join("qgroups");
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("0_")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

/// When the subvolume at `path` was made (seconds since the epoch): a
/// snapshot's own time, not its source's.
pub fn created(path: &Path) -> io::Result<u64> {
    let f = open_dir(path)?;
    let zero = Timespec { sec: 0, nsec: 0 };
    let mut info = Box::new(SubvolInfo {
        treeid: 0,
        name: [0; 256],
        parent_id: 0,
        dirid: 0,
        generation: 0,
        flags: 0,
        uuid: [0; 16],
        parent_uuid: [0; 16],
        received_uuid: [0; 16],
        ctransid: 0,
        otransid: 0,
        stransid: 0,
        rtransid: 0,
        ctime: zero,
        otime: zero,
        stime: zero,
        rtime: zero,
        reserved: [0; 8],
    });
    // SAFETY: `info` is a valid btrfs_ioctl_get_subvol_info_args the kernel fills.
    unsafe { ioc_get_subvol_info(f.as_raw_fd(), &mut *info) }.map_err(errno)?;
    Ok(info.otime.sec)
}

/// True if `path` is the root directory of a subvolume.
pub fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir() && m.ino() == 256)
}

/// The file system's UUID, as /sys/fs/btrfs names it.
pub fn fsid(path: &Path) -> io::Result<String> {
    let f = open_dir(path)?;
    let mut args = Box::new(FsInfo {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    });
    // SAFETY: `args` is 1024 bytes, the size of btrfs_ioctl_fs_info_args.
    unsafe { ioc_fs_info(f.as_raw_fd(), &mut *args) }.map_err(errno)?;
    let h: Vec<String> = args.fsid.iter().map(|b| format!("{b:02x}")).collect();
    let h = h.concat();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// How quotas are accounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaMode {
    /// Simple quotas (kernel 6.7+): extents charged to the subvolume that wrote them.
    Simple,
    /// Full qgroups.
    Qgroups,
}

/// Enables quotas on the file system of `path`: simple quotas where the kernel
/// has them, else qgroups. Enabling again is harmless.
pub fn enable_quota(path: &Path) -> io::Result<QuotaMode> {
    let f = open_dir(path)?;
    let ctl = |cmd: u64| {
        let mut args = QuotaCtl { cmd, status: 0 };
        // SAFETY: `args` is a valid btrfs_ioctl_quota_ctl_args.
        unsafe { ioc_quota_ctl(f.as_raw_fd(), &mut args) }.map_err(errno)
    };
    // BTRFS_QUOTA_CTL_ENABLE_SIMPLE_QUOTA = 4, BTRFS_QUOTA_CTL_ENABLE = 1.
    match ctl(4) {
        Ok(_) => Ok(QuotaMode::Simple),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => ctl(1).map(|_| QuotaMode::Qgroups),
        Err(e) => Err(e),
    }
}

/// The quota mode of a mounted btrfs, from sysfs (`None`: quotas are off).
pub fn quota_mode(fsid: &str) -> Option<QuotaMode> {
    let base = Path::new("/sys/fs/btrfs").join(fsid).join("qgroups");
    if !base.is_dir() {
        return None;
    }
    match std::fs::read_to_string(base.join("mode")) {
        Ok(m) if m.trim() == "squota" => Some(QuotaMode::Simple),
        _ => Some(QuotaMode::Qgroups),
    }
}

/// Sets (or with `None` removes) the referenced-bytes limit of the subvolume at
/// `path`. The call goes through the parent directory's fd, naming the
/// subvolume's quota group: through the subvolume's own fd, its transaction is
/// charged to that group, and a volume over its limit (simple quotas keep a
/// snapshot's data charged to it) could never have the limit raised (EDQUOT).
pub fn set_limit(path: &Path, bytes: Option<u64>) -> io::Result<()> {
    let id = subvolume_id(path)?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    let f = open_dir(parent)?;
    let mut args = QgroupLimitArgs {
        qgroupid: id, // level 0: the subvolume's own group
        lim: QgroupLimit {
            flags: 1, // BTRFS_QGROUP_LIMIT_MAX_RFER
            max_rfer: bytes.unwrap_or(u64::MAX),
            ..Default::default()
        },
    };
    // SAFETY: `args` is a valid btrfs_ioctl_qgroup_limit_args the kernel only reads.
    unsafe { ioc_qgroup_limit(f.as_raw_fd(), &mut args) }.map_err(errno)?;
    Ok(())
}

/// Removes qgroup `0/id` (left behind when its subvolume is deleted). Missing is fine.
pub fn destroy_qgroup(pool: &Path, id: u64) -> io::Result<()> {
    let f = open_dir(pool)?;
    let args = QgroupCreate {
        create: 0,
        qgroupid: id,
    };
    // SAFETY: `args` is a valid btrfs_ioctl_qgroup_create_args.
    match unsafe { ioc_qgroup_create(f.as_raw_fd(), &args) } {
        Ok(_) | Err(nix::Error::ENOENT) => Ok(()),
        Err(e) => Err(errno(e)),
    }
}

/// Grows (or shrinks) the file system on device 1 to `size` (`"max"`: the device).
pub fn resize(path: &Path, size: &str) -> io::Result<()> {
    let f = open_dir(path)?;
    let spec = format!("1:{size}");
    let args = vol_args(spec.as_bytes());
    // SAFETY: `args` is a valid btrfs_ioctl_vol_args with a NUL-terminated spec.
    unsafe { ioc_resize(f.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// A qgroup's accounting from /sys/fs/btrfs/FSID/qgroups/0_ID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QgroupUsage {
    pub referenced: u64,
    pub exclusive: u64,
    /// `None`: no limit.
    pub max_referenced: Option<u64>,
}

/// Reads qgroup `0/id`'s usage and limit (`None` if there is no such qgroup).
pub fn qgroup_usage(fsid: &str, id: u64) -> Option<QgroupUsage> {
    let dir = Path::new("/sys/fs/btrfs")
        .join(fsid)
        .join("qgroups")
        .join(format!("0_{id}"));
    let num = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some(QgroupUsage {
        referenced: num("referenced")?,
        exclusive: num("exclusive").unwrap_or(0),
        max_referenced: num("max_referenced").filter(|&m| m != 0 && m != u64::MAX),
    })
}

/// syncfs(2) on the file system of `path`: qgroup numbers are updated at commit.
pub fn sync(path: &Path) -> io::Result<()> {
    let f = open_dir(path)?;
    // SAFETY: syncfs on an fd we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<VolArgsV2>(), 4096);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
        assert_eq!(std::mem::size_of::<InoLookup>(), 4096);
        assert_eq!(std::mem::size_of::<FsInfo>(), 1024);
        assert_eq!(std::mem::size_of::<SubvolInfo>(), 504);
        assert_eq!(std::mem::size_of::<QuotaCtl>(), 16);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
    }
}
