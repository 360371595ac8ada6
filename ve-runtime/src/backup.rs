//! Backups of VEs: `backup` writes one VE's files, config, template
//! reference and state to a backup file (`NAME-STAMP.vbk`, the stream of
//! `archive`), full or incremental against the VE's previous backup in the
//! same directory; `restore` makes a VE from a backup (and the chain of
//! backups it is incremental to) on this or another root; `verify` reads a
//! backup through and checks every checksum; `list` shows a directory's.
//!
//! The VE's layer travels as a `btrfs send` stream on a btrfs pool (the VE is
//! frozen only while a read-only snapshot is taken; `send -p` against the
//! previous backup's snapshot makes an incremental one), and as a GNU tar
//! archive elsewhere (`--listed-incremental`; a running VE stays frozen while
//! tar reads it: the dir and xfs backends have no snapshot in a moment).
//! Neither follows a symlink of the VE's: both store symlinks as symlinks.
//!
//! Crash safety: a backup is written to `.ID.vbk.partial` and renamed into
//! place when complete, its base (snapshot or tar record) is kept only once
//! the file is there, so a killed backup leaves no backup file and the next
//! one is taken against the last complete backup. A restore receives into
//! leftovers under the new VE's name and writes the VE's config last: a killed
//! restore leaves no VE, and whatever it made goes with the next create,
//! clone, restore or destroy of that name (`pool check --repair` too).

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::archive::{self, Next};
use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::fsutil::Lock;
use crate::host::Host;
use crate::pool::ve_storage;
use crate::snapshot::Consistency;
use crate::units::Size;

/// The file name extension of backups.
pub const BACKUP_EXT: &str = "vbk";
const FORMAT: u32 = 1;

/// How a VE's layer is stored in a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerFormat {
    /// A `btrfs send` stream of a read-only snapshot of the VE's volume.
    BtrfsSend,
    /// A GNU tar archive of the VE's volume (`--listed-incremental`).
    Tar,
}

/// The template version a backed-up VE is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRecord {
    /// `name@version` on the host it was backed up on.
    pub reference: String,
    /// Its content digest (the same tree has it on every host).
    pub digest: String,
}

/// What a backup file says of itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The backup's id: its file name without `.vbk`.
    pub id: String,
    /// The VE's name.
    pub ve: String,
    /// When it was taken (RFC 3339 UTC).
    pub created: String,
    /// The backup it is incremental to (in the same directory); none = full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub layer: LayerFormat,
    pub template: TemplateRecord,
    /// Whether the template version's tree is in the backup.
    pub with_template: bool,
    /// Whether the VE was running.
    pub was_running: bool,
    pub consistency: Consistency,
    /// The host and vectl version that took it.
    pub host: String,
    pub vectl: String,
    /// The VE's config as it was.
    pub config: VeConfig,
    /// A round of a migration (not a backup file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Round>,
}

/// Which round of a migration a stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// 0 for the first (full) one.
    pub n: u32,
    /// The last: the VE is stopped, the target makes and starts it.
    pub last: bool,
    /// The last round carries a CRIU checkpoint of the VE's processes
    /// (`migrate --live`): the target restores them instead of booting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpoint: bool,
}

impl Manifest {
    /// The manifest of a stream of VE `cfg` taken now on this host: full,
    /// without the template, as taken from a stopped VE; the caller sets the
    /// rest.
    pub(crate) fn of(
        cfg: &VeConfig,
        id: String,
        layer: LayerFormat,
        template: TemplateRecord,
        was_running: bool,
    ) -> Manifest {
        Manifest {
            format: FORMAT,
            id,
            ve: cfg.name.clone(),
            created: crate::state::now_rfc3339(),
            parent: None,
            layer,
            template,
            with_template: false,
            was_running,
            consistency: Consistency::Stopped,
            host: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            vectl: env!("CARGO_PKG_VERSION").to_string(),
            config: cfg.clone(),
            migration: None,
        }
    }

    /// `full` or `incremental`.
    pub fn kind(&self) -> &'static str {
        if self.parent.is_some() {
            "incremental"
        } else {
            "full"
        }
    }
}

/// What `backup` asks for.
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// A directory (default `ROOT/backups`) or a file name ending in `.vbk`.
    pub dest: Option<PathBuf>,
    /// Full even where an incremental backup could be taken.
    pub full: bool,
    /// Put the template version's tree in the backup.
    pub with_template: bool,
    /// Keep only this many of the VE's newest backups in the directory (and
    /// the ones they are incremental to).
    pub keep: Option<usize>,
}

/// What `backup` made.
#[derive(Debug, Clone, Serialize)]
pub struct BackupMade {
    pub ve: String,
    pub id: String,
    pub file: PathBuf,
    /// `full` or `incremental`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The backup file's size.
    pub bytes: u64,
    /// The VE's layer before compression (for an incremental one, the change).
    pub layer_bytes: u64,
    pub consistency: Consistency,
    /// How long the VE was frozen (0 when stopped).
    pub frozen_ms: f64,
    pub seconds: f64,
    /// Older backups that retention (`--keep`) removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<PathBuf>,
}

/// One backup in a directory (`backup list`).
#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub file: PathBuf,
    pub bytes: u64,
    #[serde(flatten)]
    pub manifest: ManifestSummary,
}

/// A manifest without the VE's config.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestSummary {
    pub id: String,
    pub ve: String,
    pub created: String,
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub template: String,
    pub with_template: bool,
    pub was_running: bool,
}

