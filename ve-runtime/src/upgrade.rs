//! Change control for a VE's template version: the conflict report, upgrade
//! (a snapshot of the VE's own files first), rollback (that snapshot back, and
//! the previous version), and the history of these moves in the VE's config.
//!
//! # A killed move
//!
//! An upgrade or rollback changes two things that cannot change together: the
//! VE's files (a snapshot taken, or restored) and its config (the version it is
//! pinned to). So each move first stops the VE, then appends itself to the VE's
//! history marked `pending` (an intent, written durably), then touches the
//! files, and last writes the config again with the new version and the mark
//! cleared. A vectl killed in between leaves a stopped VE whose history ends in
//! a pending move, and the next command that changes the VE (start, upgrade,
//! rollback, snapshot create/rm/restore, clone from it, a fleet rollout, `pool
//! check --repair`) finishes it first ([`Host::finish_move`]):
//!
//! - a pending upgrade is undone: the config never left the old version and
//!   the VE's files were not touched, so the snapshot (if it was taken) is
//!   deleted and the record dropped, as if the upgrade had not begun;
//! - a pending rollback is completed: the restore may have replaced the VE's
//!   files already, so the snapshot is restored (again: it is read-only, the
//!   result is the same) and the config moved back.
//!
//! A VE is thus never started, cloned or snapshotted with files that do not
//! belong to the version it is pinned to. `vectl history` shows a pending move.
//!
//! # Committing
//!
//! Every upgrade keeps its way back: the snapshot, and the version it came from
//! (which `template rm`/`gc` then keep). `commit` ends that once the operator
//! is satisfied: it records a `commit` move, after which no earlier upgrade is
//! open, and then deletes the upgrades' snapshots. Killed in between, the
//! snapshots are left unreferenced; `commit` again (or `snapshot rm`) deletes
//! them.

use serde::Serialize;

use crate::config::{TemplateMove, VeConfig};
use crate::error::{Error, Result};
use crate::host::Host;
use crate::options::StopOptions;

/// What `commit` did to one VE.
#[derive(Debug, Clone, Serialize)]
pub struct Committed {
    pub ve: String,
    /// The version the VE stays on.
    pub template: String,
    /// The versions it could have been rolled back to, no longer kept for it.
    pub released: Vec<String>,
    /// The upgrade snapshots deleted.
    pub snapshots: Vec<String>,
}

/// What `upgrade --check` finds.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeCheck {
    pub ve: String,
    pub from: String,
    pub to: String,
    pub conflicts: Vec<ve_templates::Conflict>,
}

/// What `upgrade` and `rollback` did.
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub ve: String,
    pub from: String,
    pub to: String,
    /// The snapshot taken (upgrade) or restored (rollback).
    pub snapshot: String,
    /// Whether the VE was running and was started again.
    pub restarted: bool,
    /// Conflicts an upgrade went ahead with (`--force`).
    pub conflicts: Vec<ve_templates::Conflict>,
}

/// How a fleet rollout goes (`upgrade --all`).
#[derive(Debug, Clone)]
pub struct Rollout {
    /// VEs per batch.
    pub batch: usize,
    /// Run in each upgraded VE that runs (`sh -c`).
    pub health: Option<String>,
    /// How long the health command is retried before the VE counts as failed.
    pub health_timeout: std::time::Duration,
    /// Upgrade VEs with conflicts too.
    pub force: bool,
    pub stop: StopOptions,
}

/// One VE of a fleet rollout.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    pub ve: String,
    /// `upgraded`, `rolled back`, `skipped`, `failed` or `not reached`.
    pub outcome: String,
    pub detail: String,
}

