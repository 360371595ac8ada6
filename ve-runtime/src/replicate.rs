//! Replication and failover. `vectl replicate VE DEST` sends what changed in
//! a VE since its last replication to a standby root (this host's, or over
//! SSH another's, as `migrate` reaches it), which keeps the newest copy as a
//! replica (`pool/replicas/VE/`: the received snapshot or tree, and
//! `replica.json`, the manifest of what it holds). The VE is frozen only for
//! a snapshot (btrfs; on tar pools while tar reads it). `--every DURATION`
//! records a schedule in `ROOT/replication/VE.toml` that the host's
//! supervisor runs; `replicate VE` without DEST runs it now.
//!
//! `vectl failover VE` on the standby starts the newest replica as the VE,
//! when the primary is gone: it asks the primary (`--primary`, over SSH or a
//! root of this host) and refuses while the VE runs there, or when the
//! primary does not answer unless `--force` says it is down for good. The
//! fence (`replicas/VE/fence`) is written before the VE is made: from then
//! on the standby refuses replication into that name, so the old primary,
//! back, can no longer overwrite what now runs here.

use std::fs;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::archive;
use crate::backup::{
    Manifest, Receiver, check_layer, parse_manifest, send_cmd, tar_create, write_stream,
};
use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{Lock, write_atomic};
use crate::host::Host;
use crate::migrate::{Dest, Peer, Reply, parse_dest, read_hello, serve_channel};
use crate::pool::ve_storage;
use crate::snapshot::Consistency;

/// Where and how a VE is replicated (`ROOT/replication/VE.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaSchedule {
    pub dest: String,
    /// Seconds between runs; none = only when asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_secs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_vectl: Option<String>,
}

/// How the last run of a schedule went (`ROOT/replication/VE.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicaRun {
    /// When it started, seconds since the epoch.
    pub at: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// What one replication did.
#[derive(Debug, Clone, Serialize)]
pub struct Replicated {
    pub ve: String,
    pub dest: String,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The layer (for an incremental run, the change) before compression.
    pub bytes: u64,
    pub frozen_ms: f64,
    pub seconds: f64,
    pub template_sent: bool,
}

/// A replica this root keeps (`replica list`).
#[derive(Debug, Clone, Serialize)]
pub struct ReplicaInfo {
    pub ve: String,
    pub id: String,
    /// When the source took it.
    pub taken: String,
    pub from_host: String,
    pub template: String,
    /// The VE was failed over to this root (replication into it is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fenced: Option<String>,
}

/// What `failover` asks for.
#[derive(Debug, Clone, Default)]
pub struct FailoverOptions {
    /// The primary: a root of this host, or `ssh://...`.
    pub primary: Option<String>,
    /// Start it even though the primary does not answer (it is down for good).
    pub force: bool,
    pub ssh: Option<String>,
    pub remote_vectl: Option<String>,
}

/// What `failover` made.
#[derive(Debug, Clone, Serialize)]
pub struct FailedOver {
    pub config: VeConfig,
    /// The replica it started from, and when the source took it.
    pub replica: String,
    pub taken: String,
    /// How the primary was found gone.
    pub fence: String,
    pub changes: Vec<String>,
}

fn now_secs() -> u64 {
    crate::state::now_secs()
}

impl Host {
    fn schedule_path(&self, ve: &str) -> PathBuf {
        self.root().join("replication").join(format!("{ve}.toml"))
    }

    fn replica_run_path(&self, ve: &str) -> PathBuf {
        self.root().join("replication").join(format!("{ve}.json"))
    }

    /// Records (or with `None` removes) VE `ve`'s replication schedule.
    pub(crate) fn set_replica_schedule(
        &self,
        name_or_id: &str,
        s: Option<&ReplicaSchedule>,
    ) -> Result<String> {
        let ve = self.resolve_existing(name_or_id)?;
        let path = self.schedule_path(&ve);
        match s {
            Some(s) => {
                parse_dest(&s.dest)?;
                let dir = self.root().join("replication");
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                let text = toml::to_string(s).map_err(|e| Error::ve(&ve, e.to_string()))?;
                write_atomic(&path, text.as_bytes(), true)?;
            }
            None => {
                crate::fsutil::remove_file(&path)?;
                crate::fsutil::remove_file(&self.replica_run_path(&ve))?;
            }
        }
        Ok(ve)
    }