impl From<&Manifest> for ManifestSummary {
    fn from(m: &Manifest) -> Self {
        ManifestSummary {
            id: m.id.clone(),
            ve: m.ve.clone(),
            created: m.created.clone(),
            kind: m.kind(),
            parent: m.parent.clone(),
            template: m.template.reference.clone(),
            with_template: m.with_template,
            was_running: m.was_running,
        }
    }
}

/// What `backup verify` found: the backup is intact.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub file: PathBuf,
    #[serde(flatten)]
    pub manifest: ManifestSummary,
    /// Its parts and their sizes before compression.
    pub parts: Vec<(String, u64)>,
    /// The backups it needs (full first), all present and readable.
    pub chain: Vec<String>,
}

/// What `restore` asks for.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// The new VE's name (default: the backed-up VE's).
    pub name: Option<String>,
    /// Start it once restored.
    pub start: bool,
}

/// What `restore` made.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    pub config: VeConfig,
    /// The backups read, full first.
    pub chain: Vec<String>,
    /// Whether the template version came from the backup (imported here).
    pub template_imported: bool,
    /// What differs from the backed-up VE (a new id, MAC, address; ports
    /// not published).
    pub changes: Vec<String>,
    pub seconds: f64,
}

fn bad_file(path: &Path, reason: impl Into<String>) -> Error {
    Error::State {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A backup's stream error as one line naming the file.
fn stream_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |e| {
        if e.kind() == io::ErrorKind::InvalidData {
            bad_file(path, format!("not restorable: {e}"))
        } else {
            io_err(path)(e)
        }
    }
}

/// The manifest at the head of backup file `path` (its checksum is checked
/// only by reading the whole file).
pub(crate) fn read_manifest(path: &Path) -> Result<Manifest> {
    let f = fs::File::open(path).map_err(io_err(path))?;
    let bytes = archive::read_manifest(io::BufReader::new(f)).map_err(stream_err(path))?;
    parse_manifest(path, &bytes)
}

pub(crate) fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| bad_file(path, format!("not restorable: corrupt: its manifest: {e}")))?;
    if m.format != FORMAT {
        return Err(bad_file(
            path,
            format!(
                "a backup of format {}; this vectl reads format {FORMAT}",
                m.format
            ),
        ));
    }
    Ok(m)
}

/// The backups `path` needs, full first, ending with `path` itself (each
/// parent is `PARENT.vbk` beside it), and `path`'s manifest.
fn chain_of(path: &Path) -> Result<(Vec<(PathBuf, Manifest)>, Manifest)> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let last = read_manifest(path)?;
    let mut out = Vec::new();
    let mut child = (path.to_path_buf(), last.clone());
    while let Some(parent) = child.1.parent.clone() {
        let p = dir.join(format!("{parent}.{BACKUP_EXT}"));
        if !p.is_file() {
            return Err(bad_file(
                &child.0,
                format!(
                    "incremental to backup {parent}, which is not in {} (restore needs the whole chain)",
                    dir.display()
                ),
            ));
        }
        let m = read_manifest(&p)?;
        if m.id != parent || m.layer != child.1.layer || out.len() > 10_000 {
            return Err(bad_file(
                &p,
                format!("not the backup {} is incremental to", child.1.id),
            ));
        }
        out.push(std::mem::replace(&mut child, (p, m)));
    }
    out.push(child);
    out.reverse();
    Ok((out, last))
}

/// A child process whose stderr is collected on a thread of its own.
struct Tool {
    child: Child,
    what: String,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Tool {
    fn spawn(cmd: &mut Command, what: String) -> Result<Tool> {
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::Refused {
                what: what.clone(),
                reason: format!("cannot run {:?}: {e}", cmd.get_program()),
            })?;
        let mut err = child.stderr.take();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.take(64 << 10).read_to_string(&mut s);
                let _ = io::copy(e, &mut io::sink());
            }
            s
        });
        Ok(Tool {
            child,
            what,
            stderr: Some(stderr),
        })
    }

    /// Waits for it; a failure is an error with the last line it printed.
    fn wait(mut self) -> Result<()> {
        let status = self.child.wait().map_err(|e| Error::Refused {
            what: self.what.clone(),
            reason: e.to_string(),
        })?;
        let err = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        Err(Error::Refused {
            what: self.what.clone(),
            reason: format!("{status}: {last}"),
        })
    }

    /// Stops it (after an error of ours).
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(h) = self.stderr.take() {
            let _ = h.join();
        }
    }
}

/// GNU tar's options for a VE's layer or a template tree: ids as numbers,
/// every extended attribute (overlayfs keeps whiteouts and opaque
/// directories in `trusted.overlay.*`) and ACL.
const TAR_META: &[&str] = &[
    "--numeric-owner",
    "--xattrs",
    "--xattrs-include=*",
    "--acls",
];

pub(crate) fn tar_create(dir: &Path, snar: Option<&Path>) -> Command {
    let mut c = Command::new("tar");
    c.arg("--create")
        .arg("--file=-")
        .arg("--one-file-system")
        .arg("--sparse")
        .args(TAR_META)
        .arg("-C")
        .arg(dir);
    if let Some(s) = snar {
        c.arg(format!("--listed-incremental={}", s.display()))
            .arg("--no-check-device");
    }
    c.arg(".").stdin(Stdio::null()).stdout(Stdio::piped());
    c
}