/// The upgrades not rolled back or committed yet, oldest first: rollbacks undo
/// the latest.
/// A pending move does not count: a pending upgrade is undone by the next
/// command, a pending rollback completed.
pub(crate) fn open_upgrades(history: &[TemplateMove]) -> Vec<&TemplateMove> {
    let mut stack = Vec::new();
    for m in history.iter().filter(|m| !m.pending) {
        match m.action.as_str() {
            "upgrade" => stack.push(m),
            "rollback" => {
                stack.pop();
            }
            "commit" => stack.clear(),
            _ => {}
        }
    }
    stack
}

impl Host {
    /// The conflict report of moving VE `name` to template version `target`.
    pub(crate) fn upgrade_check(&self, name: &str, target: &str) -> Result<UpgradeCheck> {
        let ve = self.resolve_existing(name)?;
        let cfg = self.load_config(&ve)?;
        self.check_locked(&cfg, target)
    }

    fn check_locked(&self, cfg: &VeConfig, target: &str) -> Result<UpgradeCheck> {
        let ve = cfg.name.clone();
        let tref: ve_templates::TemplateRef = target.parse()?;
        let to = self.store().resolve(&tref)?;
        let from = self.store().resolve(&cfg.template.parse()?)?;
        if from.reference() == to.reference() {
            return Err(Error::ve(&ve, format!("already on {}", to.reference())));
        }
        // The VE may run: its layer changes while it is compared, and its
        // files and the versions (a build VE wrote them) may be symlinks to the
        // host's files, FIFOs or huge. `conflicts` reads them by handles,
        // follows no symlink and never reads a file whole.
        let upper = self.pool().ve_volume(&ve).upper();
        let old = self.store().path(&from);
        let mut conflicts = ve_templates::conflicts(&upper, &old, &self.store().path(&to))
            .map_err(|e| Error::ve(&ve, format!("comparing its files: {e}")))?;
        // What vectl writes at every start is no conflict: the upgrade takes
        // it out, and the next start writes it over the new version's files.
        let vectl_files = crate::net::forget_vectl_files(&upper, &old, &cfg.hostname, true)?;
        conflicts.retain(|c| !vectl_files.contains(&c.path.as_str()));
        Ok(UpgradeCheck {
            ve,
            from: from.reference(),
            to: to.reference(),
            conflicts,
        })
    }

    /// Moves VE `name` to template version `target`: refused on conflicts
    /// unless `force`; its own files are snapshotted first (what `rollback`
    /// restores); a running VE is stopped (`stop`) and started again. Crash
    /// safe through a pending history entry (see the module docs).
    pub(crate) fn upgrade(
        &self,
        name: &str,
        target: &str,
        force: bool,
        stop: StopOptions,
    ) -> Result<Moved> {
        let ve = self.resolve_existing(name)?;
        if !self.pool().backend().has_snapshots() {
            return Err(Error::ve(
                &ve,
                "upgrade keeps a snapshot of the VE's files for rollback, which needs the btrfs or xfs pool",
            ));
        }
        // What ran before the upgrade runs again, also when the upgrade failed
        // after the stop (then on the version it was on).
        let mut was_running = false;
        let moved = self.upgrade_locked(&ve, target, force, stop, &mut was_running);
        let restart = match &moved {
            Ok(m) => m.restarted,
            Err(_) => was_running,
        };
        if restart && let Err(e) = self.start(&ve, false) {
            return Err(match moved {
                Ok(m) => Error::ve(
                    &ve,
                    format!(
                        "upgraded to {} (snapshot {}) but it did not start again: {e}; `vectl rollback {ve}` takes it back",
                        m.to, m.snapshot
                    ),
                ),
                Err(first) => Error::Then {
                    first: Box::new(first),
                    then: format!("and it did not start again on its version: {e}"),
                },
            });
        }
        moved
    }

