//! `vectl migrate VE DEST`: moves a VE to another root, on this host (DEST a
//! root directory) or another (`ssh://[USER@]HOST[:PORT][/ROOT]`, where the
//! remote runs `vectl migrate-receive`). Stop, copy, start with pre-copy: while
//! the VE runs, a full round and up to `rounds` incremental ones (btrfs: a
//! snapshot in a moment each, `send -p` the previous; tar: unfrozen, the last
//! round catches up), then the VE stops, a last small delta goes, and the
//! target makes the VE (same name; id, addresses and MACs where free there)
//! and starts it. The source VE is destroyed only once the target answers
//! that it runs; on any failure before, the target removes what it received
//! and the source VE runs again.
//!
//! The channel: the source writes one JSON line (a [`Manifest`] without
//! parts: what VE comes) and then one backup stream per round; the target
//! answers each with one JSON line ([`Reply`]).

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::archive;
use crate::backup::{
    LayerFormat, Manifest, Receiver, Round, parse_manifest, send_cmd, tar_create, write_stream,
};
use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::host::Host;
use crate::options::StopOptions;
use crate::pool::ve_storage;
use crate::snapshot::Consistency;

/// Pre-copy stops once a round carries less than this.
const SMALL_ROUND: u64 = 8 << 20;

/// What `migrate` asks for.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// A root directory on this host, or `ssh://[USER@]HOST[:PORT][/ROOT]`.
    pub dest: String,
    /// The ssh command (with its options), default `ssh`.
    pub ssh: Option<String>,
    /// The vectl command on the remote host, default `vectl`.
    pub remote_vectl: Option<String>,
    /// Incremental rounds at most while the VE runs (after the full one).
    pub rounds: u32,
    /// At the switch, halt the VE's init cleanly (it takes what the init's
    /// shutdown takes) instead of freezing the VE and starting it on the
    /// target from its files as they were, as after a power cut.
    pub clean_stop: bool,
    /// Seconds the VE's init gets to halt with `clean_stop`.
    pub stop_timeout: Duration,
    /// At the switch, checkpoint the VE's processes with CRIU and restore
    /// them on the target (they go on where they were) instead of freezing.
    pub live: bool,
}

/// One round of a migration.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub n: u32,
    /// The layer (for an incremental round, the change) before compression.
    pub bytes: u64,
    pub seconds: f64,
    /// Whether the VE was stopped for it (the last round).
    pub last: bool,
}

/// What `migrate` did.
#[derive(Debug, Clone, Serialize)]
pub struct Migrated {
    pub ve: String,
    pub dest: String,
    pub rounds: Vec<RoundReport>,
    /// From the moment the VE began to stop here to its start on the target
    /// (0 for a VE that was not running).
    pub downtime_ms: f64,
    pub seconds: f64,
    /// Its config on the target.
    pub config: VeConfig,
    /// What differs there (id, addresses, MACs, template version).
    pub changes: Vec<String>,
    pub template_sent: bool,
}

/// The target's answer to each message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// To the first message: the target has no version with the template's
    /// content.
    #[serde(default)]
    pub need_template: bool,
    /// To the last round: the VE made there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<VeConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    #[serde(default)]
    pub started: bool,
    /// To a replication's first message: the replica the standby has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub have: Option<String>,
}

/// Runs the target's end of a channel (migration, replication): `steps`
/// reads the source's messages from `input` and answers each; an error is
/// answered too, as the last line. `Ok(Some(e))`: it failed, and the source
/// was told (it reports it; the target's own stderr stays quiet, or the
/// operator would read it twice); `Err`: it failed and the source could not
/// be told.
pub(crate) fn serve_channel<R: Read>(
    name: &str,
    input: R,
    mut output: impl Write,
    steps: impl FnOnce(&mut BufReader<R>, &mut dyn FnMut(&Reply) -> Result<()>) -> Result<()>,
) -> Result<Option<Error>> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let mut answer = |r: &Reply| -> Result<()> {
        let line = serde_json::to_string(r).map_err(|e| Error::ve(name, e.to_string()))?;
        writeln!(output, "{line}")
            .and_then(|()| output.flush())
            .map_err(|e| Error::ve(name, format!("the source went away: {e}")))
    };
    match steps(&mut input, &mut answer) {
        Ok(()) => Ok(None),
        Err(e) => {
            let told = answer(&Reply {
                ok: false,
                error: Some(e.to_string()),
                ..Default::default()
            });
            match told {
                Ok(()) => Ok(Some(e)),
                Err(_) => Err(e),
            }
        }
    }
}