fn tar_extract(dir: &Path, incremental: bool) -> Command {
    let mut c = Command::new("tar");
    c.arg("--extract")
        .arg("--file=-")
        .args(TAR_META)
        .arg("--same-permissions")
        .arg("--same-owner")
        .arg("-C")
        .arg(dir);
    if incremental {
        c.arg("--listed-incremental=/dev/null");
    }
    c.stdin(Stdio::piped()).stdout(Stdio::null());
    c
}

/// Adds part `name` to `w` from what `cmd` prints, and checks `cmd` succeeded.
fn part_from<W: Write>(
    w: &mut archive::Writer<W>,
    name: &str,
    cmd: &mut Command,
    what: String,
) -> Result<u64> {
    let mut tool = Tool::spawn(cmd, what.clone())?;
    let Some(mut out) = tool.child.stdout.take() else {
        tool.kill();
        return Err(Error::Refused {
            what,
            reason: "its output is not a pipe".into(),
        });
    };
    match w.part(name, &mut out) {
        Ok(n) => {
            drop(out);
            tool.wait()?;
            Ok(n)
        }
        Err(e) => {
            drop(out);
            tool.kill();
            Err(Error::Refused {
                what,
                reason: e.to_string(),
            })
        }
    }
}

/// Reads the current part of `r` into what `cmd` reads; checks both.
fn part_into<R: Read>(
    r: &mut archive::Reader<R>,
    file: &Path,
    cmd: &mut Command,
    what: String,
) -> Result<()> {
    let mut tool = Tool::spawn(cmd, what.clone())?;
    let Some(mut inp) = tool.child.stdin.take() else {
        tool.kill();
        return Err(Error::Refused {
            what,
            reason: "its input is not a pipe".into(),
        });
    };
    let read = r.read_part(&mut inp);
    drop(inp);
    match read {
        Ok(_) => tool.wait(),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
            // The tool stopped reading: its own error says why.
            tool.wait()?;
            Err(stream_err(file)(e))
        }
        Err(e) => {
            tool.kill();
            Err(stream_err(file)(e))
        }
    }
}

/// Writes one backup stream to `out`: manifest `m`, the template's tree from
/// `template_dir` if given, and the VE's layer as `layer_cmd` prints it;
/// `dest` names the destination in errors. Returns `out` and the layer's
/// size.
pub(crate) fn write_stream<W: Write>(
    out: W,
    m: &Manifest,
    template_dir: Option<&Path>,
    layer_cmd: &mut Command,
    dest: &Path,
    checkpoint: Option<&Path>,
) -> Result<(W, u64)> {
    let bytes = serde_json::to_vec(m).map_err(|e| bad_file(dest, format!("its manifest: {e}")))?;
    let mut w = archive::Writer::new(out, &bytes).map_err(io_err(dest))?;
    if let Some(dir) = template_dir {
        part_from(
            &mut w,
            "template",
            &mut tar_create(dir, None),
            format!("template {}: tar", m.template.reference),
        )?;
    }
    if let Some(dir) = checkpoint {
        part_from(
            &mut w,
            "checkpoint",
            &mut tar_create(dir, None),
            format!("VE {}: its checkpoint", m.ve),
        )?;
    }
    let n = part_from(
        &mut w,
        "layer",
        layer_cmd,
        format!("VE {}: reading its files", m.ve),
    )?;
    crate::failpoint::hit("backup-before-end");
    let (out, _) = w.finish().map_err(io_err(dest))?;
    Ok((out, n))
}

/// `btrfs send` of base `id` of VE `ve` (against base `parent`).
pub(crate) fn send_cmd(pool: &quota::Pool, ve: &str, id: &str, parent: Option<&str>) -> Command {
    let mut send = Command::new("btrfs");
    send.args(["send", "-q"]);
    if let Some(p) = parent {
        send.arg("-p").arg(pool.backup_base(ve, p));
    }
    send.arg(pool.backup_base(ve, id))
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    send
}

