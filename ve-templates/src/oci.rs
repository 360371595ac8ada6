//! Importing a local OCI image layout (`oci-layout`, `index.json`, `blobs/`): the
//! choice of the image's manifest, a check of every blob read against its
//! descriptor's digest and size, and the layers applied in order with their
//! whiteouts. As the image spec's layer.md says, `.wh.NAME` and `.wh..wh..opq` hide
//! what *lower* layers put there, never what their own layer writes, before or
//! after the marker; the markers themselves are never created.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    ANNOTATION_REF_NAME, Arch, Descriptor, DigestAlgorithm, ImageIndex, ImageManifest, MediaType,
    OciLayout, Os, Platform,
};
use serde::de::DeserializeOwned;
use sha2::Digest as _;

use crate::import::{Member, MemberRules, Unpacker, decompress, io_reason, resolve_dir};
use crate::{Error, Result, io_err};

/// The largest `oci-layout`, index or manifest read: they are small JSON files.
const MAX_JSON: u64 = 4 << 20;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_INDEX: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_LAYERS: [&str; 2] = [
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadSource {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The image chosen in a layout, with its manifest read and checked.
#[derive(Debug)]
pub(crate) struct Image {
    dir: PathBuf,
    reference: Option<String>,
    manifest: Descriptor,
    manifest_path: PathBuf,
    layers: Vec<Descriptor>,
    /// For the operator: an image made for another platform.
    pub(crate) warnings: Vec<String>,
}

impl Image {
    /// Opens the layout `arg` names (`DIR`, or `DIR:REF` when that does not exist
    /// itself), chooses its image and reads its manifest. Layer blobs are checked
    /// for presence and size here, for their digest as they are applied.
    pub(crate) fn open(arg: &Path) -> Result<Image> {
        let (dir, reference) = locate(arg);
        check_layout(&dir)?;
        let index_path = dir.join("index.json");
        let index: ImageIndex = parse(&index_path, &read_small(&index_path)?, "image index")?;
        if index.schema_version() != 2 {
            return Err(bad(
                &index_path,
                format!("schema version {}: only 2 is known", index.schema_version()),
            ));
        }
        let mut warnings = Vec::new();
        let manifest = choose(
            &dir,
            &index_path,
            &index,
            reference.as_deref(),
            &mut warnings,
        )?;
        let (manifest_path, data) = read_blob(&dir, &manifest, &index_path, "image manifest")?;
        let m: ImageManifest = parse(&manifest_path, &data, "image manifest")?;
        if m.schema_version() != 2 {
            return Err(bad(
                &manifest_path,
                format!("schema version {}: only 2 is known", m.schema_version()),
            ));
        }
        if let Some(mt) = m.media_type()
            && !is_manifest(mt)
        {
            return Err(bad(
                &manifest_path,
                format!("not an image manifest: media type {mt}"),
            ));
        }
        if m.layers().is_empty() {
            return Err(bad(&manifest_path, "the image has no layers"));
        }
        for (i, layer) in m.layers().iter().enumerate() {
            let mt = layer.media_type();
            if !is_layer(mt) {
                return Err(bad(
                    &manifest_path,
                    format!(
                        "layer {}: unsupported media type {mt} (tar, tar+gzip and tar+zstd layers are)",
                        i + 1
                    ),
                ));
            }
            let path = blob_path(&dir, layer, &manifest_path)?;
            let md = open_blob(&path, layer)?.metadata().map_err(io_err(&path))?;
            if md.len() != layer.size() {
                return Err(size_mismatch(&path, layer, md.len()));
            }
        }
        Ok(Image {
            dir,
            reference,
            manifest,
            manifest_path,
            layers: m.layers().clone(),
            warnings,
        })
    }

    /// The source as a version's metadata records it:
    /// `oci:/abs/dir[:REF]@sha256:<manifest digest>`.
    pub(crate) fn describe(&self) -> String {
        let dir = std::path::absolute(&self.dir).unwrap_or_else(|_| self.dir.clone());
        let reference = self
            .reference
            .as_ref()
            .map(|r| format!(":{r}"))
            .unwrap_or_default();
        format!(
            "oci:{}{reference}@{}",
            dir.display(),
            self.manifest.digest()
        )
    }

    /// Applies the layers in order into the unpacker's tree. A blob whose content
    /// does not match its digest fails the import, whatever the tar reader made of
    /// it.
    pub(crate) fn apply(&self, unpacker: &mut Unpacker<'_>) -> Result<()> {
        for layer in &self.layers {
            let path = blob_path(&self.dir, layer, &self.manifest_path)?;
            let file = open_blob(&path, layer)?;
            let Some(hasher) = Hasher::new(layer.digest().algorithm()) else {
                return Err(unsupported_digest(&self.manifest_path, layer));
            };
            // Never more than one byte past the descriptor's size: a blob that
            // grew since it was checked fails here, it is not read to its end.
            let mut blob = Blob {
                file: file.take(layer.size().saturating_add(1)),
                hasher,
                read: 0,
            };
            let mut rules = Whiteouts {
                blob: &path,
                ours: HashSet::new(),
            };
            let unpacked = decompress(BufReader::new(&mut blob), &path)
                .and_then(|tar| unpacker.unpack(tar, &path, Some(&mut rules)));
            io::copy(&mut blob, &mut io::sink()).map_err(io_err(&path))?;
            if blob.read != layer.size() {
                return Err(size_mismatch(&path, layer, blob.read));
            }
            check_digest(&path, layer, blob.hasher.hex())?;
            unpacked?;
        }
        Ok(())
    }
}

/// `DIR` and the optional `REF` of `DIR:REF`; the suffix counts only when `arg`
/// itself does not exist and the part before the last ':' is a directory.
fn locate(arg: &Path) -> (PathBuf, Option<String>) {
    if fs::symlink_metadata(arg).is_err()
        && let Some((dir, reference)) = arg.to_str().and_then(|s| s.rsplit_once(':'))
        && !reference.is_empty()
        && !reference.contains('/')
        && Path::new(dir).is_dir()
    {
        return (PathBuf::from(dir), Some(reference.to_string()));
    }
    (arg.to_path_buf(), None)
}

fn check_layout(dir: &Path) -> Result<()> {
    let md = fs::metadata(dir).map_err(|e| bad(dir, io_reason(&e)))?;
    if !md.is_dir() {
        return Err(bad(dir, "not a directory (an OCI image layout is one)"));
    }
    let marker = dir.join("oci-layout");
    if fs::symlink_metadata(&marker).is_err() {
        return Err(bad(dir, "not an OCI image layout: no oci-layout file"));
    }
    let layout: OciLayout = parse(&marker, &read_small(&marker)?, "oci-layout file")?;
    if layout.image_layout_version() != "1.0.0" {
        return Err(bad(
            &marker,
            format!(
                "image layout version {:?}: only 1.0.0 is known",
                layout.image_layout_version()
            ),
        ));
    }
    if fs::symlink_metadata(dir.join("index.json")).is_err() {
        return Err(bad(dir, "not an OCI image layout: no index.json"));
    }
    Ok(())
}

/// Chooses the image manifest: the one named REF, the only one, or the one for
/// this host's platform. An index in the index is followed one level down.
fn choose(
    dir: &Path,
    index_path: &Path,
    index: &ImageIndex,
    reference: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Descriptor> {
    let names: Vec<&str> = index.manifests().iter().filter_map(ref_name).collect();
    let tops: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| reference.is_none() || ref_name(d) == reference)
        .collect();
    if let Some(r) = reference
        && tops.is_empty()
    {
        return Err(bad(
            index_path,
            format!("no image named {r:?} (names: {})", list(&names)),
        ));
    }
    // (name, manifest descriptor)
    let mut found: Vec<(Option<&str>, Descriptor)> = Vec::new();
    for top in tops {
        if is_index(top.media_type()) {
            let (path, data) = read_blob(dir, top, index_path, "image index")?;
            let nested: ImageIndex = parse(&path, &data, "image index")?;
            found.extend(
                nested
                    .manifests()
                    .iter()
                    .filter(|d| is_manifest(d.media_type()))
                    .map(|d| (ref_name(top), d.clone())),
            );
        } else if is_manifest(top.media_type()) {
            found.push((ref_name(top), top.clone()));
        }
    }
    let host = format!("{}/{}", Os::default(), Arch::default());
    if found.len() == 1 {
        let (_, only) = found.remove(0);
        if let Some(p) = only.platform()
            && !for_host(p)
        {
            warnings.push(format!(
                "the image is for {}, this host is {host}",
                platform(Some(p))
            ));
        }
        return Ok(only);
    }
    if found.is_empty() {
        return Err(bad(index_path, "no image manifest in the layout"));
    }
    let ours: Vec<&Descriptor> = found
        .iter()
        .filter(|(_, d)| d.platform().as_ref().is_some_and(for_host))
        .map(|(_, d)| d)
        .collect();
    if let [one] = ours[..] {
        return Ok(one.clone());
    }
    let images: Vec<String> = found
        .iter()
        .map(|(name, d)| match name {
            Some(n) => format!("{n} ({})", platform(d.platform().as_ref())),
            None => platform(d.platform().as_ref()),
        })
        .collect();
    let hint = if reference.is_none() && names.len() > 1 {
        "; name one with --oci-layout DIR:REF"
    } else {
        ""
    };
    Err(bad(
        index_path,
        format!(
            "{} images, {} for {host}: {}{hint}",
            found.len(),
            ours.len(),
            images.join(", ")
        ),
    ))
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()?
        .get(ANNOTATION_REF_NAME)
        .map(String::as_str)
}

fn for_host(p: &Platform) -> bool {
    *p.os() == Os::Linux && *p.architecture() == Arch::default()
}

fn platform(p: Option<&Platform>) -> String {
    match p {
        Some(p) => match p.variant() {
            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
            None => format!("{}/{}", p.os(), p.architecture()),
        },
        None => "no platform".into(),
    }
}

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn is_manifest(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageManifest) || mt.to_string() == DOCKER_MANIFEST
}

fn is_index(mt: &MediaType) -> bool {
    matches!(mt, MediaType::ImageIndex) || mt.to_string() == DOCKER_INDEX
}

/// Layer types vectl applies; their compression is told from the blob's first
/// bytes, as for tar imports.
fn is_layer(mt: &MediaType) -> bool {
    match mt {
        MediaType::ImageLayer
        | MediaType::ImageLayerGzip
        | MediaType::ImageLayerZstd
        | MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => true,
        MediaType::Other(t) => DOCKER_LAYERS.contains(&t.as_str()),
        _ => false,
    }
}

/// Reads a small file whole (`oci-layout`, `index.json`).
fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file = fs::File::open(path).map_err(|e| bad(path, io_reason(&e)))?;
    let mut data = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut data)
        .map_err(io_err(path))?;
    if data.len() as u64 > MAX_JSON {
        return Err(bad(path, format!("larger than {MAX_JSON} bytes")));
    }
    Ok(data)
}