/// The source's first message: the manifest of VE `name`, which it sends.
pub(crate) fn read_hello(name: &str, input: &mut impl BufRead, label: &Path) -> Result<Manifest> {
    crate::config::validate_name(name)?;
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| Error::ve(name, format!("the source: {e}")))?;
    let hello = parse_manifest(label, line.trim().as_bytes())?;
    if hello.ve != name {
        return Err(Error::ve(name, "the source sent another VE"));
    }
    Ok(hello)
}

/// Where a migration goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dest {
    Root(PathBuf),
    Ssh {
        host: String,
        port: Option<u16>,
        root: Option<String>,
    },
}

pub(crate) fn parse_dest(s: &str) -> Result<Dest> {
    let bad = |why: &str| Error::Option {
        option: "DEST".into(),
        reason: format!("{s:?}: {why}"),
    };
    let Some(rest) = s.strip_prefix("ssh://") else {
        if s.contains("://") {
            return Err(bad("a root directory or ssh://[USER@]HOST[:PORT][/ROOT]"));
        }
        return Ok(Dest::Root(PathBuf::from(s)));
    };
    let (authority, root) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_string())),
        None => (rest, None),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .map_err(|_| bad("the port is not a number"))?,
            ),
        ),
        None => (authority, None),
    };
    let ok = !host.is_empty()
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._-".contains(&b));
    if !ok {
        return Err(bad("not a host name"));
    }
    if root
        .as_deref()
        .is_some_and(|r| r.contains(['\'', '\n', '\0']))
    {
        return Err(bad("the root path has quotes or newlines"));
    }
    Ok(Dest::Ssh {
        host: host.to_string(),
        port,
        root,
    })
}

/// The target's end of the channel, running.
pub(crate) struct Peer {
    child: std::process::Child,
    pub(crate) to: BufWriter<std::process::ChildStdin>,
    from: BufReader<std::process::ChildStdout>,
    what: String,
}