/// `20261207T061500Z`.
pub(crate) fn stamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replace(['-', ':'], "")
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl Host {
    /// The default directory of backups: `ROOT/backups`.
    pub(crate) fn backup_dir(&self) -> PathBuf {
        self.root().join("backups")
    }

    /// What a backup or migration of VE `cfg` sends: its template version and
    /// the record of it, how its layer travels from this pool, and whether
    /// it runs.
    pub(crate) fn what_goes(
        &self,
        cfg: &VeConfig,
    ) -> Result<(
        ve_templates::TemplateVersion,
        TemplateRecord,
        LayerFormat,
        bool,
    )> {
        let tref: ve_templates::TemplateRef = cfg.template.parse()?;
        let tv = self.store().resolve(&tref)?;
        let template = TemplateRecord {
            reference: tv.reference(),
            digest: self.store().digest(&tv)?,
        };
        let layer = if self.pool().backend() == quota::Backend::Btrfs {
            LayerFormat::BtrfsSend
        } else {
            LayerFormat::Tar
        };
        let running = self.alive_state(&cfg.name)?.is_some();
        Ok((tv, template, layer, running))
    }

    /// Where a backup of `ve` goes: its directory and id.
    fn backup_target(&self, ve: &str, dest: Option<&Path>) -> Result<(PathBuf, String)> {
        let ext = format!(".{BACKUP_EXT}");
        if let Some(d) = dest
            && d.extension().is_some_and(|e| e == BACKUP_EXT)
            && !d.is_dir()
        {
            if d.symlink_metadata().is_ok() {
                return Err(bad_file(d, "exists (a backup is never overwritten)"));
            }
            let id = d
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(&ext))
                .filter(|id| !id.is_empty() && !id.starts_with('.') && !id.contains(['/', '\0']))
                .ok_or_else(|| bad_file(d, "not a backup file name (NAME.vbk)"))?;
            let dir = match d.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !dir.is_dir() {
                return Err(bad_file(&dir, "no such directory"));
            }
            return Ok((dir, id.to_string()));
        }
        let dir = dest.map_or_else(|| self.backup_dir(), Path::to_path_buf);
        if dest.is_none() {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io_err(&dir))?;
        } else {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        // Within one second: BASE, BASE-2, BASE-3, ..., each past every
        // one taken (a backup file or a base), so ids never go back in time.
        let base = format!("{ve}-{}", stamp());
        let mut names: Vec<String> = Vec::new();
        let bases = self.pool().backup_base(ve, "x");
        for d in [Some(dir.as_path()), bases.parent()].into_iter().flatten() {
            if let Ok(rd) = fs::read_dir(d) {
                names.extend(
                    rd.flatten()
                        .filter_map(|e| e.file_name().into_string().ok()),
                );
            }
        }
        let highest = names
            .iter()
            .filter_map(|n| {
                let n = n.trim_start_matches('.');
                let rest = n.strip_prefix(&base)?;
                let rest = rest.split('.').next().unwrap_or("");
                match rest {
                    "" => Some(1),
                    r => r.strip_prefix('-')?.parse::<u32>().ok(),
                }
            })
            .max();
        let id = match highest {
            None => base,
            Some(n) => format!("{base}-{}", n + 1),
        };
        Ok((dir, id))
    }

    /// Backs up VE `name_or_id`: see the module's documentation.
    pub(crate) fn backup(&self, name_or_id: &str, opts: &BackupOptions) -> Result<BackupMade> {
        let ve = self.resolve_existing(name_or_id)?;
        // Backups of one VE take turns (they share its bases); the VE's own
        // lock is held only while its files must keep still, so `exec`,
        // `set` or `stop` need not wait for a long send.
        let turn = self.backup_turn(&ve)?;
        let made = self.backup_in_turn(&ve, opts);
        if !self.config_path(&ve).exists() {
            // Destroyed meanwhile: its turn lock goes too.
            let _ = turn.remove();
        }
        made
    }

    /// The lock backups of VE `ve` take turns with (and its destroy: not
    /// while a backup sends from its snapshot). Taken before the host's and
    /// the VE's locks.
    pub(crate) fn backup_turn(&self, ve: &str) -> Result<Lock> {
        Lock::acquire(&self.root().join("locks").join(format!("backup-{ve}.lock")))
    }

    fn backup_in_turn(&self, ve: &str, opts: &BackupOptions) -> Result<BackupMade> {
        let t0 = Instant::now();
        let ve = ve.to_string();
        let mut lock = Some(self.lock_ve(&ve)?);
        let mut cfg = self.load_config(&ve)?;
        self.finish_move(&mut cfg)?;
        let (dir, id) = self.backup_target(&ve, opts.dest.as_deref())?;
        let pool = self.pool();
        let (tv, template, layer, was_running) = self.what_goes(&cfg)?;
        // The newest base whose backup is in that directory, of this VE.
        let parent = if opts.full {
            None
        } else {
            pool.backup_bases(&ve)
                .map_err(|e| ve_storage(&ve, e))?
                .into_iter()
                .rev()
                .find(|b| {
                    let f = dir.join(format!("{b}.{BACKUP_EXT}"));
                    read_manifest(&f).is_ok_and(|m| m.ve == ve && m.id == *b && m.layer == layer)
                })
        };
        let final_path = dir.join(format!("{id}.{BACKUP_EXT}"));
        let partial = dir.join(format!(".{id}.{BACKUP_EXT}.partial"));
        remove_partials(&dir, &ve, &partial)?;
        pool.backup_bases_dir(&ve).map_err(|e| ve_storage(&ve, e))?;
        let manifest = |consistency| Manifest {
            parent: parent.clone(),
            with_template: opts.with_template,
            consistency,
            ..Manifest::of(&cfg, id.clone(), layer, template.clone(), was_running)
        };
        let template_dir = self.store().path(&tv);
        let write = |consistency, layer_cmd: &mut Command| -> Result<u64> {
            // A VE's files are its customer's: readable by root only.
            let f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&partial)
                .map_err(io_err(&partial))?;
            let td = opts.with_template.then_some(template_dir.as_path());
            let (out, n) = write_stream(
                BufWriter::with_capacity(1 << 20, f),
                &manifest(consistency),
                td,
                layer_cmd,
                &partial,
                None,
            )?;
            let f = out
                .into_inner()
                .map_err(|e| io_err(&partial)(e.into_error()))?;
            f.sync_all().map_err(io_err(&partial))?;
            Ok(n)
        };
        let made = match layer {
            LayerFormat::BtrfsSend => {
                let ((), consistency, frozen_ms) = self.with_layer_still(&ve, || {
                    let taken = pool
                        .take_backup_base(&ve, &id)
                        .map(|_| ())
                        .map_err(|e| ve_storage(&ve, e));
                    crate::failpoint::hit("backup-while-frozen");
                    taken
                })?;
                // The snapshot keeps still: the VE is free for other commands.
                drop(lock.take());
                crate::failpoint::hit("backup-after-snapshot");
                crate::failpoint::stop("backup-sending");
                let mut send = send_cmd(pool, &ve, &id, parent.as_deref());
                write(consistency, &mut send).map(|n| (n, consistency, frozen_ms))
            }
            LayerFormat::Tar => {
                let snar = pool.backup_base(&ve, &id);
                let snar_partial = snar.with_extension("snar.partial");
                crate::fsutil::remove_file(&snar_partial)?;
                if let Some(p) = &parent {
                    let from = pool.backup_base(&ve, p);
                    fs::copy(&from, &snar_partial).map_err(io_err(&from))?;
                }
                let vol = pool.ve_volume(&ve).dir;
                // No snapshot in a moment here: the VE keeps still while
                // tar reads it.
                let r = self.with_layer_still(&ve, || {
                    let c = if was_running {
                        Consistency::Frozen
                    } else {
                        Consistency::Stopped
                    };
                    write(c, &mut tar_create(&vol, Some(&snar_partial)))
                });
                match r {
                    Ok((n, c, ms)) => fs::rename(&snar_partial, &snar)
                        .map_err(io_err(&snar))
                        .map(|()| (n, c, ms)),
                    Err(e) => {
                        let _ = fs::remove_file(&snar_partial);
                        Err(e)
                    }
                }
            }
        };
        let (layer_bytes, consistency, frozen_ms) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&partial);
                let _ = pool.remove_backup_base(&ve, &id);
                return Err(e);
            }
        };
        drop(lock);
        fs::rename(&partial, &final_path).map_err(io_err(&final_path))?;
        sync_dir(&dir)?;
        crate::failpoint::hit("backup-after-rename");
        // The next backup is taken against this one.
        pool.prune_backup_bases(&ve, Some(&id))
            .map_err(|e| ve_storage(&ve, e))?;
        let removed = match opts.keep {
            Some(keep) => retain(&dir, &ve, keep)?,
            None => Vec::new(),
        };
        let bytes = fs::metadata(&final_path).map_or(0, |m| m.len());
        Ok(BackupMade {
            ve,
            id,
            file: final_path,
            kind: if parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            parent,
            bytes,
            layer_bytes,
            consistency,
            frozen_ms,
            seconds: t0.elapsed().as_secs_f64(),
            removed,
        })
    }

    /// Every VE's backup, in name order; one VE's failure does not stop the
    /// others (it is in the list, as an error).
    pub(crate) fn backup_all(
        &self,
        opts: &BackupOptions,
    ) -> Result<Vec<(String, Result<BackupMade>)>> {
        if opts
            .dest
            .as_deref()
            .is_some_and(|d| d.extension().is_some_and(|e| e == BACKUP_EXT) && !d.is_dir())
        {
            return Err(Error::Option {
                option: "--all".into(),
                reason: "backs up into a directory, not one file".into(),
            });
        }
        let mut names: Vec<String> = self.configs()?.into_iter().map(|c| c.name).collect();
        names.sort();
        Ok(names
            .into_iter()
            .map(|n| {
                let r = self.backup(&n, opts);
                (n, r)
            })
            .collect())
    }

    /// Reads backup `file` through: every checksum, and that the backups it
    /// is incremental to are beside it.
    pub(crate) fn backup_verify(&self, file: &Path) -> Result<Verified> {
        let f = fs::File::open(file).map_err(io_err(file))?;
        let (bytes, parts) =
            archive::verify(io::BufReader::with_capacity(1 << 20, f)).map_err(stream_err(file))?;
        let m = parse_manifest(file, &bytes)?;
        let (chain, _) = chain_of(file)?;
        Ok(Verified {
            file: file.to_path_buf(),
            manifest: (&m).into(),
            parts,
            chain: chain.into_iter().map(|(_, m)| m.id).collect(),
        })
    }

    /// The backups in `dir` (default `ROOT/backups`), by VE then time.
    pub(crate) fn backup_list(&self, dir: Option<&Path>) -> Result<Vec<BackupEntry>> {
        let dir = dir.map_or_else(|| self.backup_dir(), Path::to_path_buf);
        list_dir(&dir)
    }
}

