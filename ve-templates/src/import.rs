//! Filling a new template version from a source: a directory tree, a tar archive
//! (plain, gzip or zstd) or an OCI image layout (oci.rs, which shares the tar
//! extraction here). Ownership, modes, modification times (of directories too),
//! hard links, symlinks, FIFOs and extended attributes (file capabilities among
//! them) are kept; overlayfs' own `trusted.overlay.*` attributes are not, as they
//! would steer the overlay a VE mounts on the version. Device nodes are never
//! imported: a VE's /dev is made by vectl at start.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mknod, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchownat};

use crate::debootstrap::Debootstrap;
use crate::{Error, Result, io_err, oci};

/// Where a template version's tree comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A directory holding a root file system.
    Dir(PathBuf),
    /// A tar archive of a root file system: plain, `.gz` or `.zst` (detected from
    /// its first bytes, not its name).
    Tar(PathBuf),
    /// A Debian or Ubuntu tree made by debootstrap from a mirror.
    Debootstrap(Debootstrap),
    /// A version's tree (`base`, version `on` of the template) with an
    /// overlayfs upper layer applied: what a build VE on that version changed.
    /// Published only if `on` is still the latest version. `what` is recorded
    /// as the source (`run:CMD on NAME@V`).
    Build {
        base: PathBuf,
        on: u32,
        layer: PathBuf,
        what: String,
    },
    /// A local OCI image layout (`oci-layout`, `index.json`, `blobs/`): its image's
    /// layers are applied in order with their whiteouts. `DIR:REF` picks the image
    /// whose `org.opencontainers.image.ref.name` is REF when `DIR:REF` itself does
    /// not exist.
    OciLayout(PathBuf),
}

/// How far an import has got, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub files: u64,
    pub bytes: u64,
    /// What a multi-stage source is doing (`retrieving`, `configuring`); `files`
    /// then counts the stage's steps.
    pub stage: Option<&'static str>,
}

impl Source {
    /// Checks the source exists and is of the right kind, before anything is created.
    pub(crate) fn check(&self) -> Result<()> {
        let bad = |path: &Path, reason: String| Error::BadSource {
            path: path.to_path_buf(),
            reason,
        };
        match self {
            Source::Dir(p) => {
                let md = fs::metadata(p).map_err(|e| bad(p, io_reason(&e)))?;
                if !md.is_dir() {
                    return Err(bad(p, "not a directory".into()));
                }
                fs::read_dir(p).map_err(|e| bad(p, io_reason(&e)))?;
            }
            Source::Tar(p) => {
                let md = fs::metadata(p).map_err(|e| bad(p, io_reason(&e)))?;
                if !md.is_file() {
                    return Err(bad(p, "not a regular file".into()));
                }
                fs::File::open(p).map_err(|e| bad(p, io_reason(&e)))?;
            }
            Source::Debootstrap(d) => d.check()?,
            Source::Build { base, layer, .. } => {
                for p in [base, layer] {
                    if !fs::metadata(p).map_err(|e| bad(p, io_reason(&e)))?.is_dir() {
                        return Err(bad(p, "not a directory".into()));
                    }
                }
            }
            Source::OciLayout(p) => {
                oci::Image::open(p)?;
            }
        }
        Ok(())
    }

    /// A short description for the version's metadata.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Dir(p) => format!("dir:{}", p.display()),
            Source::Tar(p) => format!("tar:{}", p.display()),
            Source::Debootstrap(d) => d.describe(),
            Source::Build { what, .. } => what.clone(),
            Source::OciLayout(p) => format!(
                "oci:{}",
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .display()
            ),
        }
    }
}

pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound => "no such file or directory".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// A filled tree: what to record and what to tell.
#[derive(Debug)]
pub(crate) struct Filled {
    /// The source as the version's metadata records it (`oci:` ones name the
    /// manifest's digest).
    pub(crate) source: String,
    /// Warnings worth showing the operator (skipped device nodes, a tree without an
    /// init...).
    pub(crate) warnings: Vec<String>,
}

