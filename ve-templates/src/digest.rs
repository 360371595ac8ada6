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
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use sha2::{Digest, Sha256};

use crate::tree::{Entry, dir_names, next_data, next_hole};

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
            let f = e.open_file()?;
            h.update(format!("{} {}\0", m.len(), content_hash(&f, m.len())?).as_bytes());
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

/// Runs of at least this many zero bytes count by their length alone.
const ZERO_RUN: u64 = 4096;

/// The hash of a regular file's `len` bytes, the same whatever holes it has:
/// runs of [`ZERO_RUN`] zero bytes or more (holes, or zeros written out) count
/// by their length, the bytes between them by their hash. Holes are never
/// read, so a huge sparse file takes no time.
fn content_hash(f: &fs::File, len: u64) -> io::Result<String> {
    const PIECE: usize = 1 << 17;
    let mut c = Canon {
        main: Sha256::new(),
        seg: None,
        zeros: 0,
    };
    let mut buf = vec![0u8; PIECE];
    let mut pos = 0;
    while pos < len {
        let data = next_data(f, pos, len);
        if data > pos {
            c.zeros += data - pos;
            pos = data;
            continue;
        }
        let end = next_hole(f, pos, len).max(pos + 1).min(len);
        while pos < end {
            let want = usize::try_from(end - pos).map_or(PIECE, |n| n.min(PIECE));
            let n = f.read_at(&mut buf[..want], pos)?;
            if n == 0 {
                // Shorter than it said: what is missing counts as zeros.
                c.zeros += len - pos;
                pos = len;
                break;
            }
            c.bytes(&buf[..n]);
            pos += n as u64;
        }
    }
    c.flush_zeros();
    c.end_segment();
    Ok(hex(&c.main.finalize()))
}

/// The canonical form of a file's content being hashed.
struct Canon {
    main: Sha256,
    /// The bytes since the last long run of zeros.
    seg: Option<Sha256>,
    /// Zero bytes seen and not yet counted.
    zeros: u64,
}

impl Canon {
    fn bytes(&mut self, mut b: &[u8]) {
        while let Some(&first) = b.first() {
            if first == 0 {
                let n = b.iter().position(|&x| x != 0).unwrap_or(b.len());
                self.zeros += n as u64;
                b = &b[n..];
            } else {
                self.flush_zeros();
                let n = b.iter().position(|&x| x == 0).unwrap_or(b.len());
                self.seg.get_or_insert_with(Sha256::new).update(&b[..n]);
                b = &b[n..];
            }
        }
    }

    fn flush_zeros(&mut self) {
        if self.zeros == 0 {
            return;
        }
        if self.zeros >= ZERO_RUN {
            self.end_segment();
            self.main.update(format!("Z{};", self.zeros).as_bytes());
        } else {
            // Shorter than ZERO_RUN, so it fits the buffer.
            const Z: [u8; ZERO_RUN as usize] = [0; ZERO_RUN as usize];
            let n = usize::try_from(self.zeros).unwrap_or(0);
            self.seg.get_or_insert_with(Sha256::new).update(&Z[..n]);
        }
        self.zeros = 0;
    }

    fn end_segment(&mut self) {
        if let Some(s) = self.seg.take() {
            self.main.update(b"D");
            self.main.update(s.finalize());
        }
    }
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

    #[test]
    fn holes_and_written_zeros_hash_alike_and_huge_sparse_files_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let (sparse, dense) = (d.path().join("s"), d.path().join("d"));
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(b"x", 300_000).unwrap();
        f.write_all_at(&[0, 0, 7], 300_001).unwrap();
        let mut bytes = vec![0u8; 1 << 20];
        bytes[300_000] = b'x';
        bytes[300_003] = 7;
        fs::write(&dense, &bytes).unwrap();
        let open = |p: &std::path::Path| fs::File::open(p).unwrap();
        let hs = content_hash(&open(&sparse), 1 << 20).unwrap();
        assert_eq!(hs, content_hash(&open(&dense), 1 << 20).unwrap());
        bytes[300_003] = 8;
        fs::write(&dense, &bytes).unwrap();
        assert_ne!(hs, content_hash(&open(&dense), 1 << 20).unwrap());
        // 1 TiB of hole: read, it would take hours (the test would hang).
        let huge = d.path().join("h");
        fs::File::create(&huge).unwrap().set_len(1 << 40).unwrap();
        let h = content_hash(&open(&huge), 1 << 40).unwrap();
        assert_ne!(h, hs);
    }
}
