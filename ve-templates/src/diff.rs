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
//!
//! The VE's layer may change while it is read (`upgrade --check` of a running
//! VE): it is walked by directory handles, each entry looked up in the
//! directory handle of its parent and held by a handle of its own, so a
//! directory swapped for a symlink between two steps is still read as the
//! directory it was, never as what the symlink points at. Template versions do
//! not change once published but a build VE wrote them: they are read through
//! [`Tree::lstat`] (no symlink followed, not even inside the tree), only
//! regular files are opened (non-blocking), and two files are compared piece
//! by piece, holes both have skipped, never read whole.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::tree::{Entry, Tree, dir_names, same_content};

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
    let trees = Trees {
        old: Tree::open(old).map_err(at(old))?,
        new: Tree::open(new).map_err(at(new))?,
        old_path: old,
        new_path: new,
    };
    let top = rustix::fs::open(
        upper,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| at(upper)(e.into()))?;
    let mut out = Vec::new();
    walk(&top, upper, Path::new(""), &trees, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// The two versions compared, and their paths for messages.
struct Trees<'a> {
    old: Tree,
    new: Tree,
    old_path: &'a Path,
    new_path: &'a Path,
}

impl Trees<'_> {
    /// `rel` in the old and in the new version (absent below a symlink).
    fn lstat(&self, rel: &Path) -> io::Result<(Option<Entry>, Option<Entry>)> {
        Ok((
            self.old.lstat(rel).map_err(at(&self.old_path.join(rel)))?,
            self.new.lstat(rel).map_err(at(&self.new_path.join(rel)))?,
        ))
    }
}

/// Whether the directory (an open handle) is opaque: overlayfs shows nothing
/// of the lower layers below it.
fn is_opaque(dir: &OwnedFd) -> bool {
    let mut buf = [0u8; 8];
    matches!(
        rustix::fs::fgetxattr(dir, "trusted.overlay.opaque", &mut buf),
        Ok(1) if buf[0] == b'y'
    )
}

fn is_dir(e: &Option<Entry>) -> bool {
    e.as_ref().is_some_and(|e| e.metadata().is_dir())
}

/// An I/O error with the path it concerns (a file of a running VE may vanish
/// while it is compared).
fn at(p: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", p.display()))
}

/// Walks the VE's layer directory `dir` (an open handle of `shown`, at
/// `rel` in the VE).
fn walk(
    dir: &OwnedFd,
    shown: &Path,
    rel: &Path,
    t: &Trees<'_>,
    out: &mut Vec<Conflict>,
) -> io::Result<()> {
    for name in dir_names(dir).map_err(at(shown))? {
        let rel = rel.join(&name);
        let path = shown.join(&name);
        // Gone since it was listed (a running VE): nothing to compare.
        let Some(entry) = Entry::at(dir.as_fd(), &name).map_err(at(&path))? else {
            continue;
        };
        let md = entry.metadata();
        let ft = md.file_type();
        let (o, n) = t.lstat(&rel)?;
        let template_dir = is_dir(&o) || is_dir(&n);
        if ft.is_dir() {
            // The very directory that was looked up, whatever is at its path
            // by now.
            let sub = entry.open_dir().map_err(at(&path))?;
            let merges = is_dir(&n);
            // One handle per level of the walk, no more.
            drop((entry, o, n));
            // The VE's directory merges with the new version's only where that
            // is a directory too. Over a file or symlink there (the old
            // version's /bin made a link to usr/bin), or when the VE's is
            // opaque, it hides whatever the patch put there.
            if !merges || is_opaque(&sub) {
                subtree(t, &rel, "replaced", out)?;
            }
            walk(&sub, &path, &rel, t, out)?;
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
            subtree(t, &rel, label, out)?;
        } else if let Some(patch) = patch_change(t, &rel, o.as_ref(), n.as_ref())? {
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
fn subtree(t: &Trees<'_>, rel: &Path, ve: &'static str, out: &mut Vec<Conflict>) -> io::Result<()> {
    let (o, n) = t.lstat(rel)?;
    if let Some(patch) = patch_change(t, rel, o.as_ref(), n.as_ref())? {
        out.push(conflict(rel, ve, patch));
    }
    let mut names = BTreeSet::<OsString>::new();
    for (side, root) in [(&o, t.old_path), (&n, t.new_path)] {
        if let Some(e) = side
            && e.metadata().is_dir()
        {
            let p = root.join(rel);
            let dir = e.open_dir().map_err(at(&p))?;
            names.extend(dir_names(&dir).map_err(at(&p))?);
        }
    }
    drop((o, n));
    for name in names {
        subtree(t, &rel.join(name), ve, out)?;
    }
    Ok(())
}

/// How the patch changed one path between the trees, if it did (a path under
/// a symlink counts as absent).
fn patch_change(
    t: &Trees<'_>,
    rel: &Path,
    a: Option<&Entry>,
    b: Option<&Entry>,
) -> io::Result<Option<&'static str>> {
    Ok(match (a, b) {
        (None, None) => None,
        (None, Some(_)) => Some("added"),
        (Some(_), None) => Some("removed"),
        (Some(a), Some(b)) => {
            let same = same(a, b).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "{} against {}: {e}",
                        t.old_path.join(rel).display(),
                        t.new_path.join(rel).display()
                    ),
                )
            })?;
            (!same).then_some("changed")
        }
    })
}

fn same(a: &Entry, b: &Entry) -> io::Result<bool> {
    let (ma, mb) = (a.metadata(), b.metadata());
    if ma.file_type() != mb.file_type()
        || ma.mode() != mb.mode()
        || ma.uid() != mb.uid()
        || ma.gid() != mb.gid()
    {
        return Ok(false);
    }
    let ft = ma.file_type();
    if ft.is_symlink() {
        return Ok(a.read_link()? == b.read_link()?);
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
    let (fa, fb): (fs::File, fs::File) = (a.open_file()?, b.open_file()?);
    same_content(&fa, &fb, ma.len())
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
        let old_tree = Tree::open(&old).unwrap();
        assert!(
            old_tree
                .lstat(Path::new("var/run/secret"))
                .unwrap()
                .is_none()
        );
        let c = conflicts(&up, &old, &new).unwrap();
        // Seen as absent in old (not the host's file), absent in new: no change.
        assert!(
            c.iter()
                .all(|c| c.path != "/var/run/secret" || c.patch != "changed"),
            "{c:?}"
        );
    }
}