/// Fills `dest` (an empty directory) from `source`.
pub(crate) fn fill(
    source: &Source,
    dest: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Filled> {
    let mut warnings = Vec::new();
    let mut skipped = Skipped::default();
    let mut described = source.describe();
    match source {
        Source::Dir(src) => {
            refuse_nesting(src, dest)?;
            let top = SrcDir::open(src)?;
            let mut copier = Copier::new(top.md.dev(), progress);
            copier.copy_dir_contents(&top, dest)?;
            apply_metadata(&top.path(), src, dest, &top.md)?;
            (copier.report)(copier.progress);
            skipped = copier.skipped;
        }
        Source::Build { base, layer, .. } => {
            // A pool that snapshots gave `dest` the base already.
            let empty = fs::read_dir(dest).map_err(io_err(dest))?.next().is_none();
            if empty {
                let top = SrcDir::open(base)?;
                let mut copier = Copier::new(top.md.dev(), progress);
                copier.copy_dir_contents(&top, dest)?;
                apply_metadata(&top.path(), base, dest, &top.md)?;
            }
            crate::layer::apply(layer, dest, progress)?;
        }
        Source::Debootstrap(d) => warnings.extend(d.fill(dest, progress)?),
        Source::Tar(archive) => {
            let mut unpacker = Unpacker::new(dest, progress, &mut skipped);
            if unpacker.unpack(open_archive(archive)?, archive, None)? == 0 {
                return Err(Error::BadArchive {
                    path: archive.clone(),
                    reason: "the archive is empty".into(),
                });
            }
            unpacker.finish()?;
        }
        Source::OciLayout(layout) => {
            let image = oci::Image::open(layout)?;
            warnings.extend(image.warnings.iter().cloned());
            let mut unpacker = Unpacker::new(dest, progress, &mut skipped);
            image.apply(&mut unpacker)?;
            unpacker.finish()?;
            described = image.describe();
        }
    }
    if skipped.devices > 0 {
        warnings.push(format!(
            "skipped {} device node(s): a VE's /dev is provided by vectl",
            skipped.devices
        ));
    }
    if skipped.unsafe_paths > 0 {
        warnings.push(format!(
            "skipped {} archive member(s) with paths outside the tree",
            skipped.unsafe_paths
        ));
    }
    if skipped.mounts > 0 {
        warnings.push(format!(
            "did not descend into {} directory(ies) on other file systems",
            skipped.mounts
        ));
    }
    if skipped.sockets > 0 {
        warnings.push(format!("skipped {} socket(s)", skipped.sockets));
    }
    let init = dest.join("sbin/init");
    if fs::symlink_metadata(&init).is_err() {
        warnings.push("the tree has no /sbin/init: VEs need `--init CMD`".into());
    }
    Ok(Filled {
        source: described,
        warnings,
    })
}

/// Refuses a source directory that holds the new version itself (`/`, or any
/// directory above the pool): the copy would never end.
fn refuse_nesting(src: &Path, dest: &Path) -> Result<()> {
    let src_abs = fs::canonicalize(src).map_err(io_err(src))?;
    let dest_abs = fs::canonicalize(dest).map_err(io_err(dest))?;
    if dest_abs.starts_with(&src_abs) {
        return Err(Error::BadSource {
            path: src.to_path_buf(),
            reason: format!(
                "holds the template store ({}): give a directory outside it",
                dest_abs.parent().unwrap_or(&dest_abs).display()
            ),
        });
    }
    Ok(())
}

/// What an import left out, for the operator's warnings.
#[derive(Debug, Default)]
pub(crate) struct Skipped {
    devices: u64,
    sockets: u64,
    unsafe_paths: u64,
    mounts: u64,
}

/// Copies trees with their metadata, hard links kept.
pub(crate) struct Copier<'a> {
    /// Hard links seen: (dev, inode) of the source → first destination path.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories on other devices (mounts) are not descended into.
    root_dev: u64,
    pub(crate) progress: Progress,
    pub(crate) report: &'a mut dyn FnMut(Progress),
    skipped: Skipped,
}

