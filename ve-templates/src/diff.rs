//! Conflicts between a VE's own changes and a template patch: the paths a VE
//! changed in its private layer (the overlay's upper directory: new or edited
//! files, symlinks, and whiteouts of deleted files) that also differ between the
//! version the VE is on and the one it would move to. Moving such a VE would
//! keep its copy and hide the patch's.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// One conflicting path, relative to the VE's root (`/etc/ssh/sshd_config`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub path: String,
    /// What the VE did with it: `changed` or `deleted`.
    pub ve: &'static str,
    /// What the patch did with it: `changed`, `added` or `removed`.
    pub patch: &'static str,
}

/// The conflicts of the VE whose private layer is `upper` when it moves from
/// the tree `old` to the tree `new`, sorted by path.
pub fn conflicts(upper: &Path, old: &Path, new: &Path) -> io::Result<Vec<Conflict>> {
    let mut out = Vec::new();
    walk(upper, Path::new(""), old, new, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk(dir: &Path, rel: &Path, old: &Path, new: &Path, out: &mut Vec<Conflict>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let rel = rel.join(&name);
        let md = entry.path().symlink_metadata()?;
        let ft = md.file_type();
        if ft.is_dir() {
            walk(&entry.path(), &rel, old, new, out)?;
            continue;
        }
        // A whiteout (a 0/0 character device) marks a file the VE deleted.
        let whiteout = ft.is_char_device() && md.rdev() == 0;
        let Some(patch) = patch_change(&old.join(&rel), &new.join(&rel))? else {
            continue;
        };
        out.push(Conflict {
            path: format!("/{}", rel.display()),
            ve: if whiteout { "deleted" } else { "changed" },
            patch,
        });
    }
    Ok(())
}

/// How the patch changed one path between the trees, if it did.
fn patch_change(a: &Path, b: &Path) -> io::Result<Option<&'static str>> {
    let (ma, mb) = (a.symlink_metadata().ok(), b.symlink_metadata().ok());
    Ok(match (ma, mb) {
        (None, None) => None,
        (None, Some(_)) => Some("added"),
        (Some(_), None) => Some("removed"),
        (Some(ma), Some(mb)) => (!same(a, &ma, b, &mb)?).then_some("changed"),
    })
}

fn same(a: &Path, ma: &fs::Metadata, b: &Path, mb: &fs::Metadata) -> io::Result<bool> {
    if ma.file_type() != mb.file_type()
        || ma.mode() != mb.mode()
        || ma.uid() != mb.uid()
        || ma.gid() != mb.gid()
    {
        return Ok(false);
    }
    if ma.file_type().is_symlink() {
        return Ok(fs::read_link(a)? == fs::read_link(b)?);
    }
    if !ma.file_type().is_file() {
        return Ok(ma.rdev() == mb.rdev());
    }
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_both_the_ve_and_the_patch_changed_conflict() {
        let t = tempfile::tempdir().unwrap();
        let (up, old, new) = (
            t.path().join("up"),
            t.path().join("old"),
            t.path().join("new"),
        );
        for d in [&up, &old, &new] {
            fs::create_dir_all(d.join("etc/ssh")).unwrap();
        }
        // The patch changes sshd_config and motd, adds issue, removes legal.
        fs::write(old.join("etc/ssh/sshd_config"), "Port 22\n").unwrap();
        fs::write(new.join("etc/ssh/sshd_config"), "Port 22\nX11 no\n").unwrap();
        fs::write(old.join("etc/motd"), "a\n").unwrap();
        fs::write(new.join("etc/motd"), "b\n").unwrap();
        fs::write(new.join("etc/issue"), "hi\n").unwrap();
        fs::write(old.join("etc/legal"), "x\n").unwrap();
        fs::write(old.join("etc/hostname"), "same\n").unwrap();
        fs::write(new.join("etc/hostname"), "same\n").unwrap();
        // The VE edited sshd_config, hostname (the patch left it alone) and
        // issue, deleted motd (a whiteout), and wrote a file of its own.
        fs::write(up.join("etc/ssh/sshd_config"), "Port 2222\n").unwrap();
        fs::write(up.join("etc/hostname"), "mine\n").unwrap();
        fs::write(up.join("etc/issue"), "mine\n").unwrap();
        fs::write(up.join("etc/own"), "x\n").unwrap();
        nix::sys::stat::mknod(
            &up.join("etc/motd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let c = conflicts(&up, &old, &new).unwrap();
        let got: Vec<(&str, &str, &str)> =
            c.iter().map(|c| (c.path.as_str(), c.ve, c.patch)).collect();
        assert_eq!(
            got,
            [
                ("/etc/issue", "changed", "added"),
                ("/etc/motd", "deleted", "changed"),
                ("/etc/ssh/sshd_config", "changed", "changed"),
            ]
        );
    }
}