fn parse<T: DeserializeOwned>(path: &Path, data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| bad(path, format!("not a valid {what}: {e}")))
}

/// Reads a JSON blob (an index or a manifest) and checks it against `desc`, which
/// `from` holds.
fn read_blob(dir: &Path, desc: &Descriptor, from: &Path, what: &str) -> Result<(PathBuf, Vec<u8>)> {
    let path = blob_path(dir, desc, from)?;
    if desc.size() > MAX_JSON {
        return Err(bad(
            &path,
            format!("{what} of {} bytes: larger than {MAX_JSON}", desc.size()),
        ));
    }
    let Some(mut hasher) = Hasher::new(desc.digest().algorithm()) else {
        return Err(unsupported_digest(from, desc));
    };
    let file = open_blob(&path, desc)?;
    let mut data = Vec::new();
    file.take(desc.size() + 1)
        .read_to_end(&mut data)
        .map_err(io_err(&path))?;
    if data.len() as u64 != desc.size() {
        return Err(size_mismatch(&path, desc, data.len() as u64));
    }
    hasher.update(&data);
    check_digest(&path, desc, hasher.hex())?;
    Ok((path, data))
}

/// `DIR/blobs/<algorithm>/<hex>`, for a digest that is a well-formed sha256 or
/// sha512 one: nothing in a digest can lead the path elsewhere.
fn blob_path(dir: &Path, desc: &Descriptor, from: &Path) -> Result<PathBuf> {
    let digest = desc.digest();
    let len = match digest.algorithm() {
        DigestAlgorithm::Sha256 => 64,
        DigestAlgorithm::Sha512 => 128,
        _ => return Err(unsupported_digest(from, desc)),
    };
    let hex = digest.digest();
    if hex.len() != len || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(bad(from, format!("malformed digest {digest}")));
    }
    Ok(dir
        .join("blobs")
        .join(digest.algorithm().as_ref())
        .join(hex))
}