impl Peer {
    pub(crate) fn start(
        dest: &Dest,
        sub: &str,
        ve: &str,
        ssh: Option<&str>,
        remote_vectl: Option<&str>,
    ) -> Result<Peer> {
        let mut cmd = match dest {
            Dest::Root(root) => {
                let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
                let mut c = Command::new(exe);
                c.arg("--root").arg(root);
                c
            }
            Dest::Ssh { host, port, root } => {
                let ssh = ssh.unwrap_or("ssh");
                let words = shell_words::split(ssh).map_err(|e| Error::Option {
                    option: "--ssh".into(),
                    reason: e.to_string(),
                })?;
                let Some((prog, args)) = words.split_first() else {
                    return Err(Error::Option {
                        option: "--ssh".into(),
                        reason: "empty".into(),
                    });
                };
                let mut c = Command::new(prog);
                c.args(args).arg("-o").arg("BatchMode=yes");
                if let Some(p) = port {
                    c.arg("-p").arg(p.to_string());
                }
                let remote = remote_vectl.unwrap_or("vectl");
                let mut line = format!("{remote} ");
                if let Some(r) = root {
                    line.push_str(&format!("--root '{r}' "));
                }
                line.push_str(&format!("{sub} {ve}"));
                c.arg("--").arg(host).arg(line);
                c
            }
        };
        if let Dest::Root(_) = dest {
            cmd.arg(sub).arg(ve);
        }
        let mut child = cmd
            .env_remove("VECTL_ROOT")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::ve(ve, format!("cannot reach the target: {e}")))?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::ve(ve, "cannot reach the target: no pipes"));
        };
        Ok(Peer {
            child,
            to: BufWriter::with_capacity(1 << 20, to),
            from: BufReader::new(from),
            what: format!("VE {ve}: the target"),
        })
    }

    /// The target's answer; an error when it says one or goes away.
    pub(crate) fn reply(&mut self) -> Result<Reply> {
        self.to.flush().map_err(|e| self.gone(&e.to_string()))?;
        let mut line = String::new();
        let n = self
            .from
            .read_line(&mut line)
            .map_err(|e| self.gone(&e.to_string()))?;
        if n == 0 {
            return Err(self.gone("it ended without an answer"));
        }
        let r: Reply = serde_json::from_str(line.trim())
            .map_err(|e| self.gone(&format!("an answer that does not parse: {e}")))?;
        if !r.ok {
            return Err(Error::Refused {
                what: self.what.clone(),
                reason: r.error.unwrap_or_else(|| "refused".into()),
            });
        }
        Ok(r)
    }

    pub(crate) fn gone(&self, why: &str) -> Error {
        Error::Refused {
            what: self.what.clone(),
            reason: why.to_string(),
        }
    }

    pub(crate) fn end(mut self) {
        drop(self.to);
        let _ = self.child.wait();
    }

    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    /// Moves VE `name_or_id` to another root: see the module's documentation.
    pub(crate) fn migrate(&self, name_or_id: &str, opts: &MigrateOptions) -> Result<Migrated> {
        let t0 = Instant::now();
        let dest = parse_dest(&opts.dest)?;
        if let Dest::Root(r) = &dest
            && r.canonicalize().ok() == self.root().canonicalize().ok()
        {
            return Err(Error::Option {
                option: "DEST".into(),
                reason: "that is this root".into(),
            });
        }
        let ve = self.resolve_existing(name_or_id)?;
        let lock = self.lock_ve(&ve)?;
        let mut cfg = self.load_config(&ve)?;
        self.finish_move(&mut cfg)?;
        let pool = self.pool();
        let (tv, template, layer, was_running) = self.what_goes(&cfg)?;
        let live = opts.live && was_running;
        if live {
            self.check_live(&cfg)?;
        }
        let images = crate::checkpoint::images_dir(self.root(), &ve);
        let manifest = |id: String, parent: Option<String>, round: Round, with_template| Manifest {
            parent,
            with_template,
            consistency: if round.last || !was_running {
                Consistency::Stopped
            } else {
                Consistency::Frozen
            },
            migration: Some(round),
            ..Manifest::of(&cfg, id, layer, template.clone(), was_running)
        };
        pool.backup_bases_dir(&ve).map_err(|e| ve_storage(&ve, e))?;
        let ids: Vec<String> = (0..=opts.rounds + 1)
            .map(|n| format!("{ve}-migrate-{n}"))
            .collect();
        let clear_bases = || {
            for id in &ids {
                let _ = pool.remove_backup_base(&ve, id);
                let _ =
                    std::fs::remove_file(pool.backup_base(&ve, id).with_extension("snar.partial"));
            }
        };
        clear_bases();
        let mut peer = Peer::start(
            &dest,
            "migrate-receive",
            &ve,
            opts.ssh.as_deref(),
            opts.remote_vectl.as_deref(),
        )?;
        let mut rounds = Vec::new();
        let mut stopped_at: Option<Instant> = None;
        let template_dir = self.store().path(&tv);
        // Everything up to the target's answer to the last round: on an
        // error the source VE runs again.
        let mut template_sent = false;
        let mut frozen = false;
        // The init of the VE whose processes CRIU left stopped.
        let mut checkpointed: Option<i32> = None;
        let outcome = (|| -> Result<Reply> {
            let hello = serde_json::to_string(&manifest(
                String::new(),
                None,
                Round {
                    n: 0,
                    last: false,
                    checkpoint: false,
                },
                false,
            ))
            .map_err(|e| Error::ve(&ve, e.to_string()))?;
            writeln!(peer.to, "{hello}").map_err(|e| peer.gone(&e.to_string()))?;
            let need_template = peer.reply()?.need_template;
            template_sent = need_template;
            let mut n = 0u32;
            loop {
                let last = n > opts.rounds
                    || !was_running
                    || rounds
                        .last()
                        .is_some_and(|r: &RoundReport| n > 1 && r.bytes < SMALL_ROUND);
                if last && was_running && stopped_at.is_none() {
                    // (The benchmark changes the VE's files here.)
                    crate::failpoint::stop("migrate-before-switch");
                    stopped_at = Some(Instant::now());
                    if live {
                        let rs = self
                            .alive_state(&ve)?
                            .ok_or_else(|| Error::ve(&ve, "it stopped during the migration"))?;
                        let _ = std::fs::remove_dir_all(&images);
                        crate::checkpoint::dump(rs.pid, &images)
                            .map_err(|e| Error::ve(&ve, format!("--live: {e}")))?;
                        checkpointed = Some(rs.pid);
                    } else if opts.clean_stop {
                        let stop = StopOptions {
                            timeout: opts.stop_timeout,
                            ..Default::default()
                        };
                        self.stop_locked(&cfg, stop)?;
                    } else {
                        self.freeze_held(&ve)?;
                        frozen = true;
                    }
                }
                let t = Instant::now();
                let id = ids[n as usize].clone();
                let parent = n.checked_sub(1).map(|p| ids[p as usize].clone());
                let mut cmd = match layer {
                    LayerFormat::BtrfsSend => {
                        let take = || {
                            pool.take_backup_base(&ve, &id)
                                .map(|_| ())
                                .map_err(|e| ve_storage(&ve, e))
                        };
                        if frozen {
                            take()?;
                        } else {
                            self.with_layer_still(&ve, take)?;
                        }
                        send_cmd(pool, &ve, &id, parent.as_deref())
                    }
                    LayerFormat::Tar => {
                        // Not frozen: what changes while tar reads goes in
                        // the next round, and the last is read stopped.
                        let snar = pool.backup_base(&ve, &id);
                        if let Some(p) = &parent {
                            let from = pool.backup_base(&ve, p);
                            std::fs::copy(&from, &snar).map_err(io_err(&from))?;
                        }
                        tar_create(&pool.ve_volume(&ve).dir, Some(&snar))
                    }
                };
                let with_checkpoint = last && checkpointed.is_some();
                let round = Round {
                    n,
                    last,
                    checkpoint: with_checkpoint,
                };
                let m = manifest(id, parent, round, n == 0 && need_template);
                let td = (n == 0 && need_template).then_some(template_dir.as_path());
                let (_, bytes) = write_stream(
                    &mut peer.to,
                    &m,
                    td,
                    &mut cmd,
                    Path::new(&opts.dest),
                    with_checkpoint.then_some(images.as_path()),
                )?;
                crate::failpoint::hit("migrate-after-round");
                let reply = peer.reply()?;
                rounds.push(RoundReport {
                    n,
                    bytes,
                    seconds: t.elapsed().as_secs_f64(),
                    last,
                });
                if last {
                    return Ok(reply);
                }
                n += 1;
            }
        })();
        clear_bases();
        let reply = match outcome {
            Ok(r) => {
                peer.end();
                r
            }
            Err(e) => {
                peer.kill();
                if let Some(init) = checkpointed {
                    // Its processes go on here where they stopped (all of
                    // them, as they were at the checkpoint).
                    let procs = self
                        .cgroups()
                        .and_then(|c| c.procs(&ve))
                        .unwrap_or_default();
                    crate::checkpoint::resume(init, &procs);
                    let _ = std::fs::remove_dir_all(&images);
                    return Err(e);
                }
                if frozen {
                    // It goes on here as if nothing happened.
                    return match self.thaw_held(&ve) {
                        Ok(()) => Err(e),
                        Err(t) => Err(Error::Then {
                            first: Box::new(e),
                            then: format!("and it could not be thawed here: {t}"),
                        }),
                    };
                }
                drop(lock);
                if stopped_at.is_some()
                    && let Err(again) = self.start(&ve, true)
                {
                    return Err(Error::Then {
                        first: Box::new(e),
                        then: format!("and it did not start again here: {again}"),
                    });
                }
                return Err(e);
            }
        };
        let downtime_ms = stopped_at.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1000.0);
        let _ = std::fs::remove_dir_all(&images);
        // The target runs it: it goes here, killed while still frozen (or
        // stopped by CRIU).
        if frozen || checkpointed.is_some() {
            let fast = StopOptions {
                fast: true,
                ..Default::default()
            };
            self.stop_locked(&cfg, fast)?;
            self.thaw_held(&ve)?;
        }
        drop(lock);
        self.destroy(&ve, true)?;
        Ok(Migrated {
            ve: ve.clone(),
            dest: opts.dest.clone(),
            rounds,
            downtime_ms,
            seconds: t0.elapsed().as_secs_f64(),
            config: reply.config.unwrap_or(cfg),
            changes: reply.changes,
            template_sent,
        })
    }

    /// Whether a `--live` migration of `cfg` can work here: CRIU usable on
    /// this kernel, the VE privileged, nothing of it held by the supervisor.
    fn check_live(&self, cfg: &VeConfig) -> Result<()> {
        let ve = cfg.name.as_str();
        let refuse = |why: String| Error::ve(ve, format!("--live: {why}"));
        crate::checkpoint::usable().map_err(refuse)?;
        if cfg.userns.is_some() {
            return Err(refuse(
                "CRIU cannot restore a VE in a user namespace yet (its idmapped root); migrate it without --live".into(),
            ));
        }
        if let Some(rs) = self.alive_state(ve)?
            && (rs.console || rs.sysinfo)
        {
            return Err(refuse(
                "its console and sysinfo(2) answers are held by the supervisor, which CRIU cannot move; migrate it without --live".into(),
            ));
        }
        Ok(())
    }

    /// The target's end of a migration (`vectl migrate-receive VE`): reads
    /// the source's messages from `input`, answers on `output`. On an error
    /// or a source that goes away, nothing of the VE is left here.
    pub(crate) fn migrate_receive(
        &self,
        name: &str,
        input: impl Read,
        output: impl Write,
    ) -> Result<Option<Error>> {
        serve_channel(name, input, output, |input, answer| {
            self.migrate_receive_steps(name, input, answer)
        })
    }

    fn migrate_receive_steps<R: Read>(
        &self,
        name: &str,
        input: &mut BufReader<R>,
        answer: &mut dyn FnMut(&Reply) -> Result<()>,
    ) -> Result<()> {
        let label = PathBuf::from(format!("the migration of VE {name}"));
        let hello = read_hello(name, input, &label)?;
        if hello.migration.is_none() {
            return Err(Error::ve(name, "the source sent no migration"));
        }
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(name)?;
        if let Some(existing) = VeConfig::load(&self.config_path(name))? {
            return Err(Error::ve(
                name,
                format!("already exists on the target (id {})", existing.id),
            ));
        }
        self.finish_interrupted(name)?;
        let need_template = self.template_with(&hello.template)?.is_none();
        let made = (|| -> Result<Landed> {
            let mut rx = Receiver::new(self, name, hello.layer)?;
            answer(&Reply {
                ok: true,
                need_template,
                ..Default::default()
            })?;
            loop {
                let mut r = archive::Reader::new(&mut *input)
                    .map_err(|e| Error::ve(name, format!("the source's stream: {e}")))?;
                let m = parse_manifest(&label, r.manifest())?;
                if m.ve != name {
                    return Err(Error::ve(name, "the source sent another VE"));
                }
                let round = m
                    .migration
                    .ok_or_else(|| Error::ve(name, "the source's stream is no migration round"))?;
                rx.take(&mut r, &label, &m, round.n == 0 && need_template)?;
                if !round.last {
                    answer(&Reply {
                        ok: true,
                        ..Default::default()
                    })?;
                    continue;
                }
                let images = rx.checkpoint.take().filter(|_| round.checkpoint);
                let (cfg, _, changes) = rx.commit(&m, "migrate-before-config")?;
                // Restored processes keep the addresses and MACs they had.
                let moved_nics = images.is_some() && cfg.nics != m.config.nics;
                return Ok(Landed {
                    cfg,
                    changes,
                    run: m.was_running,
                    images,
                    moved_nics,
                });
            }
        })();
        let Landed {
            cfg,
            changes,
            run,
            images,
            moved_nics,
        } = match made {
            Ok(m) => m,
            Err(e) => {
                let _ = self.finish_interrupted(name);
                let _ = std::fs::remove_dir_all(crate::checkpoint::images_dir(self.root(), name));
                return Err(e);
            }
        };
        drop((_lock, _host));
        let started = if run {
            let started = match &images {
                Some(dir) if moved_nics => {
                    let _ = std::fs::remove_dir_all(dir);
                    Err(Error::ve(
                        name,
                        format!(
                            "--live: its addresses or MACs would change here ({}); migrate it without --live",
                            changes.join("; ")
                        ),
                    ))
                }
                Some(dir) => {
                    let r = self.start_from_checkpoint(name, dir).map(|_| ());
                    let _ = std::fs::remove_dir_all(dir);
                    r
                }
                None => self.start(name, false).map(|_| ()),
            };
            if let Err(e) = started {
                // Not started: the source keeps it.
                let _ = self.destroy(name, true);
                return Err(e);
            }
            true
        } else {
            false
        };
        answer(&Reply {
            ok: true,
            config: Some(cfg),
            changes,
            started,
            ..Default::default()
        })
    }
}

/// What the target made of a migration's last round.
struct Landed {
    cfg: VeConfig,
    changes: Vec<String>,
    /// It ran at the source: it is started here.
    run: bool,
    /// The checkpoint to restore it from (`--live`).
    images: Option<PathBuf>,
    /// Its NICs changed here (a checkpoint cannot be restored then).
    moved_nics: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            parse_dest("/var/lib/vectl2").unwrap(),
            Dest::Root("/var/lib/vectl2".into())
        );
        assert_eq!(
            parse_dest("ssh://root@h2.example:2222/srv/vectl").unwrap(),
            Dest::Ssh {
                host: "root@h2.example".into(),
                port: Some(2222),
                root: Some("/srv/vectl".into())
            }
        );
        assert_eq!(
            parse_dest("ssh://h2").unwrap(),
            Dest::Ssh {
                host: "h2".into(),
                port: None,
                root: None
            }
        );
        for bad in [
            "ssh://",
            "ssh://-oProxyCommand=x",
            "ssh://h:port",
            "http://h",
            "ssh://h/a'b",
        ] {
            assert!(parse_dest(bad).is_err(), "{bad}");
        }
    }
}
