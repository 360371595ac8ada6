//! A template version's content digest: one SHA-256 over its whole tree, the
//! same on every host that holds the same tree, whatever the version's number
//! there. A backup names its template by it, so a restore on another host
//! finds the same tree under any version number, or knows it is missing.
//!
//! What counts: each entry's path (in byte order), type, permission bits,
//! owner, group, a regular file's size and bytes, a symlink's target and a
//! device's number. Times and extended attributes do not: a copy made by tar or
//! btrfs receive has the same digest as its original. Nothing is followed:
//! the walk opens each directory below its parent's fd without following a
//! symlink, and reads only regular files (a tree a build VE wrote is not
//! trusted).

use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::tree::{Entry, dir_names};

/// The digest of the tree at `root`, as `sha256:<hex>`.
pub fn tree_digest(root: &Path) -> io::Result<String> {
    let dir = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut h = Sha256::new();
    let meta = fs::File::from(dir.try_clone()?).metadata()?;
    entry(&mut h, b".", &meta, "d");
    walk(&mut h, dir, b"")?;
    Ok(format!("sha256:{}", hex(&h.finalize())))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn entry(h: &mut Sha256, path: &[u8], m: &fs::Metadata, kind: &str) {
    h.update(path);
    h.update([0]);
    h.update(format!("{kind} {:o} {} {}\0", m.mode() & 0o7777, m.uid(), m.gid()).as_bytes());
}

fn walk(h: &mut Sha256, dir: OwnedFd, prefix: &[u8]) -> io::Result<()> {
    for name in dir_names(&dir)? {
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name.as_bytes());
        // Gone since the listing: not part of the tree.
        let Some(e) = Entry::at(dir.as_fd(), &name)? else {
            continue;
        };
        let m = e.metadata();
        let t = m.file_type();
        if t.is_dir() {
            entry(h, &path, m, "d");
            walk(h, e.open_dir()?, &path)?;
        } else if t.is_file() {
            entry(h, &path, m, "f");
            let mut f = e.open_file()?;
            let mut fh = Sha256::new();
            let mut buf = vec![0u8; 1 << 17];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                fh.update(&buf[..k]);
                n += k as u64;
            }
            h.update(format!("{n} {}\0", hex(&fh.finalize())).as_bytes());
        } else if t.is_symlink() {
            entry(h, &path, m, "l");
            h.update(e.read_link()?.as_os_str().as_bytes());
            h.update([0]);
        } else if t.is_char_device() || t.is_block_device() {
            entry(h, &path, m, if t.is_char_device() { "c" } else { "b" });
            h.update(format!("{}\0", m.rdev()).as_bytes());
        } else {
            entry(h, &path, m, if t.is_fifo() { "p" } else { "s" });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn same_tree_same_digest_and_any_change_shows() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            fs::create_dir(d.join("etc")).unwrap();
            fs::write(d.join("etc/hostname"), "web\n").unwrap();
            symlink("/etc/passwd", d.join("link")).unwrap();
        }
        let da = tree_digest(a.path()).unwrap();
        assert!(da.starts_with("sha256:") && da.len() == 71, "{da}");
        assert_eq!(da, tree_digest(b.path()).unwrap());
        fs::write(b.path().join("etc/hostname"), "wep\n").unwrap();
        let db = tree_digest(b.path()).unwrap();
        assert_ne!(da, db);
        fs::write(b.path().join("etc/hostname"), "web\n").unwrap();
        assert_eq!(da, tree_digest(b.path()).unwrap());
        fs::remove_file(b.path().join("link")).unwrap();
        symlink("/etc/shadow", b.path().join("link")).unwrap();
        assert_ne!(da, tree_digest(b.path()).unwrap());
    }
}