impl<'a> Copier<'a> {
    pub(crate) fn new(root_dev: u64, report: &'a mut dyn FnMut(Progress)) -> Copier<'a> {
        Copier {
            links: HashMap::new(),
            root_dev,
            progress: Progress::default(),
            report,
            skipped: Skipped::default(),
        }
    }

    pub(crate) fn copy_dir_contents(&mut self, src: &SrcDir, dst: &Path) -> Result<()> {
        for name in src.names()? {
            let (s, shown) = src.entry(&name);
            self.copy_entry(&s, &shown, &dst.join(&name))?;
        }
        Ok(())
    }

    /// Copies the entry `src` (a path from [`SrcDir::entry`], named `shown`
    /// in messages) to `dst`.
    pub(crate) fn copy_entry(&mut self, src: &Path, shown: &Path, dst: &Path) -> Result<()> {
        let md = fs::symlink_metadata(src).map_err(io_err(shown))?;
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, dst).map_err(io_err(dst))?;
                return Ok(());
            }
            self.links.insert((md.dev(), md.ino()), dst.to_path_buf());
        }
        if ft.is_dir() {
            fs::create_dir(dst).map_err(io_err(dst))?;
            if md.dev() == self.root_dev {
                let sub = SrcDir::open_unchanged(src, shown, &md)?;
                self.copy_dir_contents(&sub, dst)?;
                // Its attributes from the directory copied, whatever is at
                // its path by now.
                apply_metadata(&sub.path(), shown, dst, &md)?;
                self.counted();
                return Ok(());
            }
            self.skipped.mounts += 1;
        } else if ft.is_file() {
            let mut from = open_unchanged(src, shown, &md)?;
            let mut to = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dst)
                .map_err(io_err(dst))?;
            copy_sparse(&mut from, &mut to, md.len()).map_err(io_err(dst))?;
            self.progress.bytes += md.len();
        } else if ft.is_symlink() {
            let target = fs::read_link(src).map_err(io_err(shown))?;
            std::os::unix::fs::symlink(&target, dst).map_err(io_err(dst))?;
        } else if ft.is_fifo() {
            mknod(dst, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)
                .map_err(|e| io_err(dst)(e.into()))?;
        } else if ft.is_socket() {
            self.skipped.sockets += 1;
            return Ok(());
        } else {
            // Character and block devices.
            self.skipped.devices += 1;
            return Ok(());
        }
        apply_metadata(src, shown, dst, &md)?;
        self.counted();
        Ok(())
    }

    fn counted(&mut self) {
        self.progress.files += 1;
        if self.progress.files.is_multiple_of(512) {
            (self.report)(self.progress);
        }
    }
}

/// A directory of a tree being copied, held open. Its entries are looked up
/// below this very directory (`/proc/self/fd/N/NAME`, whose last component is
/// never followed), never again through its path: a tree that changes while
/// it is copied (a running VE's root given to `--from-dir`) cannot turn one of
/// its directories into a symlink to the host's files between the look and
/// the copy.
pub(crate) struct SrcDir {
    fd: OwnedFd,
    /// Its path, for messages.
    pub(crate) shown: PathBuf,
    /// What it is (`fstat` of the handle).
    pub(crate) md: fs::Metadata,
}

impl SrcDir {
    /// Opens the directory `path`, a path the host trusts (symlinks in it are
    /// followed).
    pub(crate) fn open(path: &Path) -> Result<SrcDir> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(path)
            .map_err(io_err(path))?;
        let md = f.metadata().map_err(io_err(path))?;
        Ok(SrcDir {
            fd: f.into(),
            shown: path.to_path_buf(),
            md,
        })
    }

    /// Opens the directory `src` (an entry of a [`SrcDir`]) that `md` (its
    /// `lstat`) describes, refusing anything else that is there now (a
    /// symlink swapped in since is never followed).
    pub(crate) fn open_unchanged(src: &Path, shown: &Path, md: &fs::Metadata) -> Result<SrcDir> {
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(src)
            .map_err(|e| match e.raw_os_error() {
                // (O_DIRECTORY makes a symlink ENOTDIR rather than ELOOP.)
                Some(libc::ELOOP | libc::ENOTDIR) => {
                    if fs::symlink_metadata(src).is_ok_and(|m| m.file_type().is_symlink()) {
                        changed(shown, "now a symlink")
                    } else {
                        changed(shown, "no longer a directory")
                    }
                }
                _ => io_err(shown)(e),
            })?;
        let now = f.metadata().map_err(io_err(shown))?;
        if !now.is_dir() || now.dev() != md.dev() || now.ino() != md.ino() {
            return Err(changed(shown, "now another directory"));
        }
        Ok(SrcDir {
            fd: f.into(),
            shown: shown.to_path_buf(),
            md: now,
        })
    }

    /// The directory itself as a path whose last component (`.`) is no
    /// symlink, for calls that take paths (`lgetxattr`).
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/.", self.fd.as_raw_fd()))
    }

    /// The entry `name`: the path to look it up by (below this directory's
    /// handle; its last component is not followed by the `l*` calls and
    /// `O_NOFOLLOW` opens used on it), and its path for messages.
    pub(crate) fn entry(&self, name: &OsStr) -> (PathBuf, PathBuf) {
        (
            PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd())).join(name),
            self.shown.join(name),
        )
    }

    /// Its entries' names, sorted.
    pub(crate) fn names(&self) -> Result<Vec<OsString>> {
        crate::tree::dir_names(&self.fd).map_err(io_err(&self.shown))
    }
}

fn changed(shown: &Path, what: &str) -> Error {
    Error::BadSource {
        path: shown.to_path_buf(),
        reason: format!("changed while being copied ({what})"),
    }
}