/// Removes what killed backups of VE `ve` left in `dir` (`.VE-*.vbk.partial`),
/// and `partial` (the one about to be written).
fn remove_partials(dir: &Path, ve: &str, partial: &Path) -> Result<()> {
    crate::fsutil::remove_file(partial)?;
    let prefix = format!(".{ve}-");
    let suffix = format!(".{BACKUP_EXT}.partial");
    for e in fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
        let n = e.file_name();
        // `.VE-20261207T061500Z[-N].vbk.partial`: not another VE's whose
        // name begins with `VE-` (a VE name has no capital T).
        let ours = n.to_str().is_some_and(|n| {
            n.ends_with(&suffix)
                && n.strip_prefix(&prefix).is_some_and(|rest| {
                    rest.len() > 9
                        && rest.as_bytes()[..8].iter().all(u8::is_ascii_digit)
                        && rest.as_bytes()[8] == b'T'
                })
        });
        if ours {
            crate::fsutil::remove_file(&e.path())?;
        }
    }
    Ok(())
}

/// The backups in `dir` (files `*.vbk` whose manifest reads), by VE then
/// time. A missing directory has none.
fn list_dir(dir: &Path) -> Result<Vec<BackupEntry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(&format!(".{BACKUP_EXT}")) {
            continue;
        }
        let Ok(m) = read_manifest(&p) else { continue };
        out.push(BackupEntry {
            bytes: e.metadata().map_or(0, |m| m.len()),
            file: p,
            manifest: (&m).into(),
        });
    }
    out.sort_by(|a, b| {
        (&a.manifest.ve, &a.manifest.created, &a.manifest.id).cmp(&(
            &b.manifest.ve,
            &b.manifest.created,
            &b.manifest.id,
        ))
    });
    Ok(out)
}