fn unsupported_digest(from: &Path, desc: &Descriptor) -> Error {
    bad(
        from,
        format!(
            "digest {}: unsupported algorithm {} (sha256 and sha512 are)",
            desc.digest(),
            desc.digest().algorithm()
        ),
    )
}

/// Opens a blob, which must be a regular file: not a symlink (not followed,
/// so one to /dev/zero cannot make an import read forever), not a FIFO (opened
/// without waiting for a writer, then refused), not a device.
fn open_blob(path: &Path, desc: &Descriptor) -> Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                bad(
                    path,
                    format!(
                        "blob {} is a symlink: blobs must be regular files",
                        desc.digest()
                    ),
                )
            } else {
                missing(path, desc, &e)
            }
        })?;
    let md = file.metadata().map_err(io_err(path))?;
    if !md.is_file() {
        return Err(bad(
            path,
            format!("blob {} is not a regular file", desc.digest()),
        ));
    }
    Ok(file)
}

fn missing(path: &Path, desc: &Descriptor, e: &io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        bad(path, format!("missing blob {}", desc.digest()))
    } else {
        bad(path, io_reason(e))
    }
}

/// `size` is what was read; reads stop one byte past the descriptor's size.
fn size_mismatch(path: &Path, desc: &Descriptor, size: u64) -> Error {
    let got = if size > desc.size() {
        format!("more than {} bytes", desc.size())
    } else {
        format!("{size} bytes")
    };
    bad(
        path,
        format!(
            "size mismatch: {got}, the descriptor of {} says {}",
            desc.digest(),
            desc.size()
        ),
    )
}