/// Copies the regular file `from` (`len` bytes when it was looked at) into
/// the new, empty file `to`, hole for hole: a huge sparse file stays sparse
/// and takes no time, where copying it whole would write out every zero.
/// Where the file system cannot tell holes, all of it is copied.
fn copy_sparse(from: &mut fs::File, to: &mut fs::File, len: u64) -> io::Result<()> {
    use rustix::fs::{SeekFrom as At, seek};
    use std::io::{Seek, SeekFrom};
    let mut pos = 0;
    while pos < len {
        let data = match seek(&*from, At::Data(pos)) {
            Ok(d) => d.min(len),
            // Only a hole follows.
            Err(e) if e == rustix::io::Errno::NXIO => break,
            Err(_) => pos,
        };
        let end = match seek(&*from, At::Hole(data)) {
            Ok(h) => h.min(len),
            Err(_) => len,
        };
        if end <= data {
            break;
        }
        from.seek(SeekFrom::Start(data))?;
        to.seek(SeekFrom::Start(data))?;
        // std's copy uses copy_file_range: a reflink on btrfs, in-kernel elsewhere.
        let n = io::copy(&mut Read::take(&*from, end - data), to)?;
        if n < end - data {
            // The file shrank meanwhile (a tree that changes).
            break;
        }
        pos = end;
    }
    to.set_len(len)
}

/// Opens the regular file `src` for reading, refusing anything but the file `md`
/// (its `lstat`) describes: a symlink swapped in since is never followed (it
/// could lead to /etc/shadow), and another file or a FIFO there is refused.
fn open_unchanged(src: &Path, shown: &Path, md: &fs::Metadata) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        // O_NONBLOCK: opening a FIFO put there does not wait for a writer.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(src)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                changed(shown, "now a symlink")
            } else {
                io_err(shown)(e)
            }
        })?;
    let now = file.metadata().map_err(io_err(shown))?;
    if !now.is_file() || now.dev() != md.dev() || now.ino() != md.ino() {
        return Err(changed(shown, "now another file"));
    }
    Ok(file)
}

/// Gives `dst` the owner, mode, extended attributes and times of `src` (named
/// `shown` in messages; `md` is its `lstat`), in the order that keeps them:
/// chown clears set-id bits and file capabilities, so it goes first.
pub(crate) fn apply_metadata(
    src: &Path,
    shown: &Path,
    dst: &Path,
    md: &fs::Metadata,
) -> Result<()> {
    let is_link = md.file_type().is_symlink();
    fchownat(
        AT_FDCWD,
        dst,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(dst)(e.into()))?;
    if !is_link {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))
            .map_err(io_err(dst))?;
    }
    copy_xattrs(src, shown, dst)?;
    let atime = TimeSpec::new(md.atime(), md.atime_nsec());
    let mtime = TimeSpec::new(md.mtime(), md.mtime_nsec());
    utimensat(
        AT_FDCWD,
        dst,
        &atime,
        &mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err(dst)(e.into()))?;
    Ok(())
}

/// Copies extended attributes (without following symlinks). Overlayfs' own
/// `trusted.overlay.*` attributes are not carried over: they describe another mount.
fn copy_xattrs(src: &Path, shown: &Path, dst: &Path) -> Result<()> {
    let names = match xattr::list(src) {
        Ok(n) => n,
        Err(e) if is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(io_err(shown)(e)),
    };
    for name in names {
        if is_overlay_xattr(&name) {
            continue;
        }
        let Some(value) = xattr::get(src, &name).map_err(io_err(shown))? else {
            continue;
        };
        match xattr::set(dst, &name, &value) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => {}
            Err(e) => return Err(io_err(dst)(e)),
        }
    }
    Ok(())
}

/// Overlayfs' own attributes (`trusted.overlay.opaque`, `.redirect`,
/// `.metacopy`...): in a version, the lower layer of VEs' overlays, they would
/// change what those overlays show.
fn is_overlay_xattr(name: &OsStr) -> bool {
    name.as_bytes().starts_with(b"trusted.overlay.")
}

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

fn open_archive(path: &Path) -> Result<Box<dyn Read>> {
    let file = BufReader::new(fs::File::open(path).map_err(io_err(path))?);
    decompress(file, path)
}