    /// [`Host::upgrade`] under the host and VE locks, up to the restart;
    /// `was_running` says whether it stopped the VE.
    fn upgrade_locked(
        &self,
        ve: &str,
        target: &str,
        force: bool,
        stop: StopOptions,
        was_running: &mut bool,
    ) -> Result<Moved> {
        // The host lock keeps `template rm` off the target meanwhile.
        let _host = self.lock_host()?;
        let _lock = self.lock_ve(ve)?;
        let mut cfg = self.load_config(ve)?;
        self.finish_move(&mut cfg)?;
        let refuse = |check: &UpgradeCheck| {
            (!check.conflicts.is_empty() && !force).then(|| Error::Conflicts {
                ve: ve.to_string(),
                to: check.to.clone(),
                paths: check.conflicts.iter().map(|c| c.path.clone()).collect(),
            })
        };
        let mut check = self.check_locked(&cfg, target)?;
        if let Some(e) = refuse(&check) {
            return Err(e);
        }
        if self.alive_state(ve)?.is_some() {
            self.stop_locked(&cfg, stop)?;
            *was_running = true;
            // What it wrote while it shut down counts too.
            check = self.check_locked(&cfg, target)?;
            if let Some(e) = refuse(&check) {
                return Err(e);
            }
        }
        crate::failpoint::hit("upgrade-after-stop");
        let snapshot = self.free_snapshot_name(ve, "upgrade")?;
        // The intent: until it is cleared, the next command undoes this.
        cfg.history.push(TemplateMove {
            at: crate::state::now_rfc3339(),
            action: "upgrade".into(),
            from: check.from.clone(),
            to: check.to.clone(),
            snapshot: Some(snapshot.clone()),
            pending: true,
        });
        cfg.store(&self.config_path(ve))?;
        crate::failpoint::hit("upgrade-after-intent");
        let done = self
            .pool()
            .create_snapshot(ve, &snapshot)
            .map_err(quota_err(ve))
            .and_then(|()| {
                crate::failpoint::hit("upgrade-after-snapshot");
                // (Killed here, the next command puts the VE back on its
                // version, where its next start writes these files again.)
                let old = self.store().resolve(&check.from.parse()?)?;
                crate::net::forget_vectl_files(
                    &self.pool().ve_volume(ve).upper(),
                    &self.store().path(&old),
                    &cfg.hostname,
                    false,
                )?;
                cfg.template = check.to.clone();
                if let Some(m) = cfg.history.last_mut() {
                    m.pending = false;
                }
                cfg.store(&self.config_path(ve))
            });
        if let Err(e) = done {
            // Undone now if it can be; else by the next command (the restart
            // finishes it first).
            let _ = self
                .load_config(ve)
                .and_then(|mut c| self.finish_move(&mut c));
            return Err(e);
        }
        crate::failpoint::hit("upgrade-before-restart");
        Ok(Moved {
            ve: ve.to_string(),
            from: check.from,
            to: check.to,
            snapshot,
            restarted: *was_running,
            conflicts: check.conflicts,
        })
    }

