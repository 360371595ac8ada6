//! What backups keep in the pool: a VE's backup base (what its next
//! incremental backup is taken against) and the staging place where a restore
//! receives a VE's layer before it becomes the VE's volume.
//!
//! - `backup-bases/<ve>/<id>`: on btrfs, a read-only snapshot of the VE's
//!   volume as backup `<id>` holds it (`btrfs send -p` sends what changed
//!   since); elsewhere `backup-bases/<ve>/<id>.snar`, GNU tar's record of the
//!   files backup `<id>` holds (`tar --listed-incremental`).
//! - `ves/.<ve>.receive/`: where `btrfs receive` puts the received snapshots
//!   of a restore (never a VE name: names do not start with `.`).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::btrfs;
use crate::error::{Result, io_err};
use crate::pool::{Backend, Pool};
use crate::volume::Volume;

const SNAR: &str = ".snar";
/// Replication bases' ids begin so (hidden from backups).
pub const REP: &str = ".rep-";

impl Pool {
    fn bases_dir(&self, ve: &str) -> PathBuf {
        self.dir.join("backup-bases").join(ve)
    }

    /// Where base `id` of VE `ve` is (or would be).
    pub fn backup_base(&self, ve: &str, id: &str) -> PathBuf {
        match self.backend {
            Backend::Btrfs => self.bases_dir(ve).join(id),
            _ => self.bases_dir(ve).join(format!("{id}{SNAR}")),
        }
    }

    /// The ids of VE `ve`'s backup bases (complete ones: a tar record being
    /// written is `ID.snar.partial`), oldest first (by when each was made:
    /// ids taken within one second do not sort by time).
    pub fn backup_bases(&self, ve: &str) -> Result<Vec<String>> {
        self.bases_by_age(ve, false)
    }

    /// The bases of VE `ve`, oldest first: backup ones, or (`hidden`) those
    /// whose ids start with `.` too.
    fn bases_by_age(&self, ve: &str, hidden: bool) -> Result<Vec<String>> {
        let dir = self.bases_dir(ve);
        let rd = entries(&dir)?;
        // btrfs: subvolume ids grow with each one made; tar: the record's
        // modification time.
        let mut out: Vec<((u64, u32), String)> = Vec::new();
        for e in rd {
            let Some(n) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            let id = match self.backend {
                Backend::Btrfs => n,
                _ => match n.strip_suffix(SNAR) {
                    Some(id) => id.to_string(),
                    None => continue,
                },
            };
            if id.starts_with('.') && !hidden {
                continue;
            }
            let path = e.path();
            let made = match self.backend {
                Backend::Btrfs => btrfs::subvolume_id(&path).map(|id| (id, 0)),
                _ => fs::metadata(&path).and_then(|m| m.modified()).map(|t| {
                    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                    (d.as_secs(), d.subsec_nanos())
                }),
            }
            .map_err(io_err(&path))?;
            out.push((made, id));
        }
        out.sort();
        Ok(out.into_iter().map(|(_, id)| id).collect())
    }

    /// Makes the directory of VE `ve`'s bases (0700) and returns it.
    pub fn backup_bases_dir(&self, ve: &str) -> Result<PathBuf> {
        let dir = self.bases_dir(ve);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        Ok(dir)
    }

    /// On btrfs: base `id` of VE `ve`, a read-only snapshot of its volume
    /// taken now (the caller keeps the VE still). A leftover of that id is
    /// replaced.
    pub fn take_backup_base(&self, ve: &str, id: &str) -> Result<PathBuf> {
        self.backup_bases_dir(ve)?;
        let dest = self.backup_base(ve, id);
        self.delete_volume(&dest)?;
        let from = self.ve_volume(ve).dir;
        btrfs::snapshot(&from, &dest, true).map_err(io_err(&dest))?;
        Ok(dest)
    }

    /// Removes base `id` of VE `ve` (missing is fine).
    pub fn remove_backup_base(&self, ve: &str, id: &str) -> Result<()> {
        let path = self.backup_base(ve, id);
        match self.backend {
            Backend::Btrfs => self.delete_volume(&path),
            _ => remove_file(&path),
        }
    }

    /// Removes every backup base of VE `ve` but `keep`, and leftovers of
    /// killed backups (`*.partial`); its replication bases (`.rep-*`) stay.
    /// With no `keep` (the VE goes): everything, the directory too.
    pub fn prune_backup_bases(&self, ve: &str, keep: Option<&str>) -> Result<()> {
        self.prune_bases(ve, keep, keep.is_some().then_some(false))
    }

    /// Removes every replication base (`.rep-*`) of VE `ve` but `keep`.
    pub fn prune_replica_bases(&self, ve: &str, keep: Option<&str>) -> Result<()> {
        self.prune_bases(ve, keep, Some(true))
    }

    /// The replication bases of VE `ve` (`.rep-*`), oldest first.
    pub fn replica_bases(&self, ve: &str) -> Result<Vec<String>> {
        Ok(self
            .bases_by_age(ve, true)?
            .into_iter()
            .filter(|id| id.starts_with(REP))
            .collect())
    }