/// The tar stream in `r`: plain, gzip or zstd, told by its first bytes. `path`
/// names the archive in errors.
pub(crate) fn decompress<'a>(mut r: impl BufRead + 'a, path: &Path) -> Result<Box<dyn Read + 'a>> {
    let bad = |reason: String| Error::BadArchive {
        path: path.to_path_buf(),
        reason,
    };
    let magic = r.fill_buf().map_err(io_err(path))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let dec =
            zstd::stream::read::Decoder::with_buffer(r).map_err(|e| bad(format!("zstd: {e}")))?;
        Ok(Box::new(dec))
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Err(bad(
            "xz compression is not supported; use gzip or zstd".into()
        ))
    } else if magic.starts_with(b"BZh") {
        Err(bad(
            "bzip2 compression is not supported; use gzip or zstd".into()
        ))
    } else {
        Ok(Box::new(r))
    }
}

/// An unpack error with its causes, on one line: the tar crate's own message
/// ("failed to unpack `x`") says nothing of why; its source does ("File exists
/// (os error 17) when hard linking ...").
fn with_causes(e: &io::Error) -> String {
    let mut text = e.to_string();
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        next = cause.source();
    }
    printable(&text)
}

/// `text` fit for a one-line message: control characters become `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A tar error for people: no archive bytes quoted (the tar crate quotes the
/// header it could not parse, which for a wrong file is its content).
fn tar_reason(e: &io::Error, members: u64) -> String {
    if members == 0 && e.kind() != io::ErrorKind::UnexpectedEof {
        return "no tar header at the start of the file".into();
    }
    let text = e.to_string();
    let text = text.split(" when getting").next().unwrap_or("");
    let clean: String = text
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{fffd}' {
                '?'
            } else {
                c
            }
        })
        .take(120)
        .collect();
    format!("member {}: {clean}", members + 1)
}

/// What an OCI layer's rules make of a tar member.
pub(crate) enum Member {
    /// Extract it.
    Extract,
    /// The rules dealt with it (a whiteout): nothing is extracted.
    Done,
}

/// Rules that see each member of a tar stream before it is extracted: an OCI
/// layer's whiteouts.
pub(crate) trait MemberRules {
    /// `path` is the member's path inside the tree: relative, without `.` or `..`
    /// components, empty for the root itself.
    fn member(&mut self, dest: &Path, path: &Path, kind: tar::EntryType) -> Result<Member>;
}

/// Extracts tar streams into a tree, counting what it extracts and skips.
/// [`Unpacker::finish`] after the last stream gives directories their times.
pub(crate) struct Unpacker<'a> {
    dest: &'a Path,
    done: Progress,
    report: &'a mut dyn FnMut(Progress),
    skipped: &'a mut Skipped,
    /// Directories' modification times from their (last) headers, by path in
    /// the tree: set at the end, as extracting into a directory changes it.
    dir_times: HashMap<PathBuf, u64>,
}

