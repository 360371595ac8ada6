//! Conflicts between a VE's own changes and a template patch: the paths a VE
//! changed in its private layer (the overlay's upper directory: new or edited
//! files, symlinks, whiteouts of deleted files, opaque directories that replace
//! a template directory) that also differ between the version the VE is on and
//! the one it would move to. Moving such a VE would keep its copy and hide the
//! patch's.
//!
//! Nothing is followed through a symlink: a path of a tree whose parent is a
//! symlink (`/var/run -> /run`) is not looked at through it, so a VE's layer or
//! a template cannot point the comparison at the host's files.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

/// One conflicting path, relative to the VE's root (`/etc/ssh/sshd_config`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub path: String,
    /// What the VE did with it: `changed`, `deleted` or `replaced` (a
    /// directory of its own over the template's).
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
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// `root/rel` if no component of it below `root` is a symlink (the last one
/// may be); `None` otherwise.
pub(crate) fn inside(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut p = root.to_path_buf();
    let parts: Vec<Component<'_>> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        match c {
            Component::Normal(n) => p.push(n),
            _ => return None,
        }
        if i + 1 < parts.len() && p.symlink_metadata().ok()?.file_type().is_symlink() {
            return None;
        }
    }
    Some(p)
}

fn is_opaque(dir: &Path) -> bool {
    xattr::get(dir, "trusted.overlay.opaque").is_ok_and(|v| v.as_deref() == Some(b"y".as_slice()))
}

fn kind(p: Option<&Path>) -> Option<fs::FileType> {
    p.and_then(|p| p.symlink_metadata().ok())
        .map(|m| m.file_type())
}

/// An I/O error with the path it concerns (a file of a running VE may vanish
/// while it is compared).
fn at(p: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

fn walk(dir: &Path, rel: &Path, old: &Path, new: &Path, out: &mut Vec<Conflict>) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(at(dir))? {
        let entry = entry.map_err(at(dir))?;
        let rel = rel.join(entry.file_name());
        let path = entry.path();
        let md = path.symlink_metadata().map_err(at(&path))?;
        let ft = md.file_type();
        let (o, n) = (inside(old, &rel), inside(new, &rel));
        let template_dir = [kind(o.as_deref()), kind(n.as_deref())]
            .iter()
            .any(|k| k.is_some_and(|k| k.is_dir()));
        if ft.is_dir() {
            // The VE's directory merges with the new version's only where that
            // is a directory too. Over a file or symlink there (the old
            // version's /bin made a link to usr/bin), or when the VE's is
            // opaque, it hides whatever the patch put there.
            let merges = kind(n.as_deref()).is_some_and(|k| k.is_dir());
            if !merges || is_opaque(&path) {
                subtree(old, new, &rel, "replaced", out)?;
            }
            walk(&path, &rel, old, new, out)?;
            continue;
        }
        // A whiteout (a 0/0 character device) marks a path the VE deleted.
        let label = if ft.is_char_device() && md.rdev() == 0 {
            "deleted"
        } else {
            "changed"
        };
        if template_dir {
            // A file or whiteout over a template directory hides all of it.
            subtree(old, new, &rel, label, out)?;
        } else if let Some(patch) = patch_change(o.as_deref(), n.as_deref())? {
            out.push(conflict(&rel, label, patch));
        }
    }
    Ok(())
}

fn conflict(rel: &Path, ve: &'static str, patch: &'static str) -> Conflict {
    Conflict {
        path: format!("/{}", rel.display()),
        ve,
        patch,
    }
}

/// Every path at or below `rel` that differs between the trees.
fn subtree(
    old: &Path,
    new: &Path,
    rel: &Path,
    ve: &'static str,
    out: &mut Vec<Conflict>,
) -> io::Result<()> {
    let (o, n) = (inside(old, rel), inside(new, rel));
    if let Some(patch) = patch_change(o.as_deref(), n.as_deref())? {
        out.push(conflict(rel, ve, patch));
    }
    let mut names = BTreeSet::<OsString>::new();
    for side in [&o, &n] {
        if let Some(p) = side
            && kind(Some(p)).is_some_and(|k| k.is_dir())
        {
            for e in fs::read_dir(p).map_err(at(p))? {
                names.insert(e.map_err(at(p))?.file_name());
            }
        }
    }
    for name in names {
        subtree(old, new, &rel.join(name), ve, out)?;
    }
    Ok(())
}

/// How the patch changed one path between the trees, if it did (a path under
/// a symlink counts as absent).
fn meta(p: Option<&Path>) -> Option<(&Path, fs::Metadata)> {
    p.and_then(|p| p.symlink_metadata().ok().map(|m| (p, m)))
}