fn check_digest(path: &Path, desc: &Descriptor, hex: String) -> Result<()> {
    if hex == desc.digest().digest() {
        return Ok(());
    }
    Err(bad(
        path,
        format!(
            "digest mismatch: expected {}, the content is {}:{hex}",
            desc.digest(),
            desc.digest().algorithm()
        ),
    ))
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(algorithm: &DigestAlgorithm) -> Option<Hasher> {
        match algorithm {
            DigestAlgorithm::Sha256 => Some(Hasher::Sha256(sha2::Sha256::new())),
            DigestAlgorithm::Sha512 => Some(Hasher::Sha512(sha2::Sha512::new())),
            _ => None,
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn hex(&mut self) -> String {
        let bytes = match self {
            Hasher::Sha256(h) => h.finalize_reset().to_vec(),
            Hasher::Sha512(h) => h.finalize_reset().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A layer blob read through its digest.
struct Blob {
    file: io::Take<fs::File>,
    hasher: Hasher,
    read: u64,
}

impl Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// One layer's whiteouts, and what the layer itself wrote (which they spare).
struct Whiteouts<'a> {
    blob: &'a Path,
    /// Paths this layer wrote, with their ancestors, relative to the tree.
    ours: HashSet<PathBuf>,
}

impl MemberRules for Whiteouts<'_> {
    fn member(&mut self, dest: &Path, path: &Path, kind: tar::EntryType) -> Result<Member> {
        let Some(name) = path.file_name() else {
            return Ok(Member::Extract);
        };
        let parent = path.parent().unwrap_or(Path::new(""));
        if let Some(hidden) = name.as_bytes().strip_prefix(b".wh.") {
            if hidden == b".wh..opq" {
                if let Some(dir) = resolve_dir(dest, parent)? {
                    for child in children(&dir)? {
                        self.hide(&dir.join(&child), &parent.join(&child))?;
                    }
                }
            } else if hidden.starts_with(b".wh.") {
                // Other aufs metadata (hard link directories): nothing to apply.
            } else if matches!(hidden, b"" | b"." | b"..") {
                return Err(Error::BadArchive {
                    path: self.blob.to_path_buf(),
                    reason: format!("{}: a whiteout that names no entry", path.display()),
                });
            } else if let Some(dir) = resolve_dir(dest, parent)? {
                let hidden = OsStr::from_bytes(hidden);
                self.hide(&dir.join(hidden), &parent.join(hidden))?;
            }
            return Ok(Member::Done);
        }
        self.make_room(dest, path, kind)?;
        for p in path.ancestors() {
            if p.as_os_str().is_empty() || !self.ours.insert(p.to_path_buf()) {
                break;
            }
        }
        Ok(Member::Extract)
    }
}

impl Whiteouts<'_> {
    /// Removes what lower layers have at `abs` (`rel` in the tree), sparing what
    /// this layer wrote. Symlinks are removed, never followed.
    fn hide(&self, abs: &Path, rel: &Path) -> Result<()> {
        let md = match fs::symlink_metadata(abs) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(abs)(e)),
        };
        if self.ours.contains(rel) {
            if md.is_dir() {
                for child in children(abs)? {
                    self.hide(&abs.join(&child), &rel.join(&child))?;
                }
            }
            return Ok(());
        }
        remove(abs, &md)
    }

    /// A member replaces what lower layers have at its path unless both are
    /// directories (whose contents then merge).
    fn make_room(&self, dest: &Path, path: &Path, kind: tar::EntryType) -> Result<()> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(());
        };
        // A parent that is not a plain directory in the tree: the tar reader's own
        // checks decide (it follows symlinks only inside the tree).
        let Some(dir) = resolve_dir(dest, parent)? else {
            return Ok(());
        };
        let abs = dir.join(name);
        match fs::symlink_metadata(&abs) {
            Ok(md) if md.is_dir() && kind.is_dir() => Ok(()),
            Ok(md) => remove(&abs, &md),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&abs)(e)),
        }
    }
}

fn remove(path: &Path, md: &fs::Metadata) -> Result<()> {
    // remove_dir_all does not follow symlinks.
    if md.is_dir() {
        fs::remove_dir_all(path).map_err(io_err(path))
    } else {
        fs::remove_file(path).map_err(io_err(path))
    }
}