impl<'a> Unpacker<'a> {
    pub(crate) fn new(
        dest: &'a Path,
        report: &'a mut dyn FnMut(Progress),
        skipped: &'a mut Skipped,
    ) -> Unpacker<'a> {
        Unpacker {
            dest,
            done: Progress::default(),
            report,
            skipped,
            dir_times: HashMap::new(),
        }
    }

    /// Gives the directories the streams held their modification times from
    /// the headers, deepest first. A path that is no longer a directory (a
    /// later layer replaced it), or that leads through a symlink, is left
    /// alone: nothing outside the tree is touched.
    pub(crate) fn finish(&mut self) -> Result<()> {
        let mut dirs: Vec<(PathBuf, u64)> = self.dir_times.drain().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, mtime) in dirs {
            let Some(dir) = resolve_dir(self.dest, &rel)? else {
                continue;
            };
            let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
            utimensat(AT_FDCWD, &dir, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(|e| io_err(&dir)(e.into()))?;
        }
        Ok(())
    }

    /// Extracts every member of `reader`, the tar stream of `archive` (named in
    /// errors), letting `rules` see each one first. Members are never written
    /// outside the tree: `..` paths are skipped, absolute ones land inside it, and
    /// nothing is written through a symlink that leads out. Device nodes are
    /// skipped. Returns the number of members.
    pub(crate) fn unpack(
        &mut self,
        reader: impl Read,
        archive: &Path,
        mut rules: Option<&mut dyn MemberRules>,
    ) -> Result<u64> {
        let bad = |reason: String| Error::BadArchive {
            path: archive.to_path_buf(),
            reason,
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.set_preserve_ownerships(true);
        tar.set_preserve_mtime(true);
        // Extended attributes are set below (the tar crate sets them on regular
        // files only, and all of them).
        tar.set_unpack_xattrs(false);
        tar.set_overwrite(true);
        let mut members = 0u64;
        for entry in tar.entries().map_err(|e| bad(tar_reason(&e, 0)))? {
            let mut entry = entry.map_err(|e| bad(tar_reason(&e, members)))?;
            members += 1;
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let name = entry
                .path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let Some(path) = entry.path().ok().and_then(|p| inside(&p)) else {
                self.skipped.unsafe_paths += 1;
                continue;
            };
            if let Some(rules) = rules.as_deref_mut()
                && let Member::Done = rules.member(self.dest, &path, kind)?
            {
                continue;
            }
            if kind.is_character_special() || kind.is_block_special() {
                self.skipped.devices += 1;
                continue;
            }
            let size = entry.header().size().unwrap_or(0);
            let xattrs = member_xattrs(&mut entry);
            let unpacked = entry.unpack_in(self.dest).map_err(|e| {
                let mut reason = with_causes(&e);
                if reason.contains("outside of destination") {
                    // The tar crate's check: the member's parent, or a hard
                    // link's target, resolves to a place outside the tree.
                    reason = "refused: it would be written outside the template (through a symlink, or as a hard link to a path outside)".into();
                }
                Error::BadMember {
                    path: archive.to_path_buf(),
                    member: printable(&name),
                    reason,
                }
            })?;
            if !unpacked {
                self.skipped.unsafe_paths += 1;
                continue;
            }
            if path.as_os_str().is_empty() {
                // The tree's root: the tar crate leaves it as it is.
                continue;
            }
            // Where unpack_in put it (it checked that this is inside the tree).
            let target = self.dest.join(&path);
            if kind.is_fifo() {
                // The tar crate makes FIFOs regular files.
                make_fifo(&target, entry.header()).map_err(|e| bad(format!("{name}: {e}")))?;
            }
            if !kind.is_symlink() && !kind.is_hard_link() {
                for (key, value) in &xattrs {
                    match xattr::set(&target, key, value) {
                        Ok(()) => {}
                        Err(e) if is_unsupported(&e) => {}
                        Err(e) => {
                            return Err(bad(format!(
                                "{name}: extended attribute {}: {e}",
                                key.to_string_lossy()
                            )));
                        }
                    }
                }
            }
            if kind.is_dir()
                && let Ok(mtime) = entry.header().mtime()
            {
                self.dir_times.insert(path.clone(), mtime);
            }
            self.done.files += 1;
            self.done.bytes += size;
            if self.done.files.is_multiple_of(512) {
                (self.report)(self.done);
            }
        }
        (self.report)(self.done);
        Ok(members)
    }
}

/// A member's extended attributes (its PAX `SCHILY.xattr.*` records), without
/// overlayfs' own.
fn member_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(OsString, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(|e| e.ok())
        .filter_map(|e| {
            let key = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?;
            let key = OsStr::from_bytes(key);
            (!key.is_empty() && !is_overlay_xattr(key))
                .then(|| (key.to_os_string(), e.value_bytes().to_vec()))
        })
        .collect()
}