fn patch_change(a: Option<&Path>, b: Option<&Path>) -> io::Result<Option<&'static str>> {
    Ok(match (meta(a), meta(b)) {
        (None, None) => None,
        (None, Some(_)) => Some("added"),
        (Some(_), None) => Some("removed"),
        (Some((a, ma)), Some((b, mb))) => (!same(a, &ma, b, &mb)?).then_some("changed"),
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
    let ft = ma.file_type();
    if ft.is_symlink() {
        return Ok(fs::read_link(a)? == fs::read_link(b)?);
    }
    if ft.is_dir() {
        return Ok(true);
    }
    if !ft.is_file() {
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

    fn w(p: &Path, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    fn whiteout(p: &Path) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        nix::sys::stat::mknod(
            p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
    }

    #[test]
    fn only_paths_both_the_ve_and_the_patch_changed_conflict() {
        let t = tempfile::tempdir().unwrap();
        let (up, old, new) = (
            t.path().join("up"),
            t.path().join("old"),
            t.path().join("new"),
        );
        for d in [&up, &old, &new] {
            fs::create_dir_all(d).unwrap();
        }
        // The patch changes sshd_config and motd, adds issue, removes legal,
        // changes a file in conf.d and one in lib/.
        w(&old.join("etc/ssh/sshd_config"), "Port 22\n");
        w(&new.join("etc/ssh/sshd_config"), "Port 22\nX11 no\n");
        w(&old.join("etc/motd"), "a\n");
        w(&new.join("etc/motd"), "b\n");
        w(&new.join("etc/issue"), "hi\n");
        w(&old.join("etc/legal"), "x\n");
        w(&old.join("etc/hostname"), "same\n");
        w(&new.join("etc/hostname"), "same\n");
        w(&old.join("etc/conf.d/a"), "1\n");
        w(&new.join("etc/conf.d/a"), "2\n");
        w(&old.join("lib/x"), "1\n");
        w(&new.join("lib/x"), "2\n");
        w(&old.join("opt/keep"), "1\n");
        w(&new.join("opt/keep"), "1\n");
        // The VE edited sshd_config, hostname (the patch left it alone) and
        // issue, deleted motd and the whole conf.d (whiteouts), made lib an
        // opaque directory of its own, left opt alone but wrote in it.
        w(&up.join("etc/ssh/sshd_config"), "Port 2222\n");
        w(&up.join("etc/hostname"), "mine\n");
        w(&up.join("etc/issue"), "mine\n");
        w(&up.join("etc/own"), "x\n");
        whiteout(&up.join("etc/motd"));
        whiteout(&up.join("etc/conf.d"));
        fs::create_dir_all(up.join("lib")).unwrap();
        xattr::set(up.join("lib"), "trusted.overlay.opaque", b"y").unwrap();
        w(&up.join("opt/mine"), "x\n");
        let c = conflicts(&up, &old, &new).unwrap();
        let got: Vec<(&str, &str, &str)> =
            c.iter().map(|c| (c.path.as_str(), c.ve, c.patch)).collect();
        assert_eq!(
            got,
            [
                ("/etc/conf.d/a", "deleted", "changed"),
                ("/etc/issue", "changed", "added"),
                ("/etc/motd", "deleted", "changed"),
                ("/etc/ssh/sshd_config", "changed", "changed"),
                ("/lib/x", "replaced", "changed"),
            ]
        );
    }

    #[test]
    fn a_ve_directory_where_the_patch_made_a_symlink_conflicts() {
        // usrmerge: old has a real /bin, new has /bin -> usr/bin. The VE added
        // /bin/mytool, so its layer has a directory bin/ that would hide the
        // link (and with it every binary) after the move.
        let t = tempfile::tempdir().unwrap();
        let (up, old, new) = (
            t.path().join("up"),
            t.path().join("old"),
            t.path().join("new"),
        );
        w(&old.join("bin/sh"), "sh\n");
        w(&new.join("usr/bin/sh"), "sh\n");
        std::os::unix::fs::symlink("usr/bin", new.join("bin")).unwrap();
        w(&up.join("bin/mytool"), "mine\n");
        let c = conflicts(&up, &old, &new).unwrap();
        let got: Vec<(&str, &str, &str)> =
            c.iter().map(|c| (c.path.as_str(), c.ve, c.patch)).collect();
        assert_eq!(
            got,
            [
                ("/bin", "replaced", "changed"),
                ("/bin/sh", "replaced", "removed")
            ]
        );
    }

    #[test]
    fn paths_under_a_template_symlink_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (up, old, new, host) = (
            t.path().join("up"),
            t.path().join("old"),
            t.path().join("new"),
            t.path().join("host"),
        );
        for d in [&up, &old, &new, &host] {
            fs::create_dir_all(d).unwrap();
        }
        w(&host.join("secret"), "s\n");
        // old has var/run -> HOST (absolute), new has a real var/run.
        fs::create_dir_all(old.join("var")).unwrap();
        std::os::unix::fs::symlink(&host, old.join("var/run")).unwrap();
        fs::create_dir_all(new.join("var/run")).unwrap();
        w(&up.join("var/run/secret"), "mine\n");
        assert!(inside(&old, Path::new("var/run/secret")).is_none());
        let c = conflicts(&up, &old, &new).unwrap();
        // Seen as absent in old (not the host's file), absent in new: no change.
        assert!(
            c.iter()
                .all(|c| c.path != "/var/run/secret" || c.patch != "changed"),
            "{c:?}"
        );
    }
}