    /// Undoes VE `name`'s latest upgrade that is not rolled back yet: its own
    /// files exactly as they were before it (the snapshot) and the version it
    /// came from. A running VE is stopped and started again. If a move of the
    /// VE was killed, finishing it is the whole rollback: a killed upgrade is
    /// undone, a killed rollback completed (the VE stays stopped).
    pub(crate) fn rollback(&self, name: &str, stop: StopOptions) -> Result<Moved> {
        let ve = self.resolve_existing(name)?;
        let moved = {
            let _host = self.lock_host()?;
            let _lock = self.lock_ve(&ve)?;
            let mut cfg = self.load_config(&ve)?;
            if let Some(m) = self.finish_move(&mut cfg)? {
                let (from, to) = if m.action == "upgrade" {
                    (m.to, m.from)
                } else {
                    (m.from, m.to)
                };
                return Ok(Moved {
                    ve,
                    from,
                    to,
                    snapshot: m.snapshot.unwrap_or_default(),
                    restarted: false,
                    conflicts: Vec::new(),
                });
            }
            let Some(last) = open_upgrades(&cfg.history).last().map(|m| (*m).clone()) else {
                return Err(Error::ve(
                    &ve,
                    format!("no upgrade to roll back (see `vectl history {ve}`)"),
                ));
            };
            let snapshot = last.snapshot.clone().unwrap_or_default();
            // The version it goes back to must still be there.
            self.store().resolve(&last.from.parse()?)?;
            // The snapshot's files are made ready beside the VE's while it runs
            // on: if they do not fit (its disk limit was lowered since), nothing
            // has changed and it keeps running.
            self.pool()
                .stage_restore(&ve, &snapshot)
                .map_err(quota_err(&ve))?;
            let running = self.alive_state(&ve)?.is_some();
            if running {
                self.stop_locked(&cfg, stop)?;
            }
            crate::failpoint::hit("rollback-after-stop");
            let from = cfg.template.clone();
            // The intent: until it is cleared, the next command completes this.
            cfg.history.push(TemplateMove {
                at: crate::state::now_rfc3339(),
                action: "rollback".into(),
                from: from.clone(),
                to: last.from.clone(),
                snapshot: Some(snapshot.clone()),
                pending: true,
            });
            cfg.store(&self.config_path(&ve))?;
            crate::failpoint::hit("rollback-after-intent");
            self.restore_for_rollback(&cfg, &snapshot, true)?;
            crate::failpoint::hit("rollback-after-restore");
            cfg.template = last.from.clone();
            if let Some(m) = cfg.history.last_mut() {
                m.pending = false;
            }
            cfg.store(&self.config_path(&ve))?;
            crate::failpoint::hit("rollback-before-restart");
            Moved {
                ve: ve.clone(),
                from,
                to: last.from,
                snapshot,
                restarted: running,
                conflicts: Vec::new(),
            }
        };
        if moved.restarted
            && let Err(e) = self.start(&ve, false)
        {
            return Err(Error::ve(
                &ve,
                format!(
                    "rolled back to {} but it did not start again: {e}",
                    moved.to
                ),
            ));
        }
        Ok(moved)
    }

    /// Puts VE `cfg`'s files back to an upgrade's snapshot (`staged`: already
    /// made ready by `stage_restore`), under its disk limit of now. A failure
    /// leaves the pending rollback for the next command.
    fn restore_for_rollback(&self, cfg: &VeConfig, snapshot: &str, staged: bool) -> Result<()> {
        let ve = &cfg.name;
        let pool = self.pool();
        if staged {
            pool.commit_restore(ve)
        } else {
            pool.restore_snapshot(ve, snapshot)
        }
        .map_err(quota_err(ve))
        .map_err(|e| Error::RollbackPending {
            ve: ve.to_string(),
            source: Box::new(e),
        })?;
        Ok(())
    }

    /// Finishes the move a killed vectl left pending at the end of VE `cfg`'s
    /// history (see the module docs): an upgrade is undone (its snapshot
    /// deleted, the record dropped: the VE never left the old version), a
    /// rollback completed (the snapshot restored, the config moved back).
    /// `cfg` is updated and stored. Returns the move, `None` if none was
    /// pending. The caller holds the VE's lock; the VE is stopped (a move
    /// stops it before it writes its intent, and start finishes the move
    /// first). Each step can be repeated, so a kill here is finished by the
    /// next command too.
    ///
    /// First, what a killed rollback or snapshot restore left of the VE's files
    /// goes (a staged copy of a snapshot is deleted, a layer moved aside is put
    /// back): a snapshot restore is undone, a pending rollback is then done
    /// again below.
    pub(crate) fn finish_move(&self, cfg: &mut VeConfig) -> Result<Option<TemplateMove>> {
        let pool = self.pool();
        if pool.restore_left(&cfg.name) {
            pool.finish_restore(&cfg.name).map_err(|e| {
                Error::ve(
                    &cfg.name,
                    format!("cannot remove what a killed rollback or snapshot restore left: {e}"),
                )
            })?;
        }
        let Some(m) = cfg.history.last().filter(|m| m.pending).cloned() else {
            return Ok(None);
        };
        let ve = cfg.name.clone();
        match m.action.as_str() {
            "upgrade" => {
                if let Some(snap) = &m.snapshot {
                    match self.pool().remove_snapshot(&ve, snap) {
                        Ok(()) | Err(quota::Error::NoSnapshot { .. }) => {}
                        Err(e) => return Err(quota_err(&ve)(e)),
                    }
                }
                cfg.history.pop();
                cfg.template = m.from.clone();
            }
            "rollback" => {
                let snap = m.snapshot.clone().unwrap_or_default();
                self.restore_for_rollback(cfg, &snap, false)?;
                cfg.template = m.to.clone();
                if let Some(last) = cfg.history.last_mut() {
                    last.pending = false;
                }
            }
            other => {
                return Err(Error::ve(
                    &ve,
                    format!("its history ends in an unknown pending move {other:?}"),
                ));
            }
        }
        cfg.store(&self.config_path(&ve))?;
        Ok(Some(m))
    }