/// Replaces the empty regular file the tar crate made of a FIFO member with a
/// FIFO of the member's owner, mode and time.
fn make_fifo(target: &Path, header: &tar::Header) -> io::Result<()> {
    let mode = header.mode()? & 0o7777;
    let (uid, gid) = (header.uid()?, header.gid()?);
    let bad_id = |_| io::Error::new(io::ErrorKind::InvalidData, "owner out of range");
    let uid = Uid::from_raw(u32::try_from(uid).map_err(bad_id)?);
    let gid = Gid::from_raw(u32::try_from(gid).map_err(bad_id)?);
    let mtime = i64::try_from(header.mtime()?).unwrap_or(i64::MAX);
    fs::remove_file(target)?;
    mknod(target, SFlag::S_IFIFO, Mode::from_bits_truncate(0o600), 0)?;
    // chown before chmod: chown clears set-id bits.
    fchownat(
        AT_FDCWD,
        target,
        Some(uid),
        Some(gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    fs::set_permissions(target, fs::Permissions::from_mode(mode))?;
    let t = TimeSpec::new(mtime, 0);
    utimensat(AT_FDCWD, target, &t, &t, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

/// `dest/rel` when every component of `rel` is a directory (not a symlink) in the
/// tree; `None` when one is missing or something else.
pub(crate) fn resolve_dir(dest: &Path, rel: &Path) -> Result<Option<PathBuf>> {
    let mut dir = dest.to_path_buf();
    for c in rel.components() {
        let Component::Normal(part) = c else {
            return Ok(None);
        };
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&dir)(e)),
        }
    }
    Ok(Some(dir))
}

/// A member's path made relative to the tree (leading `/` and `.` dropped); `None`
/// if it has a `..` component.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar member: path, type, content or link target, mode, mtime, PAX
    /// extended attributes.
    struct M<'a> {
        path: &'a str,
        kind: tar::EntryType,
        data: &'a str,
        mode: u32,
        mtime: u64,
        xattrs: &'a [(&'a str, &'a str)],
    }

    fn m<'a>(path: &'a str, kind: tar::EntryType, data: &'a str) -> M<'a> {
        M {
            path,
            kind,
            data,
            mode: if kind.is_dir() { 0o755 } else { 0o644 },
            mtime: 1_700_000_000,
            xattrs: &[],
        }
    }

    fn tar_of(members: &[M<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for mb in members {
            if !mb.xattrs.is_empty() {
                let mut records = Vec::new();
                for (k, v) in mb.xattrs {
                    let body = format!(" SCHILY.xattr.{k}={v}\n");
                    // A record's length counts its own digits.
                    let len = (1..)
                        .map(|digits| body.len() + digits)
                        .find(|n| n.to_string().len() + body.len() == *n)
                        .unwrap();
                    records.extend(format!("{len}{body}").into_bytes());
                }
                let mut h = tar::Header::new_ustar();
                h.set_path("PaxHeader").unwrap();
                h.set_entry_type(tar::EntryType::XHeader);
                h.set_size(records.len() as u64);
                h.set_cksum();
                b.append(&h, &records[..]).unwrap();
            }
            let mut h = tar::Header::new_ustar();
            h.set_path(mb.path).unwrap();
            h.set_entry_type(mb.kind);
            h.set_mode(mb.mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(mb.mtime);
            let data = if mb.kind.is_hard_link() || mb.kind.is_symlink() {
                h.set_link_name(mb.data).unwrap();
                ""
            } else {
                mb.data
            };
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Imports a tar archive of `members` into a fresh tree.
    fn import(members: &[M<'_>]) -> (tempfile::TempDir, Result<Filled>) {
        let t = tempfile::tempdir().unwrap();
        let archive = t.path().join("a.tar");
        fs::write(&archive, tar_of(members)).unwrap();
        let dest = t.path().join("tree");
        fs::create_dir(&dest).unwrap();
        let r = fill(&Source::Tar(archive), &dest, &mut |_| {});
        (t, r)
    }

    #[test]
    fn unpack_errors_say_why() {
        use tar::EntryType as T;
        let (_t, r) = import(&[
            m("a", T::Regular, "a"),
            m("b", T::Regular, "b"),
            m("b", T::Link, "a"),
        ]);
        let e = r.unwrap_err().to_string();
        assert!(e.contains("a.tar: cannot unpack b: "), "{e}");
        assert!(
            e.contains("File exists (os error 17) when hard linking"),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn overlay_xattrs_are_dropped_and_others_kept() {
        use tar::EntryType as T;
        let xattrs = &[("trusted.overlay.opaque", "y"), ("user.keep", "1")];
        let (t, r) = import(&[
            M {
                xattrs,
                ..m("opq", T::Directory, "")
            },
            M {
                xattrs,
                ..m("opq/f", T::Regular, "f")
            },
            M {
                xattrs: &[("trusted.overlay.metacopy", "")],
                ..m("meta", T::Regular, "m")
            },
        ]);
        r.unwrap();
        let tree = t.path().join("tree");
        for p in ["opq", "opq/f", "meta"] {
            assert_eq!(
                xattr::get(tree.join(p), "trusted.overlay.opaque").unwrap(),
                None,
                "{p}"
            );
            assert_eq!(
                xattr::get(tree.join(p), "trusted.overlay.metacopy").unwrap(),
                None,
                "{p}"
            );
        }
        for p in ["opq", "opq/f"] {
            assert_eq!(
                xattr::get(tree.join(p), "user.keep").unwrap().as_deref(),
                Some(&b"1"[..]),
                "{p}"
            );
        }
    }

    #[test]
    fn directory_times_and_fifos_are_kept() {
        use tar::EntryType as T;
        let (t, r) = import(&[
            M {
                mtime: 1_500_000_000,
                ..m("d", T::Directory, "")
            },
            M {
                mtime: 1_600_000_000,
                ..m("d/sub", T::Directory, "")
            },
            m("d/sub/f", T::Regular, "f"),
            m("d/g", T::Regular, "g"),
            M {
                mode: 0o640,
                mtime: 1_400_000_000,
                ..m("d/pipe", T::Fifo, "")
            },
        ]);
        r.unwrap();
        let tree = t.path().join("tree");
        let md = |p: &str| fs::symlink_metadata(tree.join(p)).unwrap();
        assert_eq!(md("d").mtime(), 1_500_000_000);
        assert_eq!(md("d/sub").mtime(), 1_600_000_000);
        assert_eq!(md("d/sub/f").mtime(), 1_700_000_000);
        let pipe = md("d/pipe");
        assert!(pipe.file_type().is_fifo(), "{pipe:?}");
        assert_eq!(pipe.mode() & 0o7777, 0o640);
        assert_eq!(pipe.mtime(), 1_400_000_000);
    }

    #[test]
    fn a_source_file_swapped_for_a_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, "s").unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let f = src.join("f");
        fs::write(&f, "f").unwrap();
        // What the copy saw, then the swap.
        let seen = fs::symlink_metadata(&f).unwrap();
        fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&secret, &f).unwrap();
        let e = open_unchanged(&f, &f, &seen).unwrap_err().to_string();
        assert!(
            e.contains("changed while being copied (now a symlink)"),
            "{e}"
        );
        // Another file in its place.
        fs::remove_file(&f).unwrap();
        fs::hard_link(&secret, &f).unwrap();
        let e = open_unchanged(&f, &f, &seen).unwrap_err().to_string();
        assert!(e.contains("now another file"), "{e}");
        // A symlink in the source is copied as a symlink, its target untouched.
        fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&secret, &f).unwrap();
        let dest = t.path().join("dest");
        fs::create_dir(&dest).unwrap();
        fill(&Source::Dir(src), &dest, &mut |_| {}).unwrap();
        assert_eq!(fs::read_link(dest.join("f")).unwrap(), secret);
    }

    #[test]
    fn a_source_directory_swapped_for_a_symlink_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        fs::create_dir(&host).unwrap();
        fs::write(host.join("shadow"), "secret").unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/f"), "f").unwrap();
        let top = SrcDir::open(&src).unwrap();
        let (etc, shown) = top.entry(OsStr::new("etc"));
        let seen = fs::symlink_metadata(&etc).unwrap();
        // Held open before the swap: still the directory it was.
        let held = SrcDir::open_unchanged(&etc, &shown, &seen).unwrap();
        fs::rename(src.join("etc"), src.join("etc.old")).unwrap();
        std::os::unix::fs::symlink(&host, src.join("etc")).unwrap();
        assert_eq!(held.names().unwrap(), [OsStr::new("f")]);
        let (f, _) = held.entry(OsStr::new("f"));
        assert_eq!(fs::read_to_string(f).unwrap(), "f");
        // Looked at before the swap, opened after: refused.
        let e = SrcDir::open_unchanged(&etc, &shown, &seen)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("changed while being copied (now a symlink)"),
            "{e}"
        );
        assert!(e.starts_with(&format!("{}:", shown.display())), "{e}");
        // Copied now, the symlink is a symlink, the host's file stays out.
        let dest = t.path().join("dest");
        fs::create_dir(&dest).unwrap();
        fill(&Source::Dir(src), &dest, &mut |_| {}).unwrap();
        assert_eq!(fs::read_link(dest.join("etc")).unwrap(), host);
        assert_eq!(fs::read_to_string(dest.join("etc.old/f")).unwrap(), "f");
    }

    #[test]
    fn sparse_files_are_copied_hole_for_hole() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let huge = 20u64 << 30;
        let f = fs::File::create(src.join("huge")).unwrap();
        f.set_len(huge).unwrap();
        f.write_all_at(b"middle", 7 << 30).unwrap();
        f.write_all_at(b"end", huge - 3).unwrap();
        fs::File::create(src.join("empty")).unwrap();
        fs::write(src.join("small"), "small").unwrap();
        let dest = t.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let started = std::time::Instant::now();
        fill(&Source::Dir(src), &dest, &mut |_| {}).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        let md = fs::metadata(dest.join("huge")).unwrap();
        assert_eq!(md.len(), huge);
        assert!(md.blocks() * 512 < 64 << 20, "{} blocks", md.blocks());
        let g = fs::File::open(dest.join("huge")).unwrap();
        let mut buf = [0u8; 6];
        g.read_exact_at(&mut buf, 7 << 30).unwrap();
        assert_eq!(&buf, b"middle");
        g.read_exact_at(&mut buf[..3], huge - 3).unwrap();
        assert_eq!(&buf[..3], b"end");
        g.read_exact_at(&mut buf, 1 << 30).unwrap();
        assert_eq!(buf, [0; 6]);
        assert_eq!(fs::read(dest.join("empty")).unwrap(), b"");
        assert_eq!(fs::read(dest.join("small")).unwrap(), b"small");
    }
}
