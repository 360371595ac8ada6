//! Reading files of a tree that a VE's root controls (a VE's own layer, a
//! template version a build VE wrote, a running VE's root seen through
//! `/proc/PID/root`) from host-side code, safely.
//!
//! A customer is root in the VE: any path inside its tree may be a symlink to a
//! host file, a FIFO that blocks the reader, a device, or a file of many
//! gigabytes. Every lookup here is `openat2` below a directory fd of the tree with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, so `..` and absolute symlinks stay
//! inside the tree and `/proc/self/...` tricks are refused; files are opened
//! non-blocking (a FIFO cannot hang the open) and only regular files are read, up
//! to a size the caller names.

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// A directory treated as the root of a tree whose contents are not trusted.
#[derive(Debug)]
pub struct Tree {
    fd: OwnedFd,
}

impl Tree {
    /// Opens `root` (a path the host trusts, such as a VE's layer directory or
    /// `/proc/PID/root`) as the tree's root.
    pub fn open(root: &Path) -> io::Result<Tree> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Tree { fd })
    }

    /// Opens `rel` (absolute or relative; either way inside the tree) with
    /// `flags` (plus close-on-exec, and no controlling terminal unless it is an
    /// `O_PATH` open, which takes no other flags).
    pub fn open_at(&self, rel: &Path, flags: OFlags) -> io::Result<OwnedFd> {
        let extra = if flags.contains(OFlags::PATH) {
            OFlags::CLOEXEC
        } else {
            OFlags::CLOEXEC | OFlags::NOCTTY
        };
        let fd = rustix::fs::openat2(
            self.fd.as_fd(),
            rel,
            flags | extra,
            Mode::empty(),
            RESOLVE,
        )?;
        Ok(fd)
    }

    /// What `rel` is (a symlink at its last component is followed inside the
    /// tree); `None` when it does not exist.
    pub fn metadata(&self, rel: &Path) -> io::Result<Option<fs::Metadata>> {
        match self.open_at(rel, OFlags::PATH) {
            Ok(fd) => fs::File::from(fd).metadata().map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens the regular file `rel` for reading; anything else (a FIFO, a
    /// device, a directory) is refused without being opened for I/O.
    pub fn open_file(&self, rel: &Path) -> io::Result<fs::File> {
        let fd = self.open_at(rel, OFlags::RDONLY | OFlags::NONBLOCK)?;
        let f = fs::File::from(fd);
        if !f.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(f)
    }

    /// Reads the regular file `rel`, refusing one of more than `max` bytes.
    pub fn read(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        read_capped(self.open_file(rel)?, max)
    }

    /// [`Tree::read`] as text (invalid UTF-8 is an error).
    pub fn read_to_string(&self, rel: &Path, max: u64) -> io::Result<String> {
        String::from_utf8(self.read(rel, max)?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
    }
}

/// Reads all of `f`, refusing more than `max` bytes (the file may grow while it
/// is read: the cap is on what is read, not on what `stat` said).
pub fn read_capped(f: fs::File, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_tree_and_only_small_regular_files_are_read() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host").unwrap();
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/real"), "ve").unwrap();
        fs::write(root.join("secret"), "ve's own").unwrap();
        // Absolute and `..` links that would leave the tree on the host.
        symlink(outside.path().join("secret"), root.join("etc/abs")).unwrap();
        symlink("../../../../../../secret", root.join("etc/dots")).unwrap();
        symlink("/proc/self/root/etc/passwd", root.join("etc/magic")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        fs::write(root.join("etc/big"), vec![b'x'; 4097]).unwrap();

        let tree = Tree::open(root).unwrap();
        assert_eq!(
            tree.read_to_string(Path::new("/etc/real"), 100).unwrap(),
            "ve"
        );
        // Both links land on the tree's own /secret, never on the host's file.
        assert_eq!(
            tree.read_to_string(Path::new("etc/abs"), 100)
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            tree.read_to_string(Path::new("etc/dots"), 100).unwrap(),
            "ve's own"
        );
        assert!(tree.read(Path::new("etc/magic"), 100).is_err());
        // A FIFO neither hangs nor is read.
        assert_eq!(
            tree.read(Path::new("etc/fifo"), 100).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            tree.read(Path::new("etc/big"), 4096).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
        assert_eq!(tree.read(Path::new("etc/big"), 4097).unwrap().len(), 4097);
        assert!(tree.metadata(Path::new("nope")).unwrap().is_none());
        assert!(tree.metadata(Path::new("etc")).unwrap().unwrap().is_dir());
    }
}
