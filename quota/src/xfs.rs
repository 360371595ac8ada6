//! The XFS calls the `xfs` pool needs: project ids on directories
//! (`FS_IOC_FSGETXATTR`/`FSSETXATTR`, linux/fs.h) and project quotas
//! (`quotactl_fd(2)` with the XFS quota commands, linux/dqblk_xfs.h).
//!
//! A VE's volume is a directory whose project id is its own and which passes it
//! on to everything made below it (`PROJINHERIT`). XFS then answers `statfs` on
//! any directory of the project with the project's limit and use, so `df` in a
//! VE whose overlay upper layer lives there shows the VE's disk, not the pool.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::errno;

/// `FS_XFLAG_PROJINHERIT`: new files and directories take the project id.
const XFLAG_PROJINHERIT: u32 = 0x0000_0200;
/// `PRJQUOTA`.
const PRJQUOTA: u32 = 2;
/// `Q_XGETQUOTA` and `Q_XSETQLIM` (`XQM_CMD(3)`, `XQM_CMD(4)`).
const Q_XGETQUOTA: u32 = (b'X' as u32) << 8 | 3;
const Q_XSETQLIM: u32 = (b'X' as u32) << 8 | 4;
/// `FS_DQUOT_VERSION`, `FS_PROJ_QUOTA`.
const DQUOT_VERSION: i8 = 1;
const PROJ_QUOTA: i8 = 2;
/// `FS_DQ_IHARD`, `FS_DQ_BHARD`: the fields a `Q_XSETQLIM` sets.
const DQ_IHARD: u16 = 1 << 1;
const DQ_BHARD: u16 = 1 << 3;
/// Quota block counts are in 512-byte basic blocks.
const BB: u64 = 512;

/// `struct fsxattr`.
#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `struct fs_disk_quota`.
#[repr(C)]
#[derive(Default)]
struct DiskQuota {
    version: i8,
    flags: i8,
    fieldmask: u16,
    id: u32,
    blk_hardlimit: u64,
    blk_softlimit: u64,
    ino_hardlimit: u64,
    ino_softlimit: u64,
    bcount: u64,
    icount: u64,
    itimer: i32,
    btimer: i32,
    iwarns: u16,
    bwarns: u16,
    itimer_hi: i8,
    btimer_hi: i8,
    rtbtimer_hi: i8,
    padding2: i8,
    rtb_hardlimit: u64,
    rtb_softlimit: u64,
    rtbcount: u64,
    rtbtimer: i32,
    rtbwarns: u16,
    padding3: i16,
    padding4: [u8; 8],
}

nix::ioctl_read!(ioc_fsgetxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(ioc_fssetxattr, b'X', 32, FsXattr);

/// A project's use and hard limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectQuota {
    pub bytes: u64,
    pub inodes: u64,
    pub bytes_limit: Option<u64>,
    pub inodes_limit: Option<u64>,
}

/// True if `path` is on XFS.
pub fn is_xfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::XFS_SUPER_MAGIC)
}

/// Opens a directory itself, never through a symlink.
fn open_dir(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Gives directory `path` project `id`, passed on to what is made below it.
/// Only the directory itself: call it while it is empty.
pub fn set_project(path: &Path, id: u32) -> io::Result<()> {
    let dir = open_dir(path)?;
    let mut attr = FsXattr::default();
    // SAFETY: `attr` is a valid fsxattr for the kernel to fill.
    unsafe { ioc_fsgetxattr(dir.as_raw_fd(), &mut attr) }.map_err(errno)?;
    attr.projid = id;
    attr.xflags |= XFLAG_PROJINHERIT;
    // SAFETY: `attr` is a valid, initialised fsxattr the kernel only reads.
    unsafe { ioc_fssetxattr(dir.as_raw_fd(), &attr) }.map_err(errno)?;
    Ok(())
}

/// The project id of directory `path` (0: none).
pub fn project(path: &Path) -> io::Result<u32> {
    let dir = open_dir(path)?;
    let mut attr = FsXattr::default();
    // SAFETY: `attr` is a valid fsxattr for the kernel to fill.
    unsafe { ioc_fsgetxattr(dir.as_raw_fd(), &mut attr) }.map_err(errno)?;
    Ok(attr.projid)
}

/// `quotactl_fd(2)` with a project-quota command on the file system of `fs`.
fn quotactl(fs: &File, cmd: u32, id: u32, q: &mut DiskQuota) -> io::Result<()> {
    let cmd = cmd << 8 | PRJQUOTA;
    // SAFETY: quotactl_fd with an fd we own, a command of the XFS family and a
    // pointer to a live fs_disk_quota, which the kernel reads or fills.
    let r = unsafe {
        libc::syscall(
            libc::SYS_quotactl_fd,
            fs.as_raw_fd(),
            cmd,
            id,
            q as *mut DiskQuota,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets project `id`'s hard limits (`None`: no limit) on the file system of
/// directory `fs`.
pub fn set_limits(fs: &Path, id: u32, bytes: Option<u64>, inodes: Option<u64>) -> io::Result<()> {
    let f = open_dir(fs)?;
    let mut q = DiskQuota {
        version: DQUOT_VERSION,
        flags: PROJ_QUOTA,
        fieldmask: DQ_BHARD | DQ_IHARD,
        id,
        blk_hardlimit: bytes.map_or(0, |b| b.div_ceil(BB)),
        ino_hardlimit: inodes.unwrap_or(0),
        ..DiskQuota::default()
    };
    quotactl(&f, Q_XSETQLIM, id, &mut q)
}

/// Project `id`'s use and limits on the file system of directory `fs`. A
/// project the file system has no record of yet uses nothing.
pub fn quota(fs: &Path, id: u32) -> io::Result<ProjectQuota> {
    let f = open_dir(fs)?;
    let mut q = DiskQuota::default();
    match quotactl(&f, Q_XGETQUOTA, id, &mut q) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(ProjectQuota::default()),
        Err(e) => return Err(e),
    }
    let some = |v: u64| (v > 0).then_some(v);
    Ok(ProjectQuota {
        bytes: q.bcount * BB,
        inodes: q.icount,
        bytes_limit: some(q.blk_hardlimit * BB),
        inodes_limit: some(q.ino_hardlimit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<DiskQuota>(), 112);
        assert_eq!(Q_XGETQUOTA, 0x5803);
        assert_eq!(Q_XSETQLIM << 8 | PRJQUOTA, 0x0058_0402);
    }
}