    /// [`Host::finish_move`] of VE `ve` under its lock (for commands that do
    /// not otherwise change it: a fleet rollout, `pool check --repair`).
    pub(crate) fn finish_move_of(&self, ve: &str) -> Result<Option<TemplateMove>> {
        let _lock = self.lock_ve(ve)?;
        let mut cfg = self.load_config(ve)?;
        self.finish_move(&mut cfg)
    }

    /// Runs a rollout's health command in VE `ve` until it succeeds or
    /// `timeout` has passed (a VE just started may still be bringing its
    /// services up): the last exit status.
    fn health_check(&self, ve: &str, cmd: &str, timeout: std::time::Duration) -> Result<i32> {
        let wrapped = format!("{{ {cmd}\n}} </dev/null >/dev/null 2>&1");
        let opts = crate::options::ExecOptions {
            argv: vec!["/bin/sh".into(), "-c".into(), wrapped],
            ..Default::default()
        };
        let until = std::time::Instant::now() + timeout;
        loop {
            let code = self.exec(ve, &opts)?;
            if code == 0 || std::time::Instant::now() >= until {
                return Ok(code);
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Moves every VE on template version `from` to `to`, `batch` at a time (by
    /// id; VEs skipped for conflicts take no place in a batch). After each
    /// batch, `health` runs (`sh -c`, output discarded) in each VE of it that
    /// runs, again until it succeeds or `health_timeout` has passed; a VE whose
    /// check fails is rolled back and the rollout stops there, as it does on
    /// any other failure. VEs with conflicts are skipped unless `force`.
    /// `progress` sees each VE's row once its outcome is known. Returns a row
    /// per VE, in order, including those never reached.
    pub(crate) fn upgrade_fleet(
        &self,
        from: &str,
        to: &str,
        opts: &Rollout,
        progress: &mut dyn FnMut(&FleetRow),
    ) -> Result<Vec<FleetRow>> {
        let Rollout {
            batch,
            health,
            health_timeout,
            force,
            stop,
        } = opts.clone();
        let health = health.as_deref();
        let from_v = self.store().resolve(&from.parse()?)?;
        let to_v = self.store().resolve(&to.parse()?)?;
        if from_v.reference() == to_v.reference() {
            return Err(Error::Option {
                option: "--from and --to".into(),
                reason: format!("both {}", to_v.reference()),
            });
        }
        // Moves a killed vectl left pending (a killed rollout's) are finished
        // first: every VE is then on the version its files belong to. One that
        // cannot be finished is not on `from` (a rollback) or fails below.
        for c in self.configs()? {
            if c.history.last().is_some_and(|m| m.pending) {
                let _ = self.finish_move_of(&c.name);
            }
        }
        let (ves, _) = self.list()?;
        let mut rows: Vec<FleetRow> = ves
            .into_iter()
            .filter(|v| v.template == from_v.reference())
            .map(|v| FleetRow {
                ve: v.name,
                outcome: "not reached".into(),
                detail: String::new(),
            })
            .collect();
        let mut next = 0;
        let mut b = 0;
        while next < rows.len() {
            b += 1;
            // (row, whether it runs) of each VE upgraded in this batch.
            let mut upgraded: Vec<(usize, bool)> = Vec::new();
            while upgraded.len() < batch.max(1) && next < rows.len() {
                let i = next;
                next += 1;
                let ve = rows[i].ve.clone();
                match self.upgrade(&ve, &to_v.reference(), force, stop) {
                    Ok(m) => {
                        rows[i].outcome = "upgraded".into();
                        rows[i].detail = format!("batch {b}, snapshot {}", m.snapshot);
                        upgraded.push((i, m.restarted));
                    }
                    Err(e @ Error::Conflicts { .. }) => {
                        rows[i].outcome = "skipped".into();
                        rows[i].detail = e.to_string();
                        progress(&rows[i]);
                    }
                    Err(e) => {
                        // Any other failure halts the rollout. Moved but not
                        // running again is as bad as a failed check: rolled back.
                        let moved = self
                            .load_config(&ve)
                            .is_ok_and(|c| c.template == to_v.reference());
                        rows[i].outcome = if moved {
                            match self.rollback(&ve, stop) {
                                Ok(_) => {
                                    // It ran before the rollout: run it again.
                                    let _ = self.start(&ve, false);
                                    "rolled back".into()
                                }
                                Err(_) => "failed".into(),
                            }
                        } else {
                            "failed".into()
                        };
                        rows[i].detail = format!("batch {b}: {e}; rollout halted");
                        for &(u, _) in &upgraded {
                            if health.is_some() {
                                rows[u]
                                    .detail
                                    .push_str(", not health-checked (rollout halted)");
                            }
                            progress(&rows[u]);
                        }
                        progress(&rows[i]);
                        return Ok(rows);
                    }
                }
            }
            let mut halted = false;
            for (i, running) in upgraded {
                let Some(cmd) = health else {
                    progress(&rows[i]);
                    continue;
                };
                if !running {
                    rows[i].detail.push_str(", stopped (no health check)");
                    progress(&rows[i]);
                    continue;
                }
                let ve = rows[i].ve.clone();
                let code = self.health_check(&ve, cmd, health_timeout);
                if matches!(code, Ok(0)) {
                    rows[i].detail.push_str(", healthy");
                    progress(&rows[i]);
                    continue;
                }
                let why = match code {
                    Ok(c) => format!(
                        "batch {b}: health check exited {c} (for {} s)",
                        health_timeout.as_secs_f64()
                    ),
                    Err(e) => format!("batch {b}: health check: {e}"),
                };
                match self.rollback(&ve, stop) {
                    Ok(_) => {
                        rows[i].outcome = "rolled back".into();
                        rows[i].detail = format!("{why}; rollout halted");
                    }
                    Err(e) => {
                        rows[i].outcome = "failed".into();
                        rows[i].detail = format!("{why}; rollback failed: {e}");
                    }
                }
                progress(&rows[i]);
                halted = true;
            }
            if halted {
                break;
            }
        }
        Ok(rows)
    }

    /// Keeps VE `name`'s upgrades for good: after it `rollback` has nothing
    /// to undo, the versions they came from are no longer kept for the VE
    /// (`template gc` may remove them) and their snapshots are deleted (also
    /// those of upgrades rolled back since the last commit). Doing it again is
    /// harmless; it deletes what a killed commit left.
    pub(crate) fn commit(&self, name: &str) -> Result<Committed> {
        let ve = self.resolve_existing(name)?;
        self.commit_on(&ve, None)?
            .ok_or_else(|| Error::ve(&ve, "changed while it was being committed"))
    }

    /// [`Host::commit`] of VE `ve` if, under its lock and with any killed
    /// move finished, it is on template version `on` (any, if `None`);
    /// `None` if it is not.
    fn commit_on(&self, ve: &str, on: Option<&str>) -> Result<Option<Committed>> {
        let _lock = self.lock_ve(ve)?;
        let mut cfg = self.load_config(ve)?;
        self.finish_move(&mut cfg)?;
        if on.is_some_and(|t| t != cfg.template) {
            return Ok(None);
        }
        let open = open_upgrades(&cfg.history);
        let mut released: Vec<String> = Vec::new();
        for m in &open {
            if m.from != cfg.template && !released.contains(&m.from) {
                released.push(m.from.clone());
            }
        }
        if let Some(first) = open.first() {
            let from = first.from.clone();
            cfg.history.push(TemplateMove {
                at: crate::state::now_rfc3339(),
                action: "commit".into(),
                from,
                to: cfg.template.clone(),
                snapshot: None,
                pending: false,
            });
            cfg.store(&self.config_path(ve))?;
        }
        crate::failpoint::hit("commit-after-record");
        if !self.pool().backend().has_snapshots() {
            return Ok(Some(Committed {
                ve: ve.to_string(),
                template: cfg.template,
                released,
                snapshots: Vec::new(),
            }));
        }
        // A rollback killed after it staged its copy of a snapshot: no way
        // back needs that copy any more.
        self.pool().finish_restore(ve).map_err(quota_err(ve))?;
        let existing = self.snapshot_names(ve)?;
        // Every upgrade after the commit before the latest one is closed now
        // (committed, or rolled back): their snapshots go. Older ones went with
        // that earlier commit.
        let since = cfg
            .history
            .iter()
            .enumerate()
            .filter(|(_, m)| m.action == "commit")
            .map(|(i, _)| i)
            .rev()
            .nth(1)
            .map_or(0, |i| i + 1);
        let mut snapshots = Vec::new();
        for m in cfg.history[since..]
            .iter()
            .filter(|m| m.action == "upgrade")
        {
            let Some(snap) = &m.snapshot else { continue };
            if existing.contains(snap) && !snapshots.contains(snap) {
                match self.pool().remove_snapshot(ve, snap) {
                    Ok(()) | Err(quota::Error::NoSnapshot { .. }) => {}
                    Err(e) => return Err(quota_err(ve)(e)),
                }
                snapshots.push(snap.clone());
            }
        }
        Ok(Some(Committed {
            ve: ve.to_string(),
            template: cfg.template,
            released,
            snapshots,
        }))
    }

    /// [`Host::commit`] of every VE, or of those on template version `on`,
    /// that has upgrades to keep or their snapshots to delete (VEs with
    /// nothing to commit are left out); a VE that fails, or whose config
    /// cannot be read, is an error of its own and the others go on.
    pub(crate) fn commit_all(&self, on: Option<&str>) -> Result<(Vec<Committed>, Vec<Error>)> {
        let on = match on {
            Some(t) => Some(self.store().resolve(&t.parse()?)?.reference()),
            None => None,
        };
        let (ves, mut errors) = self.list()?;
        let mut done = Vec::new();
        for v in ves {
            match self.commit_on(&v.name, on.as_deref()) {
                Ok(Some(c)) if !c.released.is_empty() || !c.snapshots.is_empty() => done.push(c),
                Ok(_) => {}
                Err(e) => errors.push(e),
            }
        }
        Ok((done, errors))
    }

    /// A VE's template moves, oldest first.
    pub(crate) fn history(&self, name: &str) -> Result<(String, Vec<TemplateMove>)> {
        let ve = self.resolve_existing(name)?;
        Ok((ve.clone(), self.load_config(&ve)?.history))
    }

    /// The names of VE `ve`'s snapshots.
    fn snapshot_names(&self, ve: &str) -> Result<Vec<String>> {
        Ok(self
            .pool()
            .list_snapshots(ve)
            .map_err(quota_err(ve))?
            .into_iter()
            .map(|s| s.name)
            .collect())
    }

    /// `PREFIX-TIME` (`upgrade-20261126-144501`), with `-N` added if the VE
    /// has a snapshot of that name: never the name of an earlier one, so a
    /// rollback cannot take a newer snapshot for an older one.
    fn free_snapshot_name(&self, ve: &str, prefix: &str) -> Result<String> {
        let taken = self.snapshot_names(ve)?;
        let stamp: String = crate::state::now_rfc3339()
            .chars()
            .filter(char::is_ascii_digit)
            .enumerate()
            .flat_map(|(i, c)| (i == 8).then_some('-').into_iter().chain(Some(c)))
            .collect();
        let base = format!("{prefix}-{stamp}");
        Ok(std::iter::once(base.clone())
            .chain((2..).map(|n| format!("{base}-{n}")))
            .find(|n| !taken.contains(n))
            .unwrap_or(base))
    }
}

fn quota_err(ve: &str) -> impl Fn(quota::Error) -> Error + '_ {
    move |e| {
        let msg = e.to_string();
        if msg.starts_with(&format!("VE {ve}: ")) {
            Error::Storage(e)
        } else {
            Error::ve(ve, msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(action: &str, from: &str, to: &str) -> TemplateMove {
        TemplateMove {
            at: String::new(),
            action: action.into(),
            from: from.into(),
            to: to.into(),
            snapshot: Some(format!("{action}-{to}")),
            pending: false,
        }
    }

    #[test]
    fn rollbacks_undo_the_latest_open_upgrade() {
        let h = vec![
            m("upgrade", "bb@1", "bb@2"),
            m("upgrade", "bb@2", "bb@3"),
            m("rollback", "bb@3", "bb@2"),
        ];
        let open = open_upgrades(&h);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].to, "bb@2");
        assert!(open_upgrades(&h[..0]).is_empty());
    }

    #[test]
    fn a_commit_closes_every_upgrade_before_it() {
        let mut h = vec![
            m("upgrade", "bb@1", "bb@2"),
            m("upgrade", "bb@2", "bb@3"),
            m("commit", "bb@1", "bb@3"),
        ];
        assert!(open_upgrades(&h).is_empty());
        h.push(m("upgrade", "bb@3", "bb@4"));
        let open = open_upgrades(&h);
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].from, "bb@3");
        // A rollback after it cannot reach behind the commit.
        h.push(m("rollback", "bb@4", "bb@3"));
        h.push(m("rollback", "bb@3", "bb@2"));
        assert!(open_upgrades(&h).is_empty());
    }

    #[test]
    fn pending_moves_are_not_open_and_read_back() {
        let mut h = vec![m("upgrade", "bb@1", "bb@2")];
        h.push(TemplateMove {
            pending: true,
            ..m("rollback", "bb@2", "bb@1")
        });
        // A pending rollback has not undone the upgrade yet.
        assert_eq!(open_upgrades(&h).len(), 1);
        h[1] = TemplateMove {
            pending: true,
            ..m("upgrade", "bb@2", "bb@3")
        };
        // A pending upgrade is not one to roll back.
        assert_eq!(open_upgrades(&h)[0].to, "bb@2");
        let text = toml::to_string(&h[1]).unwrap();
        assert!(text.contains("pending = true"), "{text}");
        assert_eq!(toml::from_str::<TemplateMove>(&text).unwrap(), h[1]);
        // Finished moves say nothing of it (configs read as before).
        let text = toml::to_string(&h[0]).unwrap();
        assert!(!text.contains("pending"), "{text}");
        assert_eq!(toml::from_str::<TemplateMove>(&text).unwrap(), h[0]);
    }
}
