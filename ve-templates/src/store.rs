//! The template store: names, versions, metadata, publishing.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::import::{self, Progress, Source};
use crate::{Error, Result, VolumeOps, io_err};

/// `NAME` or `NAME@VERSION`, as given on the command line and stored in VE configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateRef {
    pub name: String,
    /// `None` means the latest version.
    pub version: Option<u32>,
}

impl std::str::FromStr for TemplateRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, version) = match s.split_once('@') {
            Some((n, v)) => {
                let v: u32 = v.parse().map_err(|_| Error::InvalidRef(s.to_string()))?;
                if v == 0 {
                    return Err(Error::InvalidRef(s.to_string()));
                }
                (n, Some(v))
            }
            None => (s, None),
        };
        validate_name(name)?;
        Ok(TemplateRef {
            name: name.to_string(),
            version,
        })
    }
}

impl std::fmt::Display for TemplateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Checks a template name: `[a-z0-9][a-z0-9._-]*`, at most 64 characters.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// One published, immutable template version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateVersion {
    pub name: String,
    pub version: u32,
    /// RFC 3339 UTC time of publishing.
    pub created: String,
    /// Where it came from (`dir:/path`, `tar:/path/rootfs.tar.zst`,
    /// `oci:/path@sha256:...`).
    pub source: String,
    /// Space the tree takes (allocated blocks, hard links once).
    pub size_bytes: u64,
    pub files: u64,
    #[serde(default)]
    pub message: String,
    /// The tree's content digest ([`crate::tree_digest`]); versions published
    /// before digests get theirs when first asked ([`TemplateStore::digest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl TemplateVersion {
    /// `name@version`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// The directory that holds every template's versions.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    dir: PathBuf,
    locks: PathBuf,
}

impl TemplateStore {
    /// A store at `dir`; per-template lock files go to `locks`.
    pub fn new(dir: &Path, locks: &Path) -> TemplateStore {
        TemplateStore {
            dir: dir.to_path_buf(),
            locks: locks.to_path_buf(),
        }
    }

    /// The root tree of a version (the overlay lower layer).
    pub fn path(&self, v: &TemplateVersion) -> PathBuf {
        self.dir.join(&v.name).join(v.version.to_string())
    }

    fn meta_path(&self, name: &str, version: u32) -> PathBuf {
        self.dir.join(name).join(format!("{version}.toml"))
    }

    /// Every published version of every template, by name then version.
    pub fn list(&self) -> Result<Vec<TemplateVersion>> {
        let mut out = Vec::new();
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(name) = entry.file_name().to_str()
                && validate_name(name).is_ok()
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        for name in names {
            out.extend(self.versions(&name)?);
        }
        Ok(out)
    }