/// Retention: keeps VE `ve`'s `keep` newest backups in `dir` and the ones
/// they are incremental to; removes the others. Returns what it removed.
fn retain(dir: &Path, ve: &str, keep: usize) -> Result<Vec<PathBuf>> {
    let all: Vec<BackupEntry> = list_dir(dir)?
        .into_iter()
        .filter(|e| e.manifest.ve == ve)
        .collect();
    let mut kept: std::collections::BTreeSet<String> = all
        .iter()
        .rev()
        .take(keep.max(1))
        .map(|e| e.manifest.id.clone())
        .collect();
    // Their ancestors too.
    loop {
        let more: Vec<String> = all
            .iter()
            .filter(|e| kept.contains(&e.manifest.id))
            .filter_map(|e| e.manifest.parent.clone())
            .filter(|p| !kept.contains(p))
            .collect();
        if more.is_empty() {
            break;
        }
        kept.extend(more);
    }
    let mut removed = Vec::new();
    for e in all {
        if !kept.contains(&e.manifest.id) {
            crate::fsutil::remove_file(&e.file)?;
            removed.push(e.file);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

impl Host {
    /// Makes a VE from backup `file` (and the backups it is incremental to):
    /// see the module's documentation.
    pub(crate) fn restore(&self, file: &Path, opts: &RestoreOptions) -> Result<Restored> {
        let t0 = Instant::now();
        let (chain, last) = chain_of(file)?;
        let name = opts.name.clone().unwrap_or_else(|| last.ve.clone());
        crate::config::validate_name(&name)?;
        if last.layer == LayerFormat::BtrfsSend && self.pool().backend() != quota::Backend::Btrfs {
            return Err(bad_file(
                file,
                format!(
                    "its files are a btrfs stream, and this root's pool is {}: restore it on a btrfs pool",
                    self.pool().backend()
                ),
            ));
        }
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(&name)?;
        if let Some(existing) = VeConfig::load(&self.config_path(&name))? {
            return Err(Error::ve(
                &name,
                format!(
                    "already exists (id {}): restore under another name with --as NAME",
                    existing.id
                ),
            ));
        }
        // What a killed create, clone, restore or destroy of that name left.
        self.finish_interrupted(&name)?;
        // The template: here already (the same tree under any version), or
        // in one of the backups.
        let local = self.template_with(&last.template)?;
        let carrier = chain
            .iter()
            .rposition(|(_, m)| m.with_template && m.template == last.template);
        if local.is_none() && carrier.is_none() {
            return Err(bad_file(
                file,
                format!(
                    "its template {} ({}) is not on this root and not in the backup: import it, or back up with --with-template",
                    last.template.reference, last.template.digest
                ),
            ));
        }
        let carrier = local.is_none().then_some(carrier).flatten();
        let made = self.restore_into(&name, &chain, &last, carrier);
        let (config, template_imported, changes) = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = self.finish_interrupted(&name);
                return Err(e);
            }
        };
        drop((_lock, _host));
        if opts.start {
            self.start(&name, false)?;
        }
        Ok(Restored {
            config,
            chain: chain.iter().map(|(_, m)| m.id.clone()).collect(),
            template_imported,
            changes,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// A local template version with the tree `t` names.
    pub(crate) fn template_with(
        &self,
        t: &TemplateRecord,
    ) -> Result<Option<ve_templates::TemplateVersion>> {
        if let Ok(r) = t.reference.parse::<ve_templates::TemplateRef>()
            && let Ok(v) = self.store().resolve(&r)
            && self.store().digest(&v)? == t.digest
        {
            return Ok(Some(v));
        }
        Ok(self.store().with_digest(&t.digest)?.into_iter().next_back())
    }

    /// The part of [`Host::restore`] that makes things: receives the layer
    /// (and the template from backup number `carrier` of the chain), gives
    /// the VE its identity here and writes its config last.
    fn restore_into(
        &self,
        name: &str,
        chain: &[(PathBuf, Manifest)],
        last: &Manifest,
        carrier: Option<usize>,
    ) -> Result<(VeConfig, bool, Vec<String>)> {
        let mut rx = Receiver::new(self, name, last.layer)?;
        for (i, (path, m)) in chain.iter().enumerate() {
            let f = fs::File::open(path).map_err(io_err(path))?;
            let mut r = archive::Reader::new(io::BufReader::with_capacity(1 << 20, f))
                .map_err(stream_err(path))?;
            if parse_manifest(path, r.manifest())?.id != m.id {
                return Err(bad_file(path, "changed while it was being restored"));
            }
            rx.take(&mut r, path, m, carrier == Some(i))?;
        }
        rx.commit(last, "restore-before-config")
    }
    /// The config of restored VE `name`: the backed-up VE's, with an id,
    /// MACs and addresses of its own here where the old ones are taken, a
    /// range of user ids of its own, and no history of upgrades (their
    /// snapshots stayed on the old pool). The registry's lock comes with a
    /// range: hold it until the VE is committed ([`Host::allocate_ids`]).
    pub(crate) fn restored_identity(
        &self,
        name: &str,
        old: &VeConfig,
        tv: &ve_templates::TemplateVersion,
        changes: &mut Vec<String>,
    ) -> Result<(VeConfig, Option<crate::fsutil::Lock>)> {
        let id = if self.id_taken(old.id)? {
            let id = self.free_id()?;
            changes.push(format!("id {id} (its id {} is taken here)", old.id));
            id
        } else {
            old.id
        };
        let reqs: Vec<netns::nic::NicRequest> = old
            .nics
            .iter()
            .map(|n| netns::nic::NicRequest {
                net: n.net.clone(),
                ip: None,
            })
            .collect();
        crate::config::validate_hostname(&old.hostname)?;
        let nics = self.allocate_nics_preferring(name, &reqs, &old.nics)?;
        for (o, n) in old.nics.iter().zip(&nics) {
            if o.ip != n.ip {
                changes.push(format!("{}: address {} ({} is taken)", n.net, n.ip, o.ip));
            }
            if o.mac != n.mac {
                changes.push(format!("{}: a new MAC (its MAC is taken)", n.net));
            }
        }
        let (userns, ids_lock) = match old.userns {
            Some(_) => {
                let (range, lock) = self.allocate_ids(name)?;
                (Some(range), lock)
            }
            None => (None, None),
        };
        let mut cfg = VeConfig {
            id,
            name: name.to_string(),
            template: tv.reference(),
            // A hostname that was the VE's name follows it, as with rename.
            // (Checked: a manifest is a file an operator brought.)
            hostname: if old.hostname == old.name {
                name.to_string()
            } else {
                old.hostname.clone()
            },
            init: old.init.clone(),
            stop_signal: old.stop_signal.clone(),
            created: crate::state::now_rfc3339(),
            limits: old.limits.clone(),
            nics,
            ports: old.ports.clone(),
            userns,
            history: Vec::new(),
            autostart: old.autostart.clone(),
        };
        if !cfg.ports.is_empty() && self.check_net_settings(&cfg).is_err() {
            changes.push(format!(
                "published ports {} not published (taken here)",
                cfg.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            cfg.ports.clear();
        }
        self.check_net_settings(&cfg)?;
        Ok((cfg, ids_lock))
    }

    /// The last steps of making a VE whose volume is in place (clone,
    /// restore): its disk limit, mount point, claims and firewall entries,
    /// then its config. On an error what was made stays for the caller's
    /// cleanup ([`Host::finish_interrupted`]).
    pub(crate) fn commit_new_ve(&self, cfg: &VeConfig, failpoint: &str) -> Result<()> {
        let name = &cfg.name;
        if let Some(Size(d)) = cfg.limits.disk {
            self.pool()
                .set_disk_limit(name, Some(d))
                .map_err(|e| ve_storage(name, e))?;
        }
        let mnt = self.mount_dir(name);
        fs::create_dir_all(&mnt).map_err(io_err(&mnt))?;
        self.claim_all(cfg)?;
        self.firewall_ve(cfg, true)?;
        crate::failpoint::hit(failpoint);
        cfg.store(&self.config_path(name))
    }
}

/// Whether a layer in `layer` format is a btrfs stream; refused on a pool
/// that cannot take it.
pub(crate) fn check_layer(host: &Host, name: &str, layer: LayerFormat) -> Result<bool> {
    let btrfs = layer == LayerFormat::BtrfsSend;
    if btrfs && host.pool().backend() != quota::Backend::Btrfs {
        return Err(Error::ve(
            name,
            format!(
                "its files come as a btrfs stream, and this root's pool is {}: use a btrfs pool",
                host.pool().backend()
            ),
        ));
    }
    Ok(btrfs)
}

/// Receives a VE's layer from backup streams (a restore's chain, a
/// migration's rounds) under name `name`, then makes the VE of it.
pub(crate) struct Receiver<'h> {
    host: &'h Host,
    name: String,
    btrfs: bool,
    /// Where the layer lands: the receive directory (btrfs) or the VE's
    /// volume itself (tar).
    target: PathBuf,
    /// The template's tree, when a stream carried it.
    template_tar: Option<PathBuf>,
    /// Where a checkpoint a stream carried was unpacked (`migrate --live`).
    pub(crate) checkpoint: Option<PathBuf>,
}

impl<'h> Receiver<'h> {
    /// Makes the place the layer lands in. The caller holds the host's and
    /// the VE's locks, and cleans up after an error
    /// ([`Host::finish_interrupted`]).
    pub(crate) fn new(host: &'h Host, name: &str, layer: LayerFormat) -> Result<Receiver<'h>> {
        let pool = host.pool();
        let btrfs = check_layer(host, name, layer)?;
        let target = if btrfs {
            pool.receive_dir(name).map_err(|e| ve_storage(name, e))?
        } else {
            pool.create_empty_ve_volume(name)
                .map_err(|e| ve_storage(name, e))?
                .dir
        };
        Ok(Receiver::into_dir(host, name, btrfs, target))
    }

    /// A receiver into `target` (made by the caller): where `btrfs receive`
    /// puts snapshots, or the tree tar extracts into.
    pub(crate) fn into_dir(
        host: &'h Host,
        name: &str,
        btrfs: bool,
        target: PathBuf,
    ) -> Receiver<'h> {
        Receiver {
            host,
            name: name.to_string(),
            btrfs,
            target,
            template_tar: None,
            checkpoint: None,
        }
    }

    /// Takes one stream (manifest `m`, already read from `r`): its layer, and
    /// its template if `template`; `source` names the stream in errors.
    pub(crate) fn take<R: Read>(
        &mut self,
        r: &mut archive::Reader<R>,
        source: &Path,
        m: &Manifest,
        template: bool,
    ) -> Result<()> {
        let name = self.name.clone();
        let mut had_layer = false;
        loop {
            match r.next().map_err(stream_err(source))? {
                Next::End => break,
                Next::Part(p) if p == "template" && template => {
                    let dir = self.host.root().join("tmp");
                    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    let tar = dir.join(format!("restore-{name}.tar"));
                    let mut out = fs::File::create(&tar).map_err(io_err(&tar))?;
                    self.template_tar = Some(tar.clone());
                    r.read_part(&mut out).map_err(stream_err(source))?;
                }
                Next::Part(p) if p == "checkpoint" && m.migration.is_some_and(|r| r.checkpoint) => {
                    let dir = crate::checkpoint::images_dir(self.host.root(), &name);
                    let _ = fs::remove_dir_all(&dir);
                    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                    let mut cmd = tar_extract(&dir, false);
                    part_into(r, source, &mut cmd, format!("VE {name}: its checkpoint"))?;
                    self.checkpoint = Some(dir);
                }
                Next::Part(p) if p == "layer" && !had_layer => {
                    had_layer = true;
                    let mut cmd = if self.btrfs {
                        let mut c = Command::new("btrfs");
                        // Confined to where it receives (a stream names paths).
                        c.args(["receive", "-q", "-e", "-C"])
                            .arg(&self.target)
                            .stdin(Stdio::piped())
                            .stdout(Stdio::null());
                        c
                    } else {
                        tar_extract(&self.target, true)
                    };
                    part_into(
                        r,
                        source,
                        &mut cmd,
                        format!("VE {name}: receiving its files from {}", m.id),
                    )?;
                    crate::failpoint::hit("restore-after-layer");
                }
                Next::Part(_) => r.skip_part().map_err(stream_err(source))?,
            }
        }
        if !had_layer {
            return Err(bad_file(
                source,
                "not restorable: it holds no files of a VE",
            ));
        }
        Ok(())
    }

    /// The template version of `last` here: imported from the tree a stream
    /// carried, else found by its digest. What differs goes to `changes`.
    pub(crate) fn template(
        &mut self,
        last: &Manifest,
        changes: &mut Vec<String>,
    ) -> Result<ve_templates::TemplateVersion> {
        let (host, name) = (self.host, self.name.as_str());
        if let Some(tar) = self.template_tar.take() {
            let tname = last
                .template
                .reference
                .parse::<ve_templates::TemplateRef>()
                .map(|r| r.name)
                .unwrap_or_else(|_| format!("restored-{name}"));
            let made = host.import_template(
                &tname,
                &ve_templates::Source::Tar(tar.clone()),
                &format!("came with VE {} ({})", last.ve, last.id),
                &mut |_| {},
            );
            let _ = fs::remove_file(&tar);
            let (v, _) = made?;
            if host.store().digest(&v)? != last.template.digest {
                changes.push(format!(
                    "template {} imported as {}, whose digest differs from the original's",
                    last.template.reference,
                    v.reference()
                ));
            }
            return Ok(v);
        }
        host.template_with(&last.template)?.ok_or_else(|| {
            Error::ve(
                name,
                format!(
                    "its template {} ({}) is not on this root",
                    last.template.reference, last.template.digest
                ),
            )
        })
    }

    /// Makes the VE of what was received, `last` being the newest stream's
    /// manifest: its volume, template (found here or imported), identity and
    /// config (last, after failpoint `failpoint`). Returns its config, whether
    /// the template was imported, and what differs from the original.
    pub(crate) fn commit(
        mut self,
        last: &Manifest,
        failpoint: &str,
    ) -> Result<(VeConfig, bool, Vec<String>)> {
        let host = self.host;
        let pool = host.pool();
        if self.btrfs {
            let name = self.name.as_str();
            let received = self.target.join(&last.id);
            if !quota::btrfs::is_subvolume(&received) {
                return Err(Error::ve(
                    name,
                    format!(
                        "backup {}: its btrfs stream made no snapshot of that name",
                        last.id
                    ),
                ));
            }
            pool.volume_from_received(name, &received)
                .map_err(|e| ve_storage(name, e))?;
            pool.remove_received(name)
                .map_err(|e| ve_storage(name, e))?;
        }
        let mut changes = Vec::new();
        let imported = self.template_tar.is_some();
        let tv = self.template(last, &mut changes)?;
        let name = self.name.as_str();
        if tv.reference() != last.template.reference {
            changes.push(format!(
                "template {} is {} here",
                last.template.reference,
                tv.reference()
            ));
        }
        let (cfg, _ids_lock) = host.restored_identity(name, &last.config, &tv, &mut changes)?;
        host.commit_new_ve(&cfg, failpoint)?;
        Ok((cfg, imported, changes))
    }
}
