//! Change control for a VE's template version: the conflict report, upgrade
//! (a snapshot of the VE's own files first), rollback (that snapshot back, and
//! the previous version), and the history of these moves in the VE's config.

use serde::{Deserialize, Serialize};

use crate::config::VeConfig;
use crate::error::{Error, Result};
use crate::host::Host;
use crate::ve::StopOptions;

/// One move of a VE between template versions (`vectl history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMove {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// `upgrade` or `rollback`.
    pub action: String,
    pub from: String,
    pub to: String,
    /// The snapshot of the VE's own files taken before the upgrade: what a
    /// rollback restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
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

/// One VE of a fleet rollout.
#[derive(Debug, Clone, Serialize)]
pub struct FleetRow {
    pub ve: String,
    /// `upgraded`, `rolled back`, `skipped`, `failed` or `not reached`.
    pub outcome: String,
    pub detail: String,
}

/// The upgrades not rolled back yet, oldest first: rollbacks undo the latest.
pub(crate) fn open_upgrades(history: &[TemplateMove]) -> Vec<&TemplateMove> {
    let mut stack = Vec::new();
    for m in history {
        match m.action.as_str() {
            "upgrade" => stack.push(m),
            "rollback" => {
                stack.pop();
            }
            _ => {}
        }
    }
    stack
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl Host {
    /// The conflict report of moving VE `name` to template version `target`.
    pub fn upgrade_check(&self, name: &str, target: &str) -> Result<UpgradeCheck> {
        let ve = self.resolve_existing(name)?;
        let cfg = self.load_config(&ve)?;
        self.check_locked(&cfg, target)
    }

    fn check_locked(&self, cfg: &VeConfig, target: &str) -> Result<UpgradeCheck> {
        let ve = cfg.name.clone();
        let tref: ve_templates::TemplateRef = target.parse()?;
        let to = self.templates().resolve(&tref)?;
        let from = self.templates().resolve(&cfg.template.parse()?)?;
        if from.reference() == to.reference() {
            return Err(Error::Host(format!(
                "VE {ve}: already on {}",
                to.reference()
            )));
        }
        let upper = self.pool().ve_volume(&ve).upper();
        let conflicts = ve_templates::conflicts(
            &upper,
            &self.templates().path(&from),
            &self.templates().path(&to),
        )
        .map_err(|e| Error::Host(format!("VE {ve}: comparing its files: {e}")))?;
        Ok(UpgradeCheck {
            ve,
            from: from.reference(),
            to: to.reference(),
            conflicts,
        })
    }

    /// Moves VE `name` to template version `target`: refused on conflicts
    /// unless `force`; its own files are snapshotted first (what `rollback`
    /// restores); a running VE is stopped (`stop`) and started again.
    pub fn upgrade(
        &self,
        name: &str,
        target: &str,
        force: bool,
        stop: StopOptions,
    ) -> Result<Moved> {
        let ve = self.resolve_existing(name)?;
        if self.pool().backend() != quota::Backend::Btrfs {
            return Err(Error::Host(format!(
                "VE {ve}: upgrade keeps a snapshot of the VE's files for rollback, which needs the btrfs pool"
            )));
        }
        let moved = {
            // The host lock keeps `template rm` off the target meanwhile.
            let _host = self.lock_host()?;
            let _lock = self.lock_ve(&ve)?;
            let mut cfg = self.load_config(&ve)?;
            let check = self.check_locked(&cfg, target)?;
            if !check.conflicts.is_empty() && !force {
                let paths: Vec<&str> = check.conflicts.iter().map(|c| c.path.as_str()).collect();
                return Err(Error::Host(format!(
                    "VE {ve}: {} of its files conflict with {} ({}); see `vectl upgrade {ve} --template {} --check`, or --force",
                    check.conflicts.len(),
                    check.to,
                    paths.join(", "),
                    check.to
                )));
            }
            let running = self.alive_state(&ve)?.is_some();
            if running {
                self.stop_locked(&cfg, stop)?;
            }
            let snapshot = self.free_snapshot_name(&ve, "upgrade")?;
            self.pool()
                .create_snapshot(&ve, &snapshot)
                .map_err(quota_err(&ve))?;
            cfg.template = check.to.clone();
            cfg.history.push(TemplateMove {
                at: now(),
                action: "upgrade".into(),
                from: check.from.clone(),
                to: check.to.clone(),
                snapshot: Some(snapshot.clone()),
            });
            if let Err(e) = cfg.store(&self.config_path(&ve)) {
                let _ = self.pool().remove_snapshot(&ve, &snapshot);
                return Err(e);
            }
            Moved {
                ve: ve.clone(),
                from: check.from,
                to: check.to,
                snapshot,
                restarted: running,
                conflicts: check.conflicts,
            }
        };
        if moved.restarted
            && let Err(e) = self.start(&ve, false)
        {
            return Err(Error::Host(format!(
                "VE {ve}: upgraded to {} (snapshot {}) but it did not start again: {e}; `vectl rollback {ve}` takes it back",
                moved.to, moved.snapshot
            )));
        }
        Ok(moved)
    }

    /// Undoes VE `name`'s latest upgrade that is not rolled back yet: its own
    /// files exactly as they were before it (the snapshot) and the version it
    /// came from. A running VE is stopped and started again.
    pub fn rollback(&self, name: &str, stop: StopOptions) -> Result<Moved> {
        let ve = self.resolve_existing(name)?;
        let moved = {
            let _host = self.lock_host()?;
            let _lock = self.lock_ve(&ve)?;
            let mut cfg = self.load_config(&ve)?;
            let Some(last) = open_upgrades(&cfg.history).last().map(|m| (*m).clone()) else {
                return Err(Error::Host(format!(
                    "VE {ve}: no upgrade to roll back (see `vectl history {ve}`)"
                )));
            };
            let snapshot = last.snapshot.clone().unwrap_or_default();
            // The version it goes back to must still be there.
            self.templates().resolve(&last.from.parse()?)?;
            let running = self.alive_state(&ve)?.is_some();
            if running {
                self.stop_locked(&cfg, stop)?;
            }
            self.pool()
                .restore_snapshot(&ve, &snapshot)
                .map_err(quota_err(&ve))?;
            if let Some(crate::limits::Size(d)) = cfg.limits.disk {
                let _ = self.pool().set_disk_limit(&ve, Some(d));
            }
            let from = cfg.template.clone();
            cfg.template = last.from.clone();
            cfg.history.push(TemplateMove {
                at: now(),
                action: "rollback".into(),
                from: from.clone(),
                to: last.from.clone(),
                snapshot: Some(snapshot.clone()),
            });
            cfg.store(&self.config_path(&ve))?;
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
            return Err(Error::Host(format!(
                "VE {ve}: rolled back to {} but it did not start again: {e}",
                moved.to
            )));
        }
        Ok(moved)
    }

    /// Moves every VE on template version `from` to `to`, `batch` at a time (by
    /// id). After each batch, `health` runs (`sh -c`, output discarded) in each
    /// VE of it that runs; a VE whose check fails is rolled back and the rollout
    /// stops there. VEs with conflicts are skipped unless `force`. Returns a row
    /// per VE, in order, including those never reached.
    pub fn upgrade_fleet(
        &self,
        from: &str,
        to: &str,
        batch: usize,
        health: Option<&str>,
        force: bool,
        stop: StopOptions,
    ) -> Result<Vec<FleetRow>> {
        let from_v = self.templates().resolve(&from.parse()?)?;
        let to_v = self.templates().resolve(&to.parse()?)?;
        let (ves, _) = self.list()?;
        let on: Vec<String> = ves
            .into_iter()
            .filter(|v| v.template == from_v.reference())
            .map(|v| v.name)
            .collect();
        let mut rows: Vec<FleetRow> = on
            .iter()
            .map(|ve| FleetRow {
                ve: ve.clone(),
                outcome: "not reached".into(),
                detail: String::new(),
            })
            .collect();
        let mut halted = false;
        for (b, names) in on.chunks(batch.max(1)).enumerate() {
            let mut upgraded = Vec::new();
            for ve in names {
                let i = rows.iter().position(|r| &r.ve == ve).unwrap_or(0);
                match self.upgrade(ve, &to_v.reference(), force, stop) {
                    Ok(m) => {
                        rows[i].outcome = "upgraded".into();
                        rows[i].detail = format!("batch {}, snapshot {}", b + 1, m.snapshot);
                        upgraded.push((i, m.restarted));
                    }
                    Err(e) => {
                        // Moved but not running again: as bad as a failed check.
                        let moved = self
                            .load_config(ve)
                            .is_ok_and(|c| c.template == to_v.reference());
                        if moved {
                            rows[i].outcome = match self.rollback(ve, stop) {
                                Ok(_) => {
                                    // It ran before the rollout: run it again.
                                    let _ = self.start(ve, false);
                                    "rolled back".into()
                                }
                                Err(_) => "failed".into(),
                            };
                            rows[i].detail = format!("{e}; rollout halted");
                            halted = true;
                        } else {
                            rows[i].outcome = "skipped".into();
                            rows[i].detail = e.to_string();
                        }
                    }
                }
            }
            if halted {
                break;
            }
            let Some(cmd) = health else { continue };
            for (i, running) in upgraded {
                if !running {
                    continue;
                }
                let ve = rows[i].ve.clone();
                let wrapped = format!("{{ {cmd}\n}} </dev/null >/dev/null 2>&1");
                let code = self.exec(
                    &ve,
                    &crate::exec::ExecOptions {
                        argv: vec!["/bin/sh".into(), "-c".into(), wrapped],
                        ..Default::default()
                    },
                );
                let ok = matches!(code, Ok(0));
                if ok {
                    rows[i].detail.push_str(", healthy");
                    continue;
                }
                let why = match code {
                    Ok(c) => format!("health check exited {c}"),
                    Err(e) => format!("health check: {e}"),
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
                halted = true;
            }
            if halted {
                break;
            }
        }
        Ok(rows)
    }

    /// A VE's template moves, oldest first.
    pub fn history(&self, name: &str) -> Result<(String, Vec<TemplateMove>)> {
        let ve = self.resolve_existing(name)?;
        Ok((ve.clone(), self.load_config(&ve)?.history))
    }

    /// `PREFIX-TIME` (`upgrade-20261126-144501`), with `-N` added if the VE
    /// has a snapshot of that name: never the name of an earlier one, so a
    /// rollback cannot take a newer snapshot for an older one.
    fn free_snapshot_name(&self, ve: &str, prefix: &str) -> Result<String> {
        let taken: Vec<String> = self
            .pool()
            .list_snapshots(ve)
            .map_err(quota_err(ve))?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let stamp: String = now()
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
            Error::Host(format!("VE {ve}: {msg}"))
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
}