    /// The published versions of one template, oldest first (empty if none).
    pub fn versions(&self, name: &str) -> Result<Vec<TemplateVersion>> {
        let dir = self.dir.join(name);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut nums = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&dir))?;
            let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if entry.file_type().map_err(io_err(&dir))?.is_dir() {
                nums.push(n);
            }
        }
        nums.sort_unstable();
        nums.into_iter().map(|n| self.read_meta(name, n)).collect()
    }

    fn read_meta(&self, name: &str, version: u32) -> Result<TemplateVersion> {
        let path = self.meta_path(name, version);
        let text = fs::read_to_string(&path).map_err(io_err(&path))?;
        let meta: TemplateVersion = toml::from_str(&text).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.message().to_string(),
        })?;
        if meta.name != name || meta.version != version {
            return Err(Error::BadMetadata {
                path,
                reason: format!("it describes {}@{}", meta.name, meta.version),
            });
        }
        Ok(meta)
    }

    /// The version a reference names; the latest when it names no version.
    pub fn resolve(&self, r: &TemplateRef) -> Result<TemplateVersion> {
        match r.version {
            Some(v) => {
                if self.path_of(&r.name, v).is_dir() {
                    self.read_meta(&r.name, v)
                } else if self.versions(&r.name)?.is_empty() {
                    Err(Error::UnknownTemplate(r.name.clone()))
                } else {
                    Err(Error::UnknownVersion {
                        name: r.name.clone(),
                        version: v,
                    })
                }
            }
            None => self
                .versions(&r.name)?
                .pop()
                .ok_or_else(|| Error::UnknownTemplate(r.name.clone())),
        }
    }

    /// The content digest of a published version: recorded at its publishing,
    /// or worked out now and recorded (a version published before digests).
    pub fn digest(&self, v: &TemplateVersion) -> Result<String> {
        if let Some(d) = &v.digest {
            return Ok(d.clone());
        }
        let _lock = self.lock(&v.name)?;
        let mut meta = self.read_meta(&v.name, v.version)?;
        if let Some(d) = meta.digest {
            return Ok(d);
        }
        let tree = self.path(v);
        let digest = crate::tree_digest(&tree).map_err(io_err(&tree))?;
        meta.digest = Some(digest.clone());
        let path = self.meta_path(&v.name, v.version);
        let text = toml::to_string(&meta).map_err(|e| Error::BadMetadata {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, text.as_bytes())?;
        Ok(digest)
    }

    /// The published versions whose tree has content digest `digest`
    /// (versions without one recorded get theirs first).
    pub fn with_digest(&self, digest: &str) -> Result<Vec<TemplateVersion>> {
        let mut out = Vec::new();
        for v in self.list()? {
            if self.digest(&v)? == digest {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn path_of(&self, name: &str, version: u32) -> PathBuf {
        self.dir.join(name).join(version.to_string())
    }

    /// Imports a tree as the next version of `name` and publishes it.
    ///
    /// The new version is built in a staging volume and becomes visible only once it
    /// is complete, sealed and its metadata written: a failed or killed import leaves
    /// no version behind (a later import removes its staging leftovers).
    pub fn import(
        &self,
        name: &str,
        source: &Source,
        message: &str,
        volumes: &dyn VolumeOps,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        validate_name(name)?;
        source.check()?;
        let _lock = self.lock(name)?;
        let tdir = self.dir.join(name);
        let fresh = !tdir.exists();
        fs::create_dir_all(&tdir).map_err(io_err(&tdir))?;
        let result = self.import_locked(name, &tdir, source, message, volumes, progress);
        if result.is_err() && fresh {
            // Nothing was published: leave no trace of the template.
            let _ = fs::remove_dir(&tdir);
        }
        result
    }

    fn import_locked(
        &self,
        name: &str,
        tdir: &Path,
        source: &Source,
        message: &str,
        volumes: &dyn VolumeOps,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        let vol_err = |source: io::Error| Error::Volume {
            name: name.to_string(),
            source,
        };
        self.remove_leftovers(tdir, volumes)?;
        // Numbers are never reused, even after the latest version was removed:
        // `NAME@V` always means the same tree.
        let highest = fs::read_to_string(tdir.join(HIGHEST))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let latest = self.versions(name)?.last().map_or(0, |v| v.version);
        // Checked under the template's lock, where versions are published.
        if let Source::Build { on, .. } = source
            && *on != latest
        {
            return Err(Error::Superseded {
                name: name.to_string(),
                base: *on,
                latest,
            });
        }
        let version = latest.max(highest) + 1;
        let staging = tdir.join(format!(".staging-{version}"));
        let based = match source {
            Source::Build { base, .. } => volumes.snapshot(base, &staging).map_err(vol_err)?,
            _ => false,
        };
        if !based {
            volumes.create(&staging).map_err(vol_err)?;
        }
        let filled = match import::fill(source, &staging, progress) {
            Ok(f) => f,
            Err(e) => {
                let _ = volumes.delete(&staging);
                return Err(e);
            }
        };
        let mut warnings = filled.warnings;
        let published = self.publish(
            name,
            version,
            tdir,
            &staging,
            &filled.source,
            message,
            volumes,
            &mut warnings,
        );
        match published {
            Ok(meta) => Ok((meta, warnings)),
            Err(e) => {
                let _ = volumes.delete(&staging);
                // publish fails only while the version is unpublished; should the
                // tree be there all the same, its metadata stays with it.
                if !self.path_of(name, version).is_dir() {
                    let _ = fs::remove_file(self.meta_path(name, version));
                }
                Err(e)
            }
        }
    }

    /// Writes the version's metadata, seals its tree and publishes it with one
    /// rename. Everything that can fail comes before the rename (`.highest`
    /// too: a number skipped because the rename then failed is harmless), so
    /// an error means the version is not published and the caller may delete
    /// its metadata; after the rename nothing is an error, or that cleanup
    /// would leave a published tree without metadata, which every later
    /// command on the template would trip over.
    #[allow(clippy::too_many_arguments)]
    fn publish(
        &self,
        name: &str,
        version: u32,
        tdir: &Path,
        staging: &Path,
        source: &str,
        message: &str,
        volumes: &dyn VolumeOps,
        warnings: &mut Vec<String>,
    ) -> Result<TemplateVersion> {
        let usage = volumes.usage(staging).map_err(|source| Error::Volume {
            name: name.to_string(),
            source,
        })?;
        let meta = TemplateVersion {
            name: name.to_string(),
            version,
            created: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            source: source.to_string(),
            size_bytes: usage.0,
            files: usage.1,
            message: message.to_string(),
            digest: Some(crate::tree_digest(staging).map_err(io_err(staging))?),
        };
        let text = toml::to_string(&meta).map_err(|e| Error::BadMetadata {
            path: self.meta_path(name, version),
            reason: e.to_string(),
        })?;
        write_atomic(&self.meta_path(name, version), text.as_bytes())?;
        write_atomic(&tdir.join(HIGHEST), version.to_string().as_bytes())?;
        volumes.seal(staging).map_err(|source| Error::Volume {
            name: name.to_string(),
            source,
        })?;
        let dest = self.path_of(name, version);
        if let Err(e) = fs::rename(staging, &dest) {
            // A rename that reports an error but happened all the same (a
            // network file system retrying it) published the version.
            if !(dest.is_dir() && fs::symlink_metadata(staging).is_err()) {
                return Err(io_err(&dest)(e));
            }
        }
        // The version is published. A failed fsync only means a crash soon
        // could undo the rename (the metadata without its tree is then removed
        // by the next command, and the staging tree with it): the store stays
        // consistent either way, so it is a warning.
        if let Err(e) = fs::File::open(tdir).and_then(|d| d.sync_all()) {
            warnings.push(format!(
                "{}: could not sync the template directory ({e}): a crash soon may undo the import",
                tdir.display()
            ));
        }
        Ok(meta)
    }

    /// Removes a published version. The caller has made sure no VE uses it (and
    /// holds what keeps new VEs from picking it meanwhile).
    ///
    /// One rename takes the version out of the listing before anything is
    /// deleted, so a killed removal leaves the version either listed and intact
    /// or gone, with hidden leftovers that the next removal, `template gc`
    /// ([`TemplateStore::finish_removals`]) or import of the template deletes:
    ///
    /// - a version that is not the template's last becomes `NAME/.removing-V`;
    /// - the last version takes the template's directory with it: `NAME/`
    ///   becomes `.removing-NAME` (never a template name), so the whole
    ///   template is gone in one step and a new import of the name starts at
    ///   version 1, whether the removal was killed or not.
    pub fn remove(&self, name: &str, version: u32, volumes: &dyn VolumeOps) -> Result<()> {
        validate_name(name)?;
        let _lock = self.lock(name)?;
        let tdir = self.dir.join(name);
        let path = self.path_of(name, version);
        if !path.is_dir() {
            return Err(if self.versions(name)?.is_empty() {
                Error::UnknownTemplate(name.to_string())
            } else {
                Error::UnknownVersion {
                    name: name.to_string(),
                    version,
                }
            });
        }
        if self.versions(name)?.iter().all(|v| v.version == version) {
            let doomed = self.dir.join(format!(".removing-{name}"));
            // What a killed removal of an earlier template of that name left.
            self.delete_removed_template(&doomed, volumes)?;
            fs::rename(&tdir, &doomed).map_err(io_err(&tdir))?;
            fs::File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(&self.dir))?;
            crate::failpoint::hit("template-rm-after-rename");
            return self.delete_removed_template(&doomed, volumes);
        }
        let doomed = tdir.join(format!(".removing-{version}"));
        fs::rename(&path, &doomed).map_err(io_err(&path))?;
        fs::File::open(&tdir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&tdir))?;
        crate::failpoint::hit("template-rm-after-rename");
        // The metadata first: what is left of a killed removal is named so.
        let meta = self.meta_path(name, version);
        match fs::remove_file(&meta) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&meta)(e)),
        }
        crate::failpoint::hit("template-rm-after-metadata");
        // The tree, and what killed imports or removals left.
        self.remove_leftovers(&tdir, volumes)
    }

    /// Deletes what killed removals left (see [`TemplateStore::remove`]):
    /// `NAME/.removing-V` versions and `.removing-NAME` templates, each under
    /// its template's lock.
    pub fn finish_removals(&self, volumes: &dyn VolumeOps) -> Result<()> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        for entry in rd {
            let entry = entry.map_err(io_err(&self.dir))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            if let Some(name) = fname.strip_prefix(".removing-")
                && validate_name(name).is_ok()
            {
                let _lock = self.lock(name)?;
                self.delete_removed_template(&entry.path(), volumes)?;
            } else if validate_name(fname).is_ok() {
                let tdir = entry.path();
                let killed = |d: &Path| {
                    fs::read_dir(d).is_ok_and(|rd| {
                        rd.flatten().any(|e| {
                            e.file_name()
                                .to_str()
                                .is_some_and(|n| n.starts_with(".removing-"))
                        })
                    })
                };
                if killed(&tdir) {
                    let _lock = self.lock(fname)?;
                    if killed(&tdir) {
                        self.remove_leftovers(&tdir, volumes)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Deletes a template directory renamed to `.removing-NAME`: its files
    /// (metadata), then its version volumes (and staging leftovers), then
    /// itself. Missing is fine. Called with the template's lock held.
    fn delete_removed_template(&self, doomed: &Path, volumes: &dyn VolumeOps) -> Result<()> {
        let rd = match fs::read_dir(doomed) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(doomed)(e)),
        };
        let mut trees = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(doomed))?;
            let path = entry.path();
            if entry.file_type().map_err(io_err(&path))?.is_dir() {
                trees.push(path);
            } else {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        crate::failpoint::hit("template-rm-after-metadata");
        for t in trees {
            volumes.delete(&t).map_err(|source| Error::Volume {
                name: t.display().to_string(),
                source,
            })?;
        }
        fs::remove_dir(doomed).map_err(io_err(doomed))
    }

    /// Removes what a killed import or removal left: staging and removing
    /// volumes, and metadata files whose version tree is not published. Called
    /// with the template's lock held.
    fn remove_leftovers(&self, tdir: &Path, volumes: &dyn VolumeOps) -> Result<()> {
        let rd = fs::read_dir(tdir).map_err(io_err(tdir))?;
        for entry in rd {
            let entry = entry.map_err(io_err(tdir))?;
            let fname = entry.file_name();
            let Some(fname) = fname.to_str() else {
                continue;
            };
            let path = entry.path();
            if fname.starts_with('.') && fname.ends_with(".tmp") {
                fs::remove_file(&path).map_err(io_err(&path))?;
            } else if fname.starts_with(".staging-") || fname.starts_with(".removing-") {
                volumes.delete(&path).map_err(|source| Error::Volume {
                    name: fname.to_string(),
                    source,
                })?;
            } else if let Some(v) = fname.strip_suffix(".toml")
                && v.parse::<u32>().is_ok()
                && !tdir.join(v).is_dir()
            {
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }

    fn lock(&self, name: &str) -> Result<fs::File> {
        fs::create_dir_all(&self.locks).map_err(io_err(&self.locks))?;
        let path = self.locks.join(format!("template-{name}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.lock().map_err(io_err(&path))?;
        Ok(f)
    }
}

/// The highest version number a template has had (`NAME/.highest`).
const HIGHEST: &str = ".highest";

/// Writes a file atomically: `.NAME.tmp` beside it (under the template's lock, so a
/// fixed name is safe and a killed writer's leftover is overwritten), fsync, rename.
fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Volumes that are plain directories.
    struct Dirs;

    impl VolumeOps for Dirs {
        fn create(&self, path: &Path) -> io::Result<()> {
            fs::create_dir(path)
        }
        fn seal(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
        fn delete(&self, path: &Path) -> io::Result<()> {
            match fs::remove_dir_all(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }
        fn usage(&self, _: &Path) -> io::Result<(u64, u64)> {
            Ok((0, 0))
        }
    }

    #[test]
    fn a_failed_publish_leaves_no_version_without_metadata() {
        let t = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(&t.path().join("templates"), &t.path().join("locks"));
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        fs::write(src.join("etc/f"), "f").unwrap();
        let source = Source::Dir(src);
        store.import("t", &source, "", &Dirs, &mut |_| {}).unwrap();
        // `.highest` cannot be replaced: the second import fails...
        let highest = t.path().join("templates/t/.highest");
        fs::remove_file(&highest).unwrap();
        fs::create_dir_all(highest.join("x")).unwrap();
        let e = store
            .import("t", &source, "", &Dirs, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains(".highest"), "{e}");
        // ...and publishes nothing: the store reads as before.
        let versions: Vec<u32> = store
            .versions("t")
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(versions, [1]);
        assert!(!t.path().join("templates/t/2").exists());
        // Once it can be written, the next import goes on.
        fs::remove_dir_all(&highest).unwrap();
        let (v, _) = store.import("t", &source, "", &Dirs, &mut |_| {}).unwrap();
        assert_eq!(v.version, 2);
        assert_eq!(store.versions("t").unwrap().len(), 2);
    }

    #[test]
    fn a_build_publishes_only_onto_the_version_it_ran_on() {
        let t = tempfile::tempdir().unwrap();
        let store = TemplateStore::new(&t.path().join("templates"), &t.path().join("locks"));
        let src = t.path().join("src");
        fs::create_dir_all(src.join("etc")).unwrap();
        let dir = Source::Dir(src.clone());
        store.import("t", &dir, "", &Dirs, &mut |_| {}).unwrap(); // t@1
        let layer = t.path().join("layer");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::write(layer.join("etc/built"), "b").unwrap();
        let build = |on: u32| Source::Build {
            base: t.path().join("templates/t/1"),
            on,
            layer: layer.clone(),
            what: "run:x (on t@1)".into(),
        };
        // Another version published meanwhile (t@2): the build on t@1 is refused.
        store.import("t", &dir, "", &Dirs, &mut |_| {}).unwrap();
        let e = store
            .import("t", &build(1), "", &Dirs, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "template t: t@2 was published while the build ran on t@1; run the build again"
        );
        assert_eq!(store.versions("t").unwrap().len(), 2);
    }

    #[test]
    fn template_refs_parse() {
        let r: TemplateRef = "debian-12@3".parse().unwrap();
        assert_eq!((r.name.as_str(), r.version), ("debian-12", Some(3)));
        let r: TemplateRef = "bb".parse().unwrap();
        assert_eq!(r.version, None);
        assert_eq!(r.to_string(), "bb");
        for bad in [
            "", "Bb", "-x", "bb@", "bb@0", "bb@x", "a/b", "bb@1@2", "../x",
        ] {
            assert!(bad.parse::<TemplateRef>().is_err(), "{bad} parsed");
        }
    }
}