    /// VE `ve`'s schedule, if it has one.
    pub(crate) fn replica_schedule(&self, ve: &str) -> Result<Option<ReplicaSchedule>> {
        let path = self.schedule_path(ve);
        match fs::read_to_string(&path) {
            Ok(t) => toml::from_str(&t).map(Some).map_err(|e| Error::Corrupt {
                path,
                what: "replication schedule",
                reason: e.message().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Every schedule of this root with how its last run went.
    pub(crate) fn replica_schedules(
        &self,
    ) -> Result<Vec<(String, ReplicaSchedule, Option<ReplicaRun>)>> {
        let dir = self.root().join("replication");
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let Some(ve) = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(String::from)
            else {
                continue;
            };
            if let Some(s) = self.replica_schedule(&ve)? {
                let run = fs::read(self.replica_run_path(&ve))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                out.push((ve, s, run));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Replicates VE `name_or_id` to `dest` (default: its schedule's) once.
    pub(crate) fn replicate(
        &self,
        name_or_id: &str,
        dest: Option<&ReplicaSchedule>,
    ) -> Result<Replicated> {
        let ve = self.resolve_existing(name_or_id)?;
        let sched = match dest {
            Some(d) => d.clone(),
            None => self.replica_schedule(&ve)?.ok_or_else(|| {
                Error::ve(
                    &ve,
                    "no replication schedule: give DEST (`vectl replicate VE DEST`)",
                )
            })?,
        };
        let t0 = now_secs();
        let made = self.replicate_once(&ve, &sched);
        if dest.is_none()
            || self
                .replica_schedule(&ve)?
                .is_some_and(|s| s.dest == sched.dest)
        {
            let run = ReplicaRun {
                at: t0,
                ok: made.is_ok(),
                error: made.as_ref().err().map(|e| e.to_string()),
                id: made.as_ref().ok().map(|r| r.id.clone()),
            };
            if let Ok(b) = serde_json::to_vec(&run) {
                let _ = write_atomic(&self.replica_run_path(&ve), &b, false);
            }
        }
        made
    }

    fn replicate_once(&self, ve: &str, sched: &ReplicaSchedule) -> Result<Replicated> {
        let t0 = Instant::now();
        let dest = parse_dest(&sched.dest)?;
        // Replications and backups of one VE take turns (and its destroy).
        let _turn = self.backup_turn(ve)?;
        let mut lock = Some(self.lock_ve(ve)?);
        let mut cfg = self.load_config(ve)?;
        self.finish_move(&mut cfg)?;
        let pool = self.pool();
        let (tv, template, layer, was_running) = self.what_goes(&cfg)?;
        let mut peer = Peer::start(
            &dest,
            "replica-receive",
            ve,
            sched.ssh.as_deref(),
            sched.remote_vectl.as_deref(),
        )?;
        // Unique even for runs within one second (a base is never replaced).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!("{}{}-{nanos:09}", quota::REP, crate::backup::stamp());
        let outcome = (|| -> Result<(Option<String>, bool, u64, f64)> {
            let hello = Manifest::of(&cfg, String::new(), layer, template.clone(), was_running);
            let line = serde_json::to_string(&hello).map_err(|e| Error::ve(ve, e.to_string()))?;
            writeln!(peer.to, "{line}").map_err(|e| peer.gone(&e.to_string()))?;
            let first = peer.reply()?;
            let bases = pool.replica_bases(ve).map_err(|e| ve_storage(ve, e))?;
            let parent = first.have.filter(|h| bases.contains(h));
            pool.backup_bases_dir(ve).map_err(|e| ve_storage(ve, e))?;
            let (mut cmd, consistency, frozen_ms) = match layer {
                crate::backup::LayerFormat::BtrfsSend => {
                    let ((), c, ms) = self.with_layer_still(ve, || {
                        pool.take_backup_base(ve, &id)
                            .map(|_| ())
                            .map_err(|e| ve_storage(ve, e))
                    })?;
                    drop(lock.take());
                    (send_cmd(pool, ve, &id, parent.as_deref()), c, ms)
                }
                crate::backup::LayerFormat::Tar => {
                    let snar = pool.backup_base(ve, &id);
                    if let Some(p) = &parent {
                        let from = pool.backup_base(ve, p);
                        fs::copy(&from, &snar).map_err(io_err(&from))?;
                    }
                    let c = if was_running {
                        Consistency::Frozen
                    } else {
                        Consistency::Stopped
                    };
                    (tar_create(&pool.ve_volume(ve).dir, Some(&snar)), c, 0.0)
                }
            };
            let m = Manifest {
                parent: parent.clone(),
                with_template: first.need_template,
                consistency,
                ..Manifest::of(&cfg, id.clone(), layer, template.clone(), was_running)
            };
            let td = first.need_template.then(|| self.store().path(&tv));
            let bytes = if layer == crate::backup::LayerFormat::Tar {
                // Tar reads a still VE: frozen for the read.
                let (b, _, ms) = self.with_layer_still(ve, || {
                    write_stream(
                        &mut peer.to,
                        &m,
                        td.as_deref(),
                        &mut cmd,
                        Path::new(&sched.dest),
                        None,
                    )
                    .map(|(_, b)| b)
                })?;
                drop(lock.take());
                return peer.reply().map(|_| (parent, first.need_template, b, ms));
            } else {
                write_stream(
                    &mut peer.to,
                    &m,
                    td.as_deref(),
                    &mut cmd,
                    Path::new(&sched.dest),
                    None,
                )?
                .1
            };
            crate::failpoint::hit("replicate-after-send");
            peer.reply()?;
            Ok((parent, first.need_template, bytes, frozen_ms))
        })();
        drop(lock);
        match outcome {
            Ok((parent, template_sent, bytes, frozen_ms)) => {
                peer.end();
                // The standby holds it: the next run goes against it.
                pool.prune_replica_bases(ve, Some(&id))
                    .map_err(|e| ve_storage(ve, e))?;
                Ok(Replicated {
                    ve: ve.to_string(),
                    dest: sched.dest.clone(),
                    id,
                    parent,
                    bytes,
                    frozen_ms,
                    seconds: t0.elapsed().as_secs_f64(),
                    template_sent,
                })
            }
            Err(e) => {
                peer.kill();
                let _ = pool.remove_backup_base(ve, &id);
                Err(e)
            }
        }
    }

    fn replica_lock(&self, ve: &str) -> Result<Lock> {
        Lock::acquire(&self.root().join("locks").join(format!("replica-{ve}.lock")))
    }

    fn replica_manifest(&self, ve: &str) -> Result<Option<Manifest>> {
        let path = self.pool().replica_dir(ve).join("replica.json");
        match fs::read(&path) {
            Ok(b) => parse_manifest(&path, &b).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn fence_of(&self, ve: &str) -> Option<String> {
        fs::read_to_string(self.pool().replica_dir(ve).join("fence")).ok()
    }

    /// The standby's end of a replication (`vectl replica-receive VE`).
    pub(crate) fn replica_receive(
        &self,
        name: &str,
        input: impl Read,
        output: impl Write,
    ) -> Result<Option<Error>> {
        serve_channel(name, input, output, |input, answer| {
            self.replica_receive_steps(name, input, answer)
        })
    }

    fn replica_receive_steps<R: Read>(
        &self,
        name: &str,
        input: &mut BufReader<R>,
        answer: &mut dyn FnMut(&Reply) -> Result<()>,
    ) -> Result<()> {
        let label = PathBuf::from(format!("the replication of VE {name}"));
        let hello = read_hello(name, input, &label)?;
        let _lock = self.replica_lock(name)?;
        if let Some(f) = self.fence_of(name) {
            return Err(Error::ve(
                name,
                format!(
                    "failed over to this root ({}): it runs here now, no replica is taken",
                    f.trim()
                ),
            ));
        }
        if VeConfig::load(&self.config_path(name))?.is_some() {
            return Err(Error::ve(name, "a VE of that name is on the standby root"));
        }
        let btrfs = check_layer(self, name, hello.layer)?;
        let dir = self.pool().replica_dir(name);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // A receive that did not finish (`receiving`): a tar tree may be half
        // updated, so the next replication is full.
        let receiving = dir.join("receiving");
        let interrupted = receiving.exists();
        let have = self
            .replica_manifest(name)?
            .filter(|m| (btrfs || !interrupted) && m.layer == hello.layer)
            .map(|m| m.id);
        let need_template = self.template_with(&hello.template)?.is_none();
        answer(&Reply {
            ok: true,
            need_template,
            have: have.clone(),
            ..Default::default()
        })?;
        let target = if btrfs { dir.clone() } else { dir.join("tree") };
        if !btrfs {
            if have.is_none() {
                self.pool()
                    .delete_volume(&target)
                    .map_err(|e| ve_storage(name, e))?;
                crate::fsutil::remove_file(&dir.join("replica.json"))?;
            }
            fs::create_dir_all(&target).map_err(io_err(&target))?;
        }
        write_atomic(&receiving, b"", true)?;
        let mut r = archive::Reader::new(&mut *input)
            .map_err(|e| Error::ve(name, format!("the source's stream: {e}")))?;
        let m = parse_manifest(&label, r.manifest())?;
        if m.ve != name || m.id.is_empty() || (m.parent.is_some() && m.parent != have) {
            return Err(Error::ve(
                name,
                "the source's stream does not follow the replica here",
            ));
        }
        let mut rx = Receiver::into_dir(self, name, btrfs, target);
        let taken = rx.take(&mut r, &label, &m, need_template);
        if let Err(e) = taken {
            // A half-received snapshot goes; the replica before it stays.
            if btrfs {
                let _ = self.pool().delete_volume(&dir.join(&m.id));
            }
            return Err(e);
        }
        if need_template {
            rx.template(&m, &mut Vec::new())?;
        }
        crate::failpoint::hit("replica-before-record");
        let bytes = serde_json::to_vec(&m).map_err(|e| Error::ve(name, e.to_string()))?;
        write_atomic(&dir.join("replica.json"), &bytes, true)?;
        crate::fsutil::remove_file(&receiving)?;
        self.pool()
            .prune_replica(name, &m.id)
            .map_err(|e| ve_storage(name, e))?;
        answer(&Reply {
            ok: true,
            ..Default::default()
        })
    }

    /// The replicas this root keeps.
    pub(crate) fn replica_list(&self) -> Result<Vec<ReplicaInfo>> {
        let mut out = Vec::new();
        for ve in self.pool().replicas().map_err(Error::Storage)? {
            let fenced = self.fence_of(&ve).map(|f| f.trim().to_string());
            match self.replica_manifest(&ve)? {
                Some(m) => out.push(ReplicaInfo {
                    ve,
                    id: m.id,
                    taken: m.created,
                    from_host: m.host,
                    template: m.template.reference,
                    fenced,
                }),
                None => continue,
            }
        }
        Ok(out)
    }

    /// Starts the newest replica of `name` as the VE: see the module's
    /// documentation.
    pub(crate) fn failover(&self, name: &str, opts: &FailoverOptions) -> Result<FailedOver> {
        crate::config::validate_name(name)?;
        let _rlock = self.replica_lock(name)?;
        let m = self.replica_manifest(name)?.ok_or_else(|| {
            Error::ve(
                name,
                "no replica of it on this root (see `vectl replica list`)",
            )
        })?;
        if let Some(f) = self.fence_of(name) {
            return Err(Error::ve(
                name,
                format!("failed over already ({})", f.trim()),
            ));
        }
        let dir = self.pool().replica_dir(name);
        if m.layer != crate::backup::LayerFormat::BtrfsSend && dir.join("receiving").exists() {
            return Err(Error::ve(
                name,
                "its replica's last replication did not finish (its files may be half updated): replicate again first",
            ));
        }
        let fence = self.primary_gone(name, opts)?;
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(name)?;
        if let Some(existing) = VeConfig::load(&self.config_path(name))? {
            return Err(Error::VeExists {
                ve: name.to_string(),
                id: existing.id,
            });
        }
        self.finish_interrupted(name)?;
        // The fence first: from here on no replication lands in this name.
        let record = format!("{} at {}", fence, crate::state::now_rfc3339());
        write_atomic(&dir.join("fence"), record.as_bytes(), true)?;
        crate::failpoint::hit("failover-after-fence");
        let made = (|| -> Result<(VeConfig, Vec<String>)> {
            if m.layer == crate::backup::LayerFormat::BtrfsSend {
                self.pool()
                    .volume_from_received(name, &dir.join(&m.id))
                    .map_err(|e| ve_storage(name, e))?;
            } else {
                self.pool()
                    .volume_from_tree(name, &dir.join("tree"))
                    .map_err(|e| ve_storage(name, e))?;
            }
            let mut changes = Vec::new();
            let tv = self.template_with(&m.template)?.ok_or_else(|| {
                Error::ve(
                    name,
                    format!("its template {} is not on this root", m.template.reference),
                )
            })?;
            let (cfg, _ids_lock) = self.restored_identity(name, &m.config, &tv, &mut changes)?;
            self.commit_new_ve(&cfg, "failover-before-config")?;
            Ok((cfg, changes))
        })();
        let (config, changes) = match made {
            Ok(c) => c,
            Err(e) => {
                let _ = self.finish_interrupted(name);
                // Not failed over after all: replication may go on.
                let _ = fs::remove_file(dir.join("fence"));
                return Err(e);
            }
        };
        drop((_lock, _host));
        self.start(name, false)?;
        Ok(FailedOver {
            config,
            replica: m.id,
            taken: m.created,
            fence: record,
            changes,
        })
    }

    /// Whether the primary is gone, and how that is known; an error while it
    /// may still run the VE.
    fn primary_gone(&self, name: &str, opts: &FailoverOptions) -> Result<String> {
        let Some(p) = &opts.primary else {
            if opts.force {
                return Ok("the operator said the primary is down (--force)".into());
            }
            return Err(Error::ve(
                name,
                "name the primary with --primary (it is asked whether it still runs the VE), or --force if it is down for good",
            ));
        };
        let mut cmd = match parse_dest(p)? {
            Dest::Root(r) => {
                let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
                let mut c = Command::new(exe);
                c.arg("--root").arg(r).args(["--json", "show", name]);
                c
            }
            Dest::Ssh { host, port, root } => {
                let words =
                    shell_words::split(opts.ssh.as_deref().unwrap_or("ssh")).map_err(|e| {
                        Error::Option {
                            option: "--ssh".into(),
                            reason: e.to_string(),
                        }
                    })?;
                let Some((prog, args)) = words.split_first() else {
                    return Err(Error::Option {
                        option: "--ssh".into(),
                        reason: "empty".into(),
                    });
                };
                let mut c = Command::new(prog);
                c.args(args)
                    .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
                if let Some(port) = port {
                    c.arg("-p").arg(port.to_string());
                }
                let mut line = format!("{} ", opts.remote_vectl.as_deref().unwrap_or("vectl"));
                if let Some(r) = root {
                    line.push_str(&format!("--root '{r}' "));
                }
                line.push_str(&format!("--json show {name}"));
                c.arg("--").arg(host).arg(line);
                c
            }
        };
        let out = cmd
            .env_remove("VECTL_ROOT")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::ve(name, format!("cannot ask the primary: {e}")))?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let status = shown["status"].as_str().unwrap_or("unknown");
            if status == "running" || status == "unknown" {
                return Err(Error::ve(
                    name,
                    format!(
                        "the primary {p} still has it {status}: stop it there first (or migrate it)"
                    ),
                ));
            }
            return Ok(format!("the primary {p} has it {status}"));
        }
        if err.contains("no such VE") {
            return Ok(format!("the primary {p} has no VE {name}"));
        }
        if opts.force {
            return Ok(format!(
                "the primary {p} did not answer ({}); --force",
                err.lines().last().unwrap_or("").trim()
            ));
        }
        Err(Error::ve(
            name,
            format!(
                "the primary {p} did not answer ({}): if it is down for good, --force",
                err.lines().last().unwrap_or("").trim()
            ),
        ))
    }
}