    /// Removes bases of VE `ve` but `keep`: replication ones only
    /// (`Some(true)`), backup ones only (`Some(false)`), or all (`None`, and
    /// the directory).
    fn prune_bases(&self, ve: &str, keep: Option<&str>, replicas: Option<bool>) -> Result<()> {
        let dir = self.bases_dir(ve);
        let rd = entries(&dir)?;
        let keep = keep.map(|id| self.backup_base(ve, id));
        for e in rd {
            let path = e.path();
            let is_rep = e.file_name().to_str().is_some_and(|n| n.starts_with(REP));
            if Some(&path) == keep.as_ref() || replicas.is_some_and(|r| r != is_rep) {
                continue;
            }
            if self.backend == Backend::Btrfs && btrfs::is_subvolume(&path) {
                self.delete_volume(&path)?;
            } else {
                remove_file(&path)?;
            }
        }
        if replicas.is_none() {
            match fs::remove_dir(&dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&dir)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Where this root keeps its replica of VE `ve` (a standby's): the
    /// received snapshots (btrfs) or the tree (`tree/`), and `replica.json`.
    pub fn replica_dir(&self, ve: &str) -> PathBuf {
        self.dir.join("replicas").join(ve)
    }

    /// The VEs this root keeps replicas of, sorted.
    pub fn replicas(&self) -> Result<Vec<String>> {
        let dir = self.dir.join("replicas");
        let rd = entries(&dir)?;
        let mut out: Vec<String> = rd
            .into_iter()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Removes the received snapshots of VE `ve`'s replica but `keep` (btrfs;
    /// the tree of a tar replica is one, kept).
    pub fn prune_replica(&self, ve: &str, keep: &str) -> Result<()> {
        if self.backend != Backend::Btrfs {
            return Ok(());
        }
        let dir = self.replica_dir(ve);
        let rd = entries(&dir)?;
        for e in rd {
            let path = e.path();
            if e.file_name() != keep && btrfs::is_subvolume(&path) {
                self.delete_volume(&path)?;
            }
        }
        Ok(())
    }

    /// Removes VE `ve`'s replica, all of it.
    pub fn remove_replica(&self, ve: &str) -> Result<()> {
        let dir = self.replica_dir(ve);
        let rd = entries(&dir)?;
        for e in rd {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.delete_volume(&path)?;
            } else {
                remove_file(&path)?;
            }
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// VE `ve`'s volume as a copy of a tar replica's tree (reflinked where
    /// the file system can).
    pub fn volume_from_tree(&self, ve: &str, tree: &Path) -> Result<Volume> {
        let vol = self.create_empty_ve_volume(ve)?;
        let copied = crate::volume::copy_tree(tree, &vol.dir, true);
        if let Err(e) = copied {
            let _ = self.delete_volume(&vol.dir);
            return Err(e);
        }
        Ok(vol)
    }

    /// Moves VE `old`'s backup bases to VE `new` (a rename).
    pub(crate) fn rename_backup_bases(&self, old: &str, new: &str) -> Result<()> {
        let (from, to) = (self.bases_dir(old), self.bases_dir(new));
        if from.symlink_metadata().is_ok() && to.symlink_metadata().is_err() {
            fs::rename(&from, &to).map_err(io_err(&from))?;
        }
        Ok(())
    }

    /// Where a restore of VE `ve` receives its layer (made empty, 0700).
    pub fn receive_dir(&self, ve: &str) -> Result<PathBuf> {
        self.remove_received(ve)?;
        let dir = self.received_path(ve);
        fs::create_dir(&dir).map_err(io_err(&dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        Ok(dir)
    }

    fn received_path(&self, ve: &str) -> PathBuf {
        self.dir.join("ves").join(format!(".{ve}.receive"))
    }

    /// Removes what a restore of VE `ve` received (missing is fine).
    pub fn remove_received(&self, ve: &str) -> Result<()> {
        let dir = self.received_path(ve);
        let rd = entries(&dir)?;
        for e in rd {
            self.delete_volume(&e.path())?;
        }
        match fs::remove_dir(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// On btrfs: VE `ve`'s volume as a writable snapshot of the received
    /// snapshot `received`.
    pub fn volume_from_received(&self, ve: &str, received: &Path) -> Result<Volume> {
        let vol = self.ve_volume(ve);
        btrfs::snapshot(received, &vol.dir, false).map_err(io_err(&vol.dir))?;
        Ok(vol)
    }

    /// The VEs that have what a killed restore received (`ves/.VE.receive`)
    /// or backup bases, sorted: for `pool check` to find those of no VE.
    pub fn backup_leftovers(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (dir, suffix) in [
            (self.dir.join("ves"), ".receive"),
            (self.dir.join("backup-bases"), ""),
        ] {
            out.extend(entries(&dir)?.into_iter().filter_map(|e| {
                let n = e.file_name().to_str()?.to_string();
                if suffix.is_empty() {
                    return (!n.starts_with('.')).then_some(n);
                }
                n.strip_prefix('.')?.strip_suffix(suffix).map(String::from)
            }));
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// An empty volume for VE `ve` (0700, nothing in it): a restore fills it.
    pub fn create_empty_ve_volume(&self, ve: &str) -> Result<Volume> {
        let vol = self.ve_volume(ve);
        self.make_volume(&vol.dir)?;
        fs::set_permissions(&vol.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&vol.dir))?;
        Ok(vol)
    }
}

fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

/// The entries of `dir`; none if it does not exist.
fn entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => Ok(rd.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(dir)(e)),
    }
}
