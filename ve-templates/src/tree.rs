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

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
/// No symlink at all, not even one that stays inside the tree.
const NO_SYMLINKS: ResolveFlags = ResolveFlags::IN_ROOT
    .union(ResolveFlags::NO_MAGICLINKS)
    .union(ResolveFlags::NO_SYMLINKS);

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
        let fd = rustix::fs::openat2(self.fd.as_fd(), rel, flags | extra, Mode::empty(), RESOLVE)?;
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
        // A handle first (a device is never opened), then the file it names.
        Entry::from_fd(self.open_at(rel, OFlags::PATH)?)?.open_file()
    }

    /// Reads the regular file `rel`, refusing one of more than `max` bytes
    /// (one that says so is not read at all).
    pub fn read(&self, rel: &Path, max: u64) -> io::Result<Vec<u8>> {
        let f = self.open_file(rel)?;
        if f.metadata()?.len() > max {
            return Err(too_large(max));
        }
        read_capped(f, max)
    }

    /// [`Tree::read`] as text (invalid UTF-8 is an error).
    pub fn read_to_string(&self, rel: &Path, max: u64) -> io::Result<String> {
        String::from_utf8(self.read(rel, max)?)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
    }

    /// The entry at `rel` itself, without following any symlink on the way:
    /// a symlink at its last component is the entry; a path below a symlink
    /// (`var/run/x` where `var/run` is one) counts as absent, as does a
    /// missing one (`None`).
    pub fn lstat(&self, rel: &Path) -> io::Result<Option<Entry>> {
        let fd = match rustix::fs::openat2(
            self.fd.as_fd(),
            rel,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            NO_SYMLINKS,
        ) {
            Ok(fd) => fd,
            Err(e) if absent(e) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Entry::from_fd(fd).map(Some)
    }
}

/// What an open that does not follow symlinks reports for a path that is not
/// there as such: missing, below a symlink or a non-directory.
fn absent(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    e == Errno::NOENT || e == Errno::LOOP || e == Errno::NOTDIR
}

/// One entry of a tree that may change under the reader, held by an
/// `O_PATH` handle on its inode: what it is ([`Entry::metadata`]), and
/// whatever is opened or read through it, is that inode, even if the tree
/// has put something else (a symlink, a FIFO) at its path since.
#[derive(Debug)]
pub struct Entry {
    fd: OwnedFd,
    md: fs::Metadata,
}

impl Entry {
    /// The entry `name` (one path component) of the open directory `dir`,
    /// not followed if it is a symlink; `None` if it is not there (any more).
    pub fn at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<Entry>> {
        if name.is_empty() || name.as_bytes().contains(&b'/') || name == "." || name == ".." {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a single path component",
            ));
        }
        match rustix::fs::openat(
            dir,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Entry::from_fd(fd).map(Some),
            Err(e) if e == rustix::io::Errno::NOENT => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn from_fd(fd: OwnedFd) -> io::Result<Entry> {
        let file = fs::File::from(fd);
        let md = file.metadata()?;
        Ok(Entry {
            fd: file.into(),
            md,
        })
    }

    /// What the entry is (`lstat` of it).
    pub fn metadata(&self) -> &fs::Metadata {
        &self.md
    }

    /// The target of the entry, a symlink.
    pub fn read_link(&self) -> io::Result<PathBuf> {
        let target = rustix::fs::readlinkat(self.fd.as_fd(), "", Vec::new())?;
        Ok(PathBuf::from(OsStr::from_bytes(target.as_bytes())))
    }

    /// The entry, a regular file, opened for reading; anything else is
    /// refused without being opened for I/O.
    pub fn open_file(&self) -> io::Result<fs::File> {
        if !self.md.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        // Reopened through the handle's own /proc link: the same inode,
        // whatever is at its path now.
        let fd = rustix::fs::open(
            format!("/proc/self/fd/{}", self.fd.as_raw_fd()),
            OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let f = fs::File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(f)
    }

    /// The entry, a directory, opened for listing and for looking up its
    /// entries ([`Entry::at`], [`dir_names`]).
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        Ok(rustix::fs::openat(
            self.fd.as_fd(),
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?)
    }
}

/// The names in the open directory `dir` (without `.` and `..`), sorted.
pub fn dir_names(dir: impl AsFd) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let name = OsStr::from_bytes(e?.file_name().to_bytes()).to_os_string();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the regular files `a` and `b`, both `len` bytes long, hold the same
/// bytes. Ranges that are holes in both (zeros) are skipped, so comparing two
/// huge sparse files takes no time; everything else is read in pieces, never
/// whole.
pub fn same_content(a: &fs::File, b: &fs::File, len: u64) -> io::Result<bool> {
    const PIECE: usize = 1 << 18;
    let (mut ba, mut bb) = (vec![0u8; PIECE], vec![0u8; PIECE]);
    let mut pos = 0;
    while pos < len {
        let next = next_data(a, pos, len).min(next_data(b, pos, len));
        if next > pos {
            pos = next;
            continue;
        }
        let n = usize::try_from(len - pos).map_or(PIECE, |left| left.min(PIECE));
        a.read_exact_at(&mut ba[..n], pos)?;
        b.read_exact_at(&mut bb[..n], pos)?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        pos += n as u64;
    }
    Ok(true)
}

/// Where the next data at or after `pos` begins in `f` (`len` if only a hole
/// follows; `pos` where the file system cannot tell).
pub(crate) fn next_data(f: &fs::File, pos: u64, len: u64) -> u64 {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
        Ok(p) => p.min(len),
        Err(e) if e == rustix::io::Errno::NXIO => len,
        Err(_) => pos,
    }
}