fn children(dir: &Path) -> Result<Vec<OsString>> {
    fs::read_dir(dir)
        .map_err(io_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::{Filled, Source, fill};
    use serde_json::{Value, json};
    use std::os::unix::fs::MetadataExt;

    const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

    /// A layer member. Names go into the header raw, so `..` and absolute ones can
    /// be tested (the tar crate's setters refuse them).
    enum E<'a> {
        Dir(&'a str),
        File(&'a str, &'a str),
        Symlink(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Char(&'a str),
    }

    fn tar_of(entries: &[E<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let (name, kind, data, link, mode) = match e {
                E::Dir(n) => (*n, tar::EntryType::Directory, "", None, 0o755),
                E::File(n, d) => (*n, tar::EntryType::Regular, *d, None, 0o644),
                E::Symlink(n, l) => (*n, tar::EntryType::Symlink, "", Some(*l), 0o777),
                E::Hard(n, l) => (*n, tar::EntryType::Link, "", Some(*l), 0o644),
                E::Char(n) => (*n, tar::EntryType::Char, "", None, 0o666),
            };
            let mut h = tar::Header::new_ustar();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(nix::unistd::getuid().as_raw().into());
            h.set_gid(nix::unistd::getgid().as_raw().into());
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    fn sha256(data: &[u8]) -> String {
        let mut h = Hasher::Sha256(sha2::Sha256::new());
        h.update(data);
        h.hex()
    }

    /// An OCI image layout in a temporary directory.
    struct Layout(tempfile::TempDir);

    impl Layout {
        fn new() -> Layout {
            let l = Layout(tempfile::tempdir().unwrap());
            fs::write(
                l.path().join("oci-layout"),
                r#"{"imageLayoutVersion":"1.0.0"}"#,
            )
            .unwrap();
            fs::create_dir_all(l.path().join("blobs/sha256")).unwrap();
            l
        }

        /// A layout with one image of these layers (media type, blob).
        fn image(layers: &[(&str, Vec<u8>)]) -> Layout {
            let l = Layout::new();
            let m = l.manifest(layers, None);
            l.index(&[m]);
            l
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn blob_file(&self, digest: &Value) -> PathBuf {
            let d = digest.as_str().unwrap().replacen(':', "/", 1);
            self.path().join("blobs").join(d)
        }

        /// Stores a blob; its descriptor.
        fn desc(&self, media: &str, data: &[u8]) -> Value {
            let hex = sha256(data);
            fs::write(self.path().join("blobs/sha256").join(&hex), data).unwrap();
            json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": data.len()})
        }

        fn manifest_of(&self, layers: Vec<Value>) -> Value {
            let config = self.desc("application/vnd.oci.image.config.v1+json", b"{}");
            let m = json!({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": layers});
            self.desc(MANIFEST, &serde_json::to_vec(&m).unwrap())
        }

        /// A manifest of these layers, for `platform` (`os/arch`) if given.
        fn manifest(&self, layers: &[(&str, Vec<u8>)], platform: Option<&str>) -> Value {
            let layers = layers.iter().map(|(t, b)| self.desc(t, b)).collect();
            let mut d = self.manifest_of(layers);
            if let Some((os, arch)) = platform.and_then(|p| p.split_once('/')) {
                d["platform"] = json!({"os": os, "architecture": arch});
            }
            d
        }

        fn index(&self, manifests: &[Value]) {
            let i = json!({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests});
            fs::write(
                self.path().join("index.json"),
                serde_json::to_vec(&i).unwrap(),
            )
            .unwrap();
        }
    }

    fn named(mut d: Value, name: &str) -> Value {
        d["annotations"] = json!({ANNOTATION_REF_NAME: name});
        d
    }

    fn import(arg: &Path) -> (tempfile::TempDir, Result<Filled>) {
        let dest = tempfile::tempdir().unwrap();
        let r = fill(
            &Source::OciLayout(arg.to_path_buf()),
            dest.path(),
            &mut |_| {},
        );
        (dest, r)
    }

    fn read(p: &Path) -> String {
        fs::read_to_string(p).unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
    }

    /// Every path in a tree, relative, sorted.
    fn tree(dir: &Path) -> Vec<String> {
        fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
            for e in fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                out.push(p.strip_prefix(root).unwrap().display().to_string());
                if p.symlink_metadata().unwrap().is_dir() {
                    walk(root, &p, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(dir, dir, &mut out);
        out.sort();
        out
    }

    #[test]
    fn layers_apply_in_order_with_their_whiteouts() {
        let l1 = tar_of(&[
            E::Dir("etc"),
            E::File("etc/a", "1"),
            E::File("etc/b", "b"),
            E::File("etc/keep", "k"),
            E::Dir("opt"),
            E::File("opt/x", "x"),
            E::Dir("opt/sub"),
            E::File("opt/sub/y", "y"),
            E::Dir("var/lib/gone/deep"),
            E::File("var/lib/gone/f", "f"),
            E::File("var/lib/gone/deep/g", "g"),
            E::File("var/lib/stays", "s"),
            E::Dir("bin"),
            E::File("bin/busybox", "bb"),
            E::Symlink("bin/sh", "busybox"),
            E::Hard("bin/ls", "bin/busybox"),
            E::Dir("srv"),
            E::File("srv/data", "d"),
            E::File("sbin/init", "init"),
        ]);
        let l2 = tar_of(&[
            E::File("etc/a", "2"),
            E::File("etc/.wh.b", ""),
            // A whiteout spares what its own layer writes, before or after it.
            E::File("etc/mine", "m"),
            E::File("etc/.wh.mine", ""),
            E::Dir("opt"),
            E::File("opt/new", "n"),
            E::File("opt/.wh..wh..opq", ""),
            E::File("opt/after", "a"),
            E::File("var/lib/.wh.gone", ""),
            E::Hard("bin/cat", "bin/busybox"),
        ]);
        let l3 = tar_of(&[
            E::File("etc/.wh.a", ""),
            E::File("etc/b", "b3"),
            E::File("srv", "now a file"),
            E::Symlink("bin/sh", "/bin/busybox"),
            E::Dir("opt/sub"),
        ]);
        let layout = Layout::image(&[(TAR, l1), (GZIP, gzip(&l2)), (ZSTD, zstd(&l3))]);
        let (dest, r) = import(layout.path());
        let filled = r.unwrap();
        let t = dest.path();
        assert_eq!(filled.warnings, Vec::<String>::new());
        let abs = std::path::absolute(layout.path()).unwrap();
        assert!(
            filled
                .source
                .starts_with(&format!("oci:{}@sha256:", abs.display())),
            "{}",
            filled.source
        );
        assert_eq!(
            tree(&t.join("etc")),
            ["b", "keep", "mine"],
            "etc/a whited out by layer 3, etc/b back, etc/mine spared"
        );
        assert_eq!(read(&t.join("etc/b")), "b3");
        assert_eq!(read(&t.join("etc/mine")), "m");
        assert_eq!(tree(&t.join("opt")), ["after", "new", "sub"]);
        assert_eq!(tree(&t.join("var")), ["lib", "lib/stays"]);
        assert_eq!(read(&t.join("srv")), "now a file");
        assert_eq!(
            fs::read_link(t.join("bin/sh")).unwrap(),
            Path::new("/bin/busybox")
        );
        let ino = |p: &str| fs::symlink_metadata(t.join(p)).unwrap().ino();
        assert_eq!(ino("bin/ls"), ino("bin/busybox"));
        assert_eq!(ino("bin/cat"), ino("bin/busybox"));
        assert_eq!(read(&t.join("bin/cat")), "bb");
        let markers: Vec<String> = tree(t).into_iter().filter(|p| p.contains(".wh.")).collect();
        assert!(markers.is_empty(), "{markers:?}");
    }

    #[test]
    fn hostile_members_never_land_outside_the_tree() {
        let outside = tempfile::tempdir().unwrap();
        let o = outside.path();
        fs::write(o.join("victim"), "v").unwrap();
        fs::create_dir(o.join("vdir")).unwrap();
        fs::write(o.join("vdir/v"), "v").unwrap();
        let out = o.to_str().unwrap();
        let l1 = tar_of(&[
            E::File("/abs", "x"),
            E::File("../up", "x"),
            E::File("ok/../../up2", "x"),
            E::Char("dev/mem"),
            E::Symlink("out", out),
            E::File("sbin/init", ""),
        ]);
        // Whiteouts through a symlink that leads out remove nothing.
        let l2 = tar_of(&[
            E::File("out/.wh.victim", ""),
            E::File("out/vdir/.wh..wh..opq", ""),
            E::File("../.wh.victim", ""),
        ]);
        let layout = Layout::image(&[(TAR, l1), (TAR, l2)]);
        let (dest, r) = import(layout.path());
        let filled = r.unwrap();
        let t = dest.path();
        assert_eq!(read(&t.join("abs")), "x");
        assert!(!t.join("dev/mem").exists());
        assert_eq!(tree(o), ["vdir", "vdir/v", "victim"]);
        let above = t.parent().unwrap();
        assert!(!above.join("up").exists() && !above.join("up2").exists());
        let w = filled.warnings.join("\n");
        assert!(w.contains("skipped 1 device node"), "{w}");
        assert!(w.contains("skipped 3 archive member(s)"), "{w}");

        // Writes through that symlink or links to outside fail the import.
        for layer in [
            tar_of(&[E::Symlink("out", out), E::File("out/through", "x")]),
            tar_of(&[E::Symlink("out", out), E::Hard("hl", "out/victim")]),
            tar_of(&[E::Hard("hl", &format!("{out}/victim"))]),
            tar_of(&[E::Symlink("out", out), E::Dir("out/newdir")]),
        ] {
            let layout = Layout::image(&[(TAR, layer)]);
            let (_dest, r) = import(layout.path());
            let e = r.unwrap_err().to_string();
            assert!(e.contains("/blobs/sha256/"), "{e}");
            assert_eq!(tree(o), ["vdir", "vdir/v", "victim"]);
            assert_eq!(fs::metadata(o.join("victim")).unwrap().nlink(), 1);
        }

        // A whiteout that names the directory it is in, or its parent.
        for name in ["etc/.wh.", "etc/.wh..", "etc/.wh..."] {
            let layout =
                Layout::image(&[(TAR, tar_of(&[E::File("etc/f", ""), E::File(name, "")]))]);
            let (_dest, r) = import(layout.path());
            let e = r.unwrap_err().to_string();
            assert!(e.contains("a whiteout that names no entry"), "{name}: {e}");
        }
    }

    #[test]
    fn directory_times_are_set_after_the_last_layer_never_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let old = nix::sys::time::TimeSpec::new(1_000_000_000, 0);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            outside.path(),
            &old,
            &old,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let out = outside.path().to_str().unwrap();
        let l1 = tar_of(&[E::Dir("etc"), E::Dir("a"), E::File("sbin/init", "")]);
        let l2 = tar_of(&[E::File("etc/new", "n"), E::Symlink("a", out)]);
        let layout = Layout::image(&[(TAR, l1), (TAR, l2)]);
        let (dest, r) = import(layout.path());
        r.unwrap();
        let mtime = |p: &Path| fs::symlink_metadata(p).unwrap().mtime();
        assert_eq!(mtime(&dest.path().join("etc")), 1_700_000_000);
        assert_eq!(mtime(outside.path()), 1_000_000_000);
    }

    /// Imports `arg` in a thread: `None` if it has not finished in 20 s.
    fn import_within(arg: &Path) -> Option<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        let arg = arg.to_path_buf();
        std::thread::spawn(move || {
            let (_dest, r) = import(&arg);
            let _ = tx.send(r.map(|_| String::new()).unwrap_or_else(|e| e.to_string()));
        });
        rx.recv_timeout(std::time::Duration::from_secs(20)).ok()
    }

    #[test]
    fn blobs_that_are_not_regular_files_are_refused_at_once() {
        // An empty layer (the descriptor says 0 bytes, as /dev/zero's size is).
        let empty = sha256(b"");
        let desc = json!({"mediaType": TAR, "digest": format!("sha256:{empty}"), "size": 0});
        let make = |plant: &dyn Fn(&Path)| {
            let l = Layout::new();
            plant(&l.path().join("blobs/sha256").join(&empty));
            let m = l.manifest_of(vec![desc.clone()]);
            l.index(&[m]);
            l
        };
        let zero = make(&|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
        let e = import_within(zero.path()).expect("the import of a /dev/zero blob hangs");
        assert!(
            e.contains(&format!(
                "blobs/sha256/{empty}: blob sha256:{empty} is a symlink: blobs must be regular files"
            )),
            "{e}"
        );
        let fifo = make(&|p| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
        });
        let e = import_within(fifo.path()).expect("the import of a FIFO blob hangs");
        assert!(e.contains("is not a regular file"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn a_blob_that_grew_after_the_check_is_not_read_to_its_end() {
        let layer = tar_of(&[E::File("sbin/init", "init")]);
        let l = Layout::image(&[(TAR, layer.clone())]);
        let image = Image::open(l.path()).unwrap();
        let blob = l.path().join("blobs/sha256").join(sha256(&layer));
        let mut grown = layer.clone();
        grown.extend(std::iter::repeat_n(0u8, 1 << 20));
        fs::write(&blob, grown).unwrap();
        let dest = tempfile::tempdir().unwrap();
        let mut skipped = crate::import::Skipped::default();
        let mut report = |_| {};
        let e = image
            .apply(&mut Unpacker::new(dest.path(), &mut report, &mut skipped))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "size mismatch: more than {} bytes, the descriptor of sha256:",
                layer.len()
            )),
            "{e}"
        );
    }

    #[test]
    fn the_image_for_this_host_or_the_one_named_is_chosen() {
        let host = Arch::default().to_string();
        let others: Vec<&str> = ["amd64", "arm64", "s390x"]
            .into_iter()
            .filter(|a| *a != host)
            .take(2)
            .collect();
        let image = |l: &Layout, arch: &str| {
            let layer = tar_of(&[E::File("arch", arch), E::File("sbin/init", "")]);
            l.manifest(&[(TAR, layer)], Some(&format!("linux/{arch}")))
        };
        // Several platforms: this host's.
        let l = Layout::new();
        let ms = [image(&l, others[0]), image(&l, &host), image(&l, others[1])];
        l.index(&[
            named(ms[0].clone(), "a"),
            named(ms[1].clone(), "b"),
            named(ms[2].clone(), "c"),
        ]);
        let (dest, r) = import(l.path());
        r.unwrap();
        assert_eq!(read(&dest.path().join("arch")), host);
        // DIR:REF: the one named, with a warning when it is for another platform.
        let (dest, r) = import(Path::new(&format!("{}:c", l.path().display())));
        let filled = r.unwrap();
        assert_eq!(read(&dest.path().join("arch")), others[1]);
        assert!(filled.source.contains(":c@sha256:"), "{}", filled.source);
        assert!(
            filled.warnings[0].contains(&format!("for linux/{}", others[1])),
            "{:?}",
            filled.warnings
        );
        let (_, r) = import(Path::new(&format!("{}:nosuch", l.path().display())));
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("index.json: no image named \"nosuch\" (names: a, b, c)"),
            "{e}"
        );
        // Two for this host: name one.
        let l = Layout::new();
        l.index(&[
            named(image(&l, &host), "one"),
            named(image(&l, &host), "two"),
        ]);
        let (_, r) = import(l.path());
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains(&format!("2 images, 2 for linux/{host}: one (linux/{host})"))
                && e.contains("name one with --oci-layout DIR:REF"),
            "{e}"
        );
        // An index in the index is followed.
        let l = Layout::new();
        let nested = json!({"schemaVersion": 2, "mediaType": INDEX,
            "manifests": [image(&l, others[0]), image(&l, &host)]});
        let top = l.desc(INDEX, &serde_json::to_vec(&nested).unwrap());
        l.index(&[named(top, "multi")]);
        let (dest, r) = import(l.path());
        r.unwrap();
        assert_eq!(read(&dest.path().join("arch")), host);
    }

    #[test]
    fn corrupt_layouts_are_refused_naming_the_file() {
        let layer = || tar_of(&[E::File("sbin/init", "init")]);
        // Each case corrupts a fresh one-image layout; the error must contain
        // each of the returned strings.
        type Case = (&'static str, fn(&Layout) -> Vec<String>);
        let cases: Vec<Case> = vec![
            ("no index.json", |l| {
                fs::remove_file(l.path().join("index.json")).unwrap();
                vec![format!(
                    "{}: not an OCI image layout: no index.json",
                    l.path().display()
                )]
            }),
            ("no oci-layout", |l| {
                fs::remove_file(l.path().join("oci-layout")).unwrap();
                vec!["not an OCI image layout: no oci-layout file".into()]
            }),
            ("layout version", |l| {
                fs::write(
                    l.path().join("oci-layout"),
                    r#"{"imageLayoutVersion":"2.0.0"}"#,
                )
                .unwrap();
                vec![format!(
                    "{}/oci-layout: image layout version \"2.0.0\"",
                    l.path().display()
                )]
            }),
            ("bad JSON", |l| {
                fs::write(
                    l.path().join("index.json"),
                    "{\"schemaVersion\": 2, \"manif",
                )
                .unwrap();
                vec![format!(
                    "{}/index.json: not a valid image index: EOF",
                    l.path().display()
                )]
            }),
            ("empty index", |l| {
                l.index(&[]);
                vec!["index.json: no image manifest in the layout".into()]
            }),
            ("digest that is a path", |l| {
                l.index(&[
                    json!({"mediaType": MANIFEST, "digest": "sha256:../../etc/passwd", "size": 10}),
                ]);
                vec![
                    "index.json: not a valid image index".into(),
                    "../../etc".into(),
                ]
            }),
            ("unsupported digest algorithm", |l| {
                l.index(&[json!({"mediaType": MANIFEST, "digest": "md5:d41d8cd98f00b204e9800998ecf8427e", "size": 10})]);
                vec!["index.json: digest md5:d41d8cd98f00b204e9800998ecf8427e: unsupported algorithm md5".into()]
            }),
            ("manifest missing", |l| {
                let m = l.manifest(&[(TAR, tar_of(&[E::File("x", "")]))], None);
                fs::remove_file(l.blob_file(&m["digest"])).unwrap();
                l.index(std::slice::from_ref(&m));
                vec![format!(
                    "{}: missing blob {}",
                    l.blob_file(&m["digest"]).display(),
                    m["digest"].as_str().unwrap()
                )]
            }),
            ("manifest digest mismatch", |l| {
                let m = l.manifest(&[(TAR, tar_of(&[E::File("x", "")]))], None);
                let path = l.blob_file(&m["digest"]);
                let text = fs::read_to_string(&path)
                    .unwrap()
                    .replace("\"schemaVersion\":2", "\"schemaVersion\":3");
                fs::write(&path, text).unwrap();
                l.index(&[m]);
                vec![format!(
                    "{}: digest mismatch: expected sha256:",
                    path.display()
                )]
            }),
            ("layer digest mismatch", |l| {
                let mut data = tar_of(&[E::File("sbin/init", "init")]);
                let d = l.desc(TAR, &data);
                data[600] ^= 1;
                fs::write(l.blob_file(&d["digest"]), &data).unwrap();
                let m = l.manifest_of(vec![d.clone()]);
                l.index(&[m]);
                vec![format!(
                    "{}: digest mismatch",
                    l.blob_file(&d["digest"]).display()
                )]
            }),
            ("layer cut short", |l| {
                let data = gzip(&tar_of(&[E::File("sbin/init", "init")]));
                let d = l.desc(GZIP, &data);
                fs::write(l.blob_file(&d["digest"]), &data[..data.len() / 2]).unwrap();
                l.index(&[l.manifest_of(vec![d.clone()])]);
                vec![format!(
                    "{}: size mismatch",
                    l.blob_file(&d["digest"]).display()
                )]
            }),
            ("layer missing", |l| {
                let d = l.desc(TAR, &tar_of(&[E::File("sbin/init", "")]));
                fs::remove_file(l.blob_file(&d["digest"])).unwrap();
                l.index(&[l.manifest_of(vec![d.clone()])]);
                vec![format!("missing blob {}", d["digest"].as_str().unwrap())]
            }),
            ("layer digest that is a path", |l| {
                let d =
                    json!({"mediaType": TAR, "digest": "sha256:../../../../etc/passwd", "size": 3});
                let m = l.manifest_of(vec![d]);
                l.index(std::slice::from_ref(&m));
                vec![format!(
                    "{}: not a valid image manifest",
                    l.blob_file(&m["digest"]).display()
                )]
            }),
            ("layer media type", |l| {
                let d = l.desc("application/vnd.oci.image.layer.v1.tar+bzip2", b"BZh9");
                let m = l.manifest_of(vec![d]);
                l.index(std::slice::from_ref(&m));
                vec![format!(
                    "{}: layer 1: unsupported media type application/vnd.oci.image.layer.v1.tar+bzip2",
                    l.blob_file(&m["digest"]).display()
                )]
            }),
            ("layer not a tar", |l| {
                let d = l.desc(GZIP, b"this is not gzip, nor tar");
                l.index(&[l.manifest_of(vec![d.clone()])]);
                vec![format!(
                    "{}: not a readable tar archive",
                    l.blob_file(&d["digest"]).display()
                )]
            }),
            ("no layers", |l| {
                let m = l.manifest_of(vec![]);
                l.index(std::slice::from_ref(&m));
                vec![format!(
                    "{}: the image has no layers",
                    l.blob_file(&m["digest"]).display()
                )]
            }),
        ];
        for (what, corrupt) in cases {
            let l = Layout::image(&[(TAR, layer())]);
            let want = corrupt(&l);
            let (dest, r) = import(l.path());
            let e = match r {
                Ok(_) => panic!("{what}: imported"),
                Err(e) => e.to_string(),
            };
            for w in &want {
                assert!(e.contains(w.as_str()), "{what}: {e:?} lacks {w:?}");
            }
            assert_eq!(e.lines().count(), 1, "{what}: {e}");
            // A corrupt layout is refused before anything is extracted, except a
            // layer whose content turns out not to match (the store removes it).
            if !what.starts_with("layer digest mismatch") && !what.starts_with("layer not") {
                assert!(tree(dest.path()).is_empty(), "{what}");
            }
            // The source check refuses it as well.
            assert!(
                Source::OciLayout(l.path().to_path_buf()).check().is_err()
                    || what.starts_with("layer"),
                "{what}"
            );
        }
        // Not a directory.
        let f = tempfile::NamedTempFile::new().unwrap();
        let (_, r) = import(f.path());
        let e = r.unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }
}
