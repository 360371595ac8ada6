//! Loop devices for the image-backed pool: attach an image (auto-clearing, so the
//! device goes away when the pool is unmounted), find the device already holding
//! an image, refresh a device's size after its image grew, and tell what became
//! of the file a device reads (deleted or replaced while attached).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::errno;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;
/// `LO_FLAGS_AUTOCLEAR`: detach when the last user (the mount) goes.
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

nix::ioctl_none!(loop_ctl_get_free, 0x4C, 0x82);
nix::ioctl_write_ptr_bad!(loop_configure, 0x4C0A, LoopConfig);
nix::ioctl_none_bad!(loop_set_capacity, 0x4C07);
nix::ioctl_read_bad!(loop_get_status64, 0x4C05, LoopInfo64);

impl LoopInfo64 {
    fn zeroed() -> LoopInfo64 {
        LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: 0,
            lo_file_name: [0; LO_NAME_SIZE],
            lo_crypt_name: [0; LO_NAME_SIZE],
            lo_encrypt_key: [0; LO_KEY_SIZE],
            lo_init: [0; 2],
        }
    }
}

/// Attaches `image` to a free loop device with autoclear and returns the device
/// and an open handle on it. Autoclear detaches the device at its last close when
/// nothing mounted it: keep the handle until the mount is done. Retries when
/// another program takes the same free device first.
pub fn attach(image: &Path) -> io::Result<(PathBuf, File)> {
    let file = OpenOptions::new().read(true).write(true).open(image)?;
    let ctl = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { loop_ctl_get_free(ctl.as_raw_fd()) }.map_err(errno)?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loopf = match OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(f) => f,
            // udev may not have made the node yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut info = LoopInfo64 {
            lo_flags: LO_FLAGS_AUTOCLEAR,
            ..LoopInfo64::zeroed()
        };
        let name = image.as_os_str().as_encoded_bytes();
        let len = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..len].copy_from_slice(&name[..len]);
        let cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info,
            reserved: [0; 8],
        };
        // SAFETY: `cfg` is a valid loop_config; the image fd is open for the call.
        match unsafe { loop_configure(loopf.as_raw_fd(), &cfg) } {
            Ok(_) => return Ok((dev, loopf)),
            Err(nix::Error::EBUSY) => continue, // taken meanwhile
            Err(e) => return Err(errno(e)),
        }
    }
    Err(io::Error::other("no free loop device stayed free"))
}

/// The loop device that has `image` attached, if any (from /sys/block/loop*).
pub fn find(image: &Path) -> Option<PathBuf> {
    let md = std::fs::metadata(image).ok()?;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        let backing = backing.trim().trim_end_matches(" (deleted)");
        if std::fs::metadata(backing).is_ok_and(|b| b.dev() == md.dev() && b.ino() == md.ino()) {
            return Some(PathBuf::from(format!("/dev/{name}")));
        }
    }
    None
}

/// Tells the loop device to re-read its backing file's size (LOOP_SET_CAPACITY).
pub fn refresh_capacity(dev: &Path) -> io::Result<()> {
    let f = File::open(dev)?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    unsafe { loop_set_capacity(f.as_raw_fd()) }.map_err(errno)?;
    Ok(())
}

/// The file a loop device reads, as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// Its path now (`/sys/block/loopN/loop/backing_file`, without the kernel's
    /// ` (deleted)`); `None` when sysfs does not say.
    pub path: Option<PathBuf>,
    /// Whether its last name was unlinked: it lives on only in the device.
    pub deleted: bool,
    /// Its device and inode numbers (LOOP_GET_STATUS64).
    pub dev_ino: (u64, u64),
}

/// What the loop device `dev` (`/dev/loopN`) reads.
pub fn backing(dev: &Path) -> io::Result<Backing> {
    let f = File::open(dev)?;
    let mut info = LoopInfo64::zeroed();
    // SAFETY: LOOP_GET_STATUS64 fills a loop_info64, which `info` is.
    unsafe { loop_get_status64(f.as_raw_fd(), &mut info) }.map_err(errno)?;
    let name = dev.file_name().map(|n| n.to_string_lossy().into_owned());
    let text = name
        .and_then(|n| std::fs::read_to_string(format!("/sys/block/{n}/loop/backing_file")).ok());
    let (path, deleted) = match text.as_deref().map(|t| t.trim_end_matches('\n')) {
        Some(t) => match t.strip_suffix(" (deleted)") {
            Some(p) => (Some(PathBuf::from(p)), true),
            None => (Some(PathBuf::from(t)), false),
        },
        None => (None, false),
    };
    Ok(Backing {
        path,
        deleted,
        dev_ino: (info.lo_device, info.lo_inode),
    })
}

/// Whether the file at `image` is the one `backing` describes.
pub fn is_backing(image: &Path, backing: &Backing) -> bool {
    std::fs::metadata(image).is_ok_and(|m| {
        // The kernel reports the backing file's st_dev in its own encoding
        // (huge_encode_dev), which is what stat gives too.
        m.dev() == backing.dev_ino.0 && m.ino() == backing.dev_ino.1
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_structs_have_the_kernels_sizes() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
