//! Applying an overlayfs upper layer (a build VE's private layer) onto a copy of
//! the version it was built on: what `template update --run` publishes.
//!
//! Overlayfs records a deletion as a whiteout (a character device 0:0) and a
//! directory that was removed and made again as opaque (`trusted.overlay.opaque`
//! = `y`): its lower contents are gone. vectl mounts VEs with `redirect_dir=off`
//! and `metacopy=off`, so every other entry in the layer is whole: a file, link or
//! new directory replaces what the base had at its path.
//!
//! The build VE is stopped while its layer is applied, so the layer does not
//! change; it is read all the same as a tree that could (see
//! [`crate::import::SrcDir`]): by directory handles, nothing followed through a
//! symlink, regular files opened non-blocking and checked to be the file that
//! was looked at, huge sparse files copied hole for hole.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::import::{Copier, Progress, SrcDir, apply_metadata};
use crate::{Error, Result, io_err};

const OPAQUE: &str = "trusted.overlay.opaque";

/// Applies `layer` onto `dest` (a copy of the layer's lower tree).
pub(crate) fn apply(layer: &Path, dest: &Path, progress: &mut dyn FnMut(Progress)) -> Result<()> {
    let md = fs::symlink_metadata(layer).map_err(io_err(layer))?;
    if !md.is_dir() {
        return Err(Error::BadSource {
            path: layer.to_path_buf(),
            reason: "not a directory".into(),
        });
    }
    let top = SrcDir::open(layer)?;
    let mut copier = Copier::new(top.md.dev(), progress);
    apply_dir(&mut copier, &top, dest)?;
    (copier.report)(copier.progress);
    Ok(())
}

fn apply_dir(copier: &mut Copier<'_>, layer: &SrcDir, dest: &Path) -> Result<()> {
    for name in layer.names()? {
        let (l, shown) = layer.entry(&name);
        let d = dest.join(&name);
        let md = fs::symlink_metadata(&l).map_err(io_err(&shown))?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            remove_any(&d)?;
            continue;
        }
        let dest_is_dir = fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir());
        if ft.is_dir() && dest_is_dir {
            let sub = SrcDir::open_unchanged(&l, &shown, &md)?;
            if !is_opaque(&sub.path(), &shown)? {
                apply_dir(copier, &sub, &d)?;
                apply_metadata(&sub.path(), &shown, &d, &md)?;
                continue;
            }
        }
        remove_any(&d)?;
        copier.copy_entry(&l, &shown, &d)?;
    }
    Ok(())
}

fn is_opaque(dir: &Path, shown: &Path) -> Result<bool> {
    match xattr::get(dir, OPAQUE) {
        Ok(v) => Ok(v.as_deref() == Some(b"y")),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(false),
        Err(e) => Err(io_err(shown)(e)),
    }
}