/// Where the hole after the data at `pos` begins in `f` (`len` where the
/// file system cannot tell: all of it is data then).
pub(crate) fn next_hole(f: &fs::File, pos: u64, len: u64) -> u64 {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(pos)) {
        Ok(p) => p.clamp(pos, len),
        Err(_) => len,
    }
}

/// Reads all of `f`, refusing more than `max` bytes (the file may grow while it
/// is read: the cap is on what is read, not on what `stat` said).
pub fn read_capped(f: fs::File, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_large(max));
    }
    Ok(buf)
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("larger than {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, symlink};

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

    #[test]
    fn lstat_follows_no_symlink_and_entries_stay_the_inode_they_were() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "host").unwrap();
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/sh"), "sh").unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        symlink(outside.path(), root.join("out")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let tree = Tree::open(root).unwrap();
        // A symlink is the entry; what is below it is absent, inside or out.
        let bin = tree.lstat(Path::new("bin")).unwrap().unwrap();
        assert!(bin.metadata().file_type().is_symlink());
        assert_eq!(bin.read_link().unwrap(), Path::new("usr/bin"));
        assert!(tree.lstat(Path::new("bin/sh")).unwrap().is_none());
        assert!(tree.lstat(Path::new("out/secret")).unwrap().is_none());
        assert!(tree.lstat(Path::new("usr/bin/sh/x")).unwrap().is_none());
        assert!(tree.lstat(Path::new("nope")).unwrap().is_none());
        // A FIFO is looked at, never opened.
        let fifo = tree.lstat(Path::new("fifo")).unwrap().unwrap();
        assert!(fifo.metadata().file_type().is_fifo());
        assert_eq!(
            fifo.open_file().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        // A file swapped for a symlink to the host's after it was looked up:
        // the entry still reads the file it was.
        let sh = tree.lstat(Path::new("usr/bin/sh")).unwrap().unwrap();
        fs::rename(root.join("usr/bin/sh"), root.join("usr/bin/sh.old")).unwrap();
        symlink(outside.path().join("secret"), root.join("usr/bin/sh")).unwrap();
        let mut text = String::new();
        sh.open_file().unwrap().read_to_string(&mut text).unwrap();
        assert_eq!(text, "sh");
        // A directory swapped for a symlink after it was looked up: listed
        // and looked into as the directory it was.
        let usr = tree.lstat(Path::new("usr")).unwrap().unwrap();
        fs::rename(root.join("usr"), root.join("usr.old")).unwrap();
        symlink(outside.path(), root.join("usr")).unwrap();
        let dir = usr.open_dir().unwrap();
        assert_eq!(dir_names(&dir).unwrap(), ["bin"]);
        let bin = Entry::at(&dir, OsStr::new("bin")).unwrap().unwrap();
        assert_eq!(
            dir_names(bin.open_dir().unwrap()).unwrap(),
            ["sh", "sh.old"]
        );
        assert!(Entry::at(&dir, OsStr::new("gone")).unwrap().is_none());
        assert!(Entry::at(&dir, OsStr::new("../x")).is_err());
        // Not a directory.
        assert!(sh.open_dir().is_err());
        let link = Entry::at(&dir, OsStr::new("bin")).unwrap().unwrap();
        assert!(link.metadata().is_dir());
    }

    #[test]
    fn same_content_skips_common_holes_and_sees_every_difference() {
        let t = tempfile::tempdir().unwrap();
        let mk = |name: &str, writes: &[(u64, &[u8])], len: u64| {
            let p = t.path().join(name);
            let f = fs::File::create(&p).unwrap();
            f.set_len(len).unwrap();
            for (at, data) in writes {
                f.write_all_at(data, *at).unwrap();
            }
            fs::File::open(&p).unwrap()
        };
        let big = 64 << 30;
        let a = mk("a", &[(5, b"x"), (big - 3, b"end")], big);
        let b = mk("b", &[(5, b"x"), (big - 3, b"end")], big);
        let c = mk("c", &[(5, b"x"), (big - 3, b"enD")], big);
        let started = std::time::Instant::now();
        assert!(same_content(&a, &b, big).unwrap());
        assert!(!same_content(&a, &c, big).unwrap());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        // Written zeros against a hole are the same; anything else is not.
        let z = mk("z", &[(1 << 20, &[0u8; 4096])], 2 << 20);
        let h = mk("h", &[], 2 << 20);
        let d = mk("d", &[(2 << 19, b"\x01")], 2 << 20);
        assert!(same_content(&z, &h, 2 << 20).unwrap());
        assert!(!same_content(&h, &d, 2 << 20).unwrap());
        assert!(!same_content(&d, &h, 2 << 20).unwrap());
    }
}