/// Removes whatever is at `path` (a directory with its contents; a symlink
/// itself, never its target). Missing is fine.
fn remove_any(path: &Path) -> Result<()> {
    let Ok(md) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if md.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
    .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::{Mode, SFlag, mknod};
    use std::os::unix::fs::symlink;

    fn tree(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            let mut names: Vec<_> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                let md = fs::symlink_metadata(&p).unwrap();
                if md.is_dir() {
                    out.push(format!("{rel}/"));
                    walk(root, &p, out);
                } else if md.file_type().is_symlink() {
                    out.push(format!("{rel} -> {}", fs::read_link(&p).unwrap().display()));
                } else {
                    out.push(format!("{rel}: {}", fs::read_to_string(&p).unwrap()));
                }
            }
        }
        walk(root, root, &mut out);
        out
    }

    #[test]
    fn whiteouts_opaque_dirs_and_replacements() {
        let t = tempfile::tempdir().unwrap();
        let (base, layer) = (t.path().join("base"), t.path().join("layer"));
        for d in ["etc/old", "opq/sub", "gone/deep", "keep", "replaced"] {
            fs::create_dir_all(base.join(d)).unwrap();
        }
        fs::write(base.join("etc/a"), "a1").unwrap();
        fs::write(base.join("etc/b"), "b1").unwrap();
        fs::write(base.join("etc/old/x"), "x").unwrap();
        fs::write(base.join("opq/lower"), "l").unwrap();
        fs::write(base.join("gone/deep/f"), "f").unwrap();
        fs::write(base.join("keep/k"), "k").unwrap();
        fs::write(base.join("file2dir"), "was a file").unwrap();
        symlink("/etc/a", base.join("link")).unwrap();

        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::write(layer.join("etc/a"), "a2").unwrap();
        fs::write(layer.join("etc/new"), "n").unwrap();
        mknod(&layer.join("etc/b"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        mknod(&layer.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        fs::create_dir_all(layer.join("opq")).unwrap();
        xattr::set(layer.join("opq"), OPAQUE, b"y").unwrap();
        fs::write(layer.join("opq/upper"), "u").unwrap();
        fs::create_dir_all(layer.join("file2dir")).unwrap();
        fs::write(layer.join("file2dir/in"), "i").unwrap();
        fs::write(layer.join("replaced"), "now a file").unwrap();
        symlink("/etc/new", layer.join("link")).unwrap();

        let mut seen = 0;
        apply(&layer, &base, &mut |p| seen = p.files).unwrap();
        assert_eq!(
            tree(&base),
            [
                "etc/",
                "etc/a: a2",
                "etc/new: n",
                "etc/old/",
                "etc/old/x: x",
                "file2dir/",
                "file2dir/in: i",
                "keep/",
                "keep/k: k",
                "link -> /etc/new",
                "opq/",
                "opq/upper: u",
                "replaced: now a file",
            ]
        );
        assert!(seen >= 5, "{seen}");
        // The opaque mark is overlayfs' own: it is not carried into the version.
        assert_eq!(xattr::get(base.join("opq"), OPAQUE).unwrap(), None);
    }

    #[test]
    fn a_symlink_in_the_base_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let (base, layer, outside) = (
            t.path().join("base"),
            t.path().join("layer"),
            t.path().join("outside"),
        );
        fs::create_dir_all(&base).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        symlink(&outside, base.join("etc")).unwrap();
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::write(layer.join("etc/secret"), "overwritten?").unwrap();
        mknod(&layer.join("gone"), SFlag::S_IFCHR, Mode::empty(), 0).unwrap();
        apply(&layer, &base, &mut |_| {}).unwrap();
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "s");
        assert_eq!(tree(&base), ["etc/", "etc/secret: overwritten?"]);
    }

    #[test]
    fn hostile_entries_of_a_layer_are_copied_as_they_are() {
        use std::os::unix::fs::FileTypeExt;
        let t = tempfile::tempdir().unwrap();
        let (base, layer, outside) = (
            t.path().join("base"),
            t.path().join("layer"),
            t.path().join("outside"),
        );
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("secret"), "s").unwrap();
        symlink(outside.join("secret"), layer.join("etc/leak")).unwrap();
        symlink(&outside, layer.join("etc/dir")).unwrap();
        mknod(&layer.join("etc/fifo"), SFlag::S_IFIFO, Mode::S_IRWXU, 0).unwrap();
        let f = fs::File::create(layer.join("etc/huge")).unwrap();
        f.set_len(20 << 30).unwrap();
        apply(&layer, &base, &mut |_| {}).unwrap();
        assert_eq!(
            fs::read_link(base.join("etc/leak")).unwrap(),
            outside.join("secret")
        );
        assert_eq!(fs::read_link(base.join("etc/dir")).unwrap(), outside);
        assert!(
            fs::symlink_metadata(base.join("etc/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        let md = fs::symlink_metadata(base.join("etc/huge")).unwrap();
        assert_eq!(md.len(), 20 << 30);
        assert!(md.blocks() < 1024, "{} blocks", md.blocks());
        assert_eq!(fs::read_to_string(outside.join("secret")).unwrap(), "s");
    }
}
