//! How vectl prints: aligned tables and short lines for people, JSON for scripts
//! (`--json`), errors as one line on stderr, progress on stderr when it is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::table::{Table, print_pairs};
use crate::view::{PoolSource, PoolSpaceView, ShowView, SnapshotView, VeView};
use ve_runtime::{
    Host, ProcView, Progress, RunState, SetOutcome, Status, StopOutcome, TemplateVersion, VeConfig,
    VeDetails, VeInfo, VeStats, human_bytes,
};

/// The output mode of one vectl run.
#[derive(Debug)]
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Out {
        Out { json }
    }

    fn print_json(&self, v: &impl Serialize) {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("vectl: cannot encode JSON: {e}"),
        }
    }

    /// A failed operation: one line on stderr.
    /// A failed command's one line on stderr; with `--json` a JSON object on
    /// one line: `{"error": MESSAGE, "usage": true|false}` (usage: exit status
    /// 2, bad usage; else 1, the operation failed).
    pub fn error(&self, e: &anyhow::Error) {
        let msg = e.to_string().replace('\n', " ");
        if self.json {
            let obj = serde_json::json!({
                "error": format!("vectl: {msg}"),
                "usage": crate::parse::is_usage(e),
            });
            eprintln!("{obj}");
        } else {
            eprintln!("vectl: {msg}");
        }
    }

    pub fn warn(&self, msg: &str) {
        eprintln!("vectl: warning: {msg}");
    }

    pub fn note(&self, msg: &str) {
        if !self.json {
            eprintln!("{msg}");
        }
    }

    /// A progress reporter for long work; prints to stderr only on a terminal.
    ///
    /// Stages of a multi-stage source (debootstrap's `retrieving`, `configuring`)
    /// are also printed once each when stderr is not a terminal, for logs.
    pub fn progress(&self, what: &str) -> impl FnMut(Progress) + use<> {
        let terminal = std::io::stderr().is_terminal();
        let show = terminal && !self.json;
        let log = !terminal && !self.json;
        let what = what.to_string();
        let mut last = Instant::now() - Duration::from_secs(1);
        let mut stage = None;
        move |p: Progress| {
            if let Some(s) = p.stage {
                if log && stage != Some(s) {
                    eprintln!("{what}: {s}");
                }
                stage = Some(s);
                if show && last.elapsed() >= Duration::from_millis(100) {
                    last = Instant::now();
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{what}: {s} ({})            ", p.files);
                    let _ = err.flush();
                }
                return;
            }
            if show && last.elapsed() >= Duration::from_millis(100) {
                last = Instant::now();
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r{what}: {} files, {}   ",
                    p.files,
                    human_bytes(p.bytes)
                );
                let _ = err.flush();
            }
        }
    }

    pub fn init(&self, host: &Host, created: bool) {
        if self.json {
            self.print_json(&json!({
                "root": host.root(),
                "created": created,
                "settings": host.settings(),
            }));
        } else if created {
            println!("initialised {}", host.root().display());
        } else {
            println!("{} is already initialised", host.root().display());
        }
    }

    pub fn torn_down(&self, host: &Host, done: &ve_runtime::TornDown) {
        if self.json {
            self.print_json(done);
            return;
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        println!("stopped VEs: {}", list(&done.stopped));
        println!("removed networks' links: {}", list(&done.networks));
        println!("removed nft tables: {} (ip, ip6, bridge)", done.nft_tables);
        for c in &done.cgroups {
            println!("removed cgroup: {}", c.display());
        }
        if let Some(p) = &done.unmounted {
            println!("unmounted pool: {}", p.display());
        }
        println!(
            "{}: nothing of this root's is left on the host; its files are kept (the next command makes what it needs again)",
            host.root().display()
        );
    }

    /// `limits`: the host's kernel limits against what its VE count needs
    /// (`host_limits`), in the JSON (the text's table is host.rs's).
    pub fn host_info(
        &self,
        host: &Host,
        limits: &ve_runtime::host_limits::HostLimits,
    ) -> anyhow::Result<()> {
        let cg = host.cgroups()?;
        let cap = host.capacity();
        let (ves, _) = host.ves().list()?;
        let running = ves.iter().filter(|v| v.status == Status::Running).count();
        let templates = host.templates().list()?.len();
        let committed = host.commitments(None)?;
        let (reserve_cpu, reserve_ram) = host.reserve();
        let cpu_limits: f64 = committed
            .ves
            .iter()
            .filter_map(|c| c.cpu_limit_pct)
            .fold(0.0, |a, b| a + b);
        let ram_limits: u64 = committed.ves.iter().filter_map(|c| c.ram_limit_bytes).sum();
        let io = host.facts().io_device;
        let image_problem = host.storage().lost_image().map(|l| l.to_string());
        if let Some(problem) = &image_problem {
            self.warn(problem);
        }
        let names = host.names();
        let others = host.other_roots();
        let view = &host.settings().proc_view;
        let lxcfs = view
            .enabled
            .then(|| ve_runtime::Lxcfs::probe(&view.lxcfs_dir));
        let proc_view = match &lxcfs {
            None => "off: VEs see the host's /proc values (vectl host set --proc-view on)".into(),
            Some(Ok(l)) => format!(
                "LXCFS at {}: {} bound into VEs at start",
                l.dir.display(),
                l.files.join(", ")
            ),
            Some(Err(why)) => format!("{why}: VEs start with the host's /proc values"),
        };
        let info = json!({
            "root": host.root(),
            "identity": names.identity(),
            "host_names": {
                "nft_tables": names.table(),
                "interfaces": names.glob(),
            },
            "other_roots": others,
            "pool": host.storage().dir(),
            "backend": host.settings().backend,
            "cgroup_version": cg.version(),
            "cgroup_parent": host.settings().cgroup.parent,
            "cgroup_paths": cg.parents(),
            "cpus": cap.cpus,
            "ram_bytes": cap.ram_bytes,
            "reserve": {"cpu_percent": reserve_cpu * 100.0, "ram_bytes": reserve_ram},
            "defaults": {
                "ram": host.settings().defaults.ram.map(|a| a.to_string()),
                "pids": host.settings().defaults.pids,
            },
            "committed": {
                "cpu_guarantee_percent": committed.cpu * 100.0,
                "ram_guarantee_bytes": committed.ram_bytes,
                "cpu_limit_percent_sum": cpu_limits,
                "ram_limit_bytes_sum": ram_limits,
                "ves": committed.ves,
            },
            "io_device": io.as_ref().ok(),
            "io_device_problem": io.as_ref().err().map(ToString::to_string),
            "pool_image_problem": image_problem,
            "ves": ves.len(),
            "running": running,
            "template_versions": templates,
            "kernel": kernel_release(),
            "proc_view": {
                "enabled": view.enabled,
                "lxcfs_dir": view.lxcfs_dir,
                "lxcfs_running": matches!(lxcfs, Some(Ok(_))),
                "files": lxcfs.as_ref().and_then(|l| l.as_ref().ok()).map(|l| &l.files),
                "problem": lxcfs.as_ref().and_then(|l| l.as_ref().err()),
            },
            "host_limits": limits,
        });
        if self.json {
            self.print_json(&info);
            return Ok(());
        }
        let pct = |x: f64| format!("{:.1}%", x * 100.0);
        let rows = [
            ("root", host.root().display().to_string()),
            (
                "identity",
                format!(
                    "{} (nft tables {}, interfaces {})",
                    names
                        .identity()
                        .unwrap_or("none: a root from before identities"),
                    names.table(),
                    names.glob()
                ),
            ),
            (
                "other roots",
                if others.is_empty() {
                    "none".into()
                } else {
                    others
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            (
                "pool",
                format!(
                    "{} ({})",
                    host.storage().dir().display(),
                    host.settings().backend
                ),
            ),
            ("kernel", kernel_release()),
            (
                "cgroups",
                format!(
                    "{} (parent {})",
                    cg.version(),
                    host.settings().cgroup.parent
                ),
            ),
            (
                "cpus",
                format!("{} ({}% of one CPU in all)", cap.cpus, cap.cpus * 100),
            ),
            ("ram", human_bytes(cap.ram_bytes)),
            (
                "reserve",
                format!("cpu {}, ram {}", pct(reserve_cpu), human_bytes(reserve_ram)),
            ),
            (
                "new VE defaults",
                format!(
                    "ram {}, pids {}",
                    host.settings()
                        .defaults
                        .ram
                        .map_or("unlimited".into(), |a| a.to_string()),
                    host.settings()
                        .defaults
                        .pids
                        .map_or("unlimited".into(), |p| p.to_string())
                ),
            ),
            (
                "guaranteed",
                format!(
                    "cpu {} of the host, ram {} (running VEs)",
                    pct(committed.cpu),
                    human_bytes(committed.ram_bytes)
                ),
            ),
            (
                "limits",
                format!(
                    "cpu {}% of one CPU, ram {} (sum over running VEs)",
                    cpu_limits,
                    human_bytes(ram_limits)
                ),
            ),
            (
                "disk",
                match &io {
                    Ok(d) => format!(
                        "{} ({}:{}, {} scheduler)",
                        d.name, d.major, d.minor, d.scheduler
                    ),
                    Err(why) => format!("none for I/O limits: {why}"),
                },
            ),
            ("proc view", proc_view),
            ("ves", format!("{} ({running} running)", ves.len())),
            ("templates", format!("{templates} version(s)")),
        ];
        print_pairs(&rows);
        Ok(())
    }

    /// `vectl stats`: a table (refreshed in place with --watch on a terminal) or
    /// JSON (one document per refresh).
    pub fn stats(&self, stats: &[VeStats], watch: Option<f64>) {
        if self.json {
            match serde_json::to_string(&stats) {
                Ok(s) if watch.is_some() => println!("{s}"),
                Ok(_) => self.print_json(&stats),
                Err(e) => eprintln!("vectl: cannot encode JSON: {e}"),
            }
            return;
        }
        let mut rows = Table::new(&[
            "ID", "NAME", "STATUS", "CPU%", "CPU TIME", "RAM", "SWAP", "PIDS", "IO READ",
            "IO WRITE", "OOM", "DISK", "UPTIME",
        ]);
        let of = |used: String, limit: Option<String>| match limit {
            Some(l) => format!("{used}/{l}"),
            None => used,
        };
        for s in stats {
            rows.row(vec![
                s.id.to_string(),
                s.name.clone(),
                s.status.to_string(),
                format!("{:.1}", s.cpu_percent),
                format!("{:.1}s", s.cpu_usage_ns as f64 / 1e9),
                of(human_bytes(s.ram_bytes), s.ram_limit_bytes.map(human_bytes)),
                of(
                    human_bytes(s.swap_bytes),
                    s.swap_limit_bytes.map(human_bytes),
                ),
                of(s.pids.to_string(), s.pids_limit.map(|p| p.to_string())),
                format!("{} ({} ops)", human_bytes(s.io_read_bytes), s.io_read_ops),
                format!("{} ({} ops)", human_bytes(s.io_write_bytes), s.io_write_ops),
                s.oom_kills.to_string(),
                s.disk_bytes.map_or("-".into(), |d| {
                    of(human_bytes(d), s.disk_limit_bytes.map(human_bytes))
                }),
                s.uptime_seconds.map_or("-".into(), duration),
            ]);
        }
        if watch.is_some() && std::io::stdout().is_terminal() {
            print!("\x1b[H\x1b[2J");
        }
        rows.print();
        if let Some(secs) = watch {
            println!("(every {secs}s, CPU% over the interval; Ctrl-C ends)");
        }
    }

    /// An import or update: `verb` is "imported" or "published".
    pub fn template_imported(&self, tv: &TemplateVersion, verb: &str) {
        if self.json {
            self.print_json(tv);
        } else {
            eprint!(
                "{}",
                if std::io::stderr().is_terminal() {
                    "\r\x1b[K"
                } else {
                    ""
                }
            );
            println!(
                "{verb} template {} ({} files, {})",
                tv.reference(),
                tv.files,
                human_bytes(tv.size_bytes)
            );
        }
    }

    pub fn template_show(&self, u: &ve_runtime::TemplateUsage, dir: &std::path::Path) {
        if self.json {
            let mut v = serde_json::to_value(u).unwrap_or_default();
            v["path"] = json!(dir);
            self.print_json(&v);
            return;
        }
        let t = &u.version;
        print_pairs(&[
            ("template", t.reference()),
            ("latest", if u.latest { "yes" } else { "no" }.into()),
            ("created", t.created.clone()),
            ("source", t.source.clone()),
            ("size", human_bytes(t.size_bytes)),
            ("files", t.files.to_string()),
            ("message", t.message.clone()),
            ("path", dir.display().to_string()),
            (
                "ves",
                if u.ves.is_empty() {
                    "none".into()
                } else {
                    u.ves.join(", ")
                },
            ),
        ]);
    }

    pub fn template_log(&self, list: &[ve_runtime::TemplateUsage]) {
        if self.json {
            self.print_json(&list);
            return;
        }
        let mut rows = Table::new(&["TEMPLATE", "CREATED", "SIZE", "SOURCE", "VES", "MESSAGE"]);
        for u in list {
            let t = &u.version;
            rows.row(vec![
                if u.latest {
                    format!("{} (latest)", t.reference())
                } else {
                    t.reference()
                },
                t.created.clone(),
                human_bytes(t.size_bytes),
                t.source.clone(),
                if u.ves.is_empty() {
                    "-".into()
                } else {
                    u.ves.join(",")
                },
                t.message.clone(),
            ]);
        }
        rows.print();
        for u in list {
            let Some(changes) = u.packages.as_ref().filter(|c| !c.is_empty()) else {
                continue;
            };
            println!();
            println!(
                "{}: {} package change(s) since the version before",
                u.version.reference(),
                changes.len()
            );
            for c in changes {
                let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "-".into());
                println!("  {} {} -> {}", c.package, v(&c.from), v(&c.to));
            }
        }
    }

    /// `template usage`: the VEs on each version, and what `template gc` would do.
    pub fn template_usage(&self, list: &[ve_runtime::TemplateUsage]) {
        if self.json {
            self.print_json(&list);
            return;
        }
        let mut rows = Table::new(&["TEMPLATE", "STATE", "COUNT", "VES"]);
        for u in list {
            let state = match (u.latest, u.ves.is_empty()) {
                (true, _) => "latest",
                (false, false) => "in use",
                (false, true) => "unused (gc removes it)",
            };
            rows.row(vec![
                u.version.reference(),
                state.into(),
                u.ves.len().to_string(),
                if u.ves.is_empty() {
                    "-".into()
                } else {
                    u.ves.join(",")
                },
            ]);
        }
        rows.print();
    }

    pub fn templates_removed(&self, list: &[TemplateVersion]) {
        if self.json {
            self.print_json(&list);
        } else if list.is_empty() {
            println!("no template version removed");
        } else {
            let names: Vec<String> = list.iter().map(TemplateVersion::reference).collect();
            println!("removed {}", names.join(", "));
        }
    }

    pub fn templates(&self, list: &[TemplateVersion]) {
        if self.json {
            self.print_json(&list);
            return;
        }
        let mut rows = Table::new(&["TEMPLATE", "CREATED", "SIZE", "FILES", "SOURCE"]);
        for t in list {
            rows.row(vec![
                t.reference(),
                t.created.clone(),
                human_bytes(t.size_bytes),
                t.files.to_string(),
                t.source.clone(),
            ]);
        }
        rows.print();
    }

    pub fn created(&self, cfg: &VeConfig) {
        if self.json {
            self.print_json(cfg);
        } else {
            let addrs: Vec<String> = cfg
                .nics
                .iter()
                .map(|n| format!("{} on {}", n.ip, n.net))
                .collect();
            if addrs.is_empty() {
                println!(
                    "created VE {} (id {}) from {}",
                    cfg.name, cfg.id, cfg.template
                );
            } else {
                println!(
                    "created VE {} (id {}) from {}, address {}",
                    cfg.name,
                    cfg.id,
                    cfg.template,
                    addrs.join(", ")
                );
            }
        }
    }

    /// `vectl host rebind-proc`: per VE what was bound; the exit status is 1
    /// when a VE could not be.
    pub fn rebound(
        &self,
        done: &[(
            std::path::PathBuf,
            String,
            Result<ve_runtime::Rebound, String>,
        )],
    ) -> std::process::ExitCode {
        let failed = done.iter().filter(|(_, _, r)| r.is_err()).count();
        if self.json {
            let rows: Vec<_> = done
                .iter()
                .map(|(root, ve, r)| match r {
                    Ok(b) => json!({"root": root, "ve": ve, "bound": b.bound, "live": b.live, "foreign": b.foreign}),
                    Err(e) => json!({"root": root, "ve": ve, "error": e}),
                })
                .collect();
            self.print_json(&rows);
        } else {
            for (_, ve, r) in done {
                match r {
                    Ok(b) if b.foreign.is_empty() => {
                        println!("VE {ve}: bound {}", b.bound.join(", "));
                    }
                    Ok(b) => println!(
                        "VE {ve}: bound {}; left {} (the VE's own mounts)",
                        b.bound.join(", "),
                        b.foreign.join(", ")
                    ),
                    Err(e) => eprintln!("vectl: VE {ve}: cannot bind the /proc view: {e}"),
                }
            }
            if done.is_empty() {
                println!("every running VE's /proc view is live");
            }
        }
        if failed > 0 {
            std::process::ExitCode::FAILURE
        } else {
            std::process::ExitCode::SUCCESS
        }
    }

    pub fn started(&self, ve: &str, rs: &RunState) {
        if let Some(why) = &rs.proc_view_off
            && why != ve_runtime::VIEW_OFF
        {
            self.warn(&format!(
                "VE {ve}: its /proc shows the host's values: {why} (start LXCFS, then `vectl host rebind-proc`)"
            ));
        }
        if self.json {
            self.print_json(&json!({"ve": ve, "status": "running", "pid": rs.pid}));
        } else {
            println!("started VE {ve} (init pid {})", rs.pid);
        }
    }

    pub fn stopped(&self, ve: &str, outcome: StopOutcome) {
        if self.json {
            self.print_json(&json!({"ve": ve, "status": "stopped", "outcome": outcome}));
            return;
        }
        match outcome {
            StopOutcome::AlreadyStopped => println!("VE {ve} was not running"),
            StopOutcome::Halted => println!("stopped VE {ve}"),
            StopOutcome::Killed => println!("stopped VE {ve} (killed)"),
        }
    }

    pub fn destroyed(&self, ve: &str) {
        if self.json {
            self.print_json(&json!({"ve": ve, "destroyed": true}));
        } else {
            println!("destroyed VE {ve}");
        }
    }

    pub fn set(&self, ve: &str, o: &SetOutcome) {
        if self.json {
            self.print_json(&json!({"ve": ve, "live": o.live, "limits": o.limits}));
        } else if o.live {
            println!("VE {ve}: limits changed live and saved");
        } else {
            println!("VE {ve}: limits saved (applied at next start)");
        }
    }

    pub fn upgrade_check(&self, c: &ve_runtime::UpgradeCheck) {
        if self.json {
            self.print_json(c);
            return;
        }
        if c.conflicts.is_empty() {
            println!(
                "VE {}: no conflicts moving from {} to {}",
                c.ve, c.from, c.to
            );
            return;
        }
        println!(
            "VE {}: {} conflict{} moving from {} to {} (the VE's copy would hide the new version's):",
            c.ve,
            c.conflicts.len(),
            if c.conflicts.len() == 1 { "" } else { "s" },
            c.from,
            c.to
        );
        let mut rows = Table::new(&["PATH", "VE", "NEW VERSION"]);
        for k in &c.conflicts {
            rows.row(vec![k.path.clone(), k.ve.into(), k.patch.into()]);
        }
        rows.print();
    }

    pub fn moved(&self, what: &str, m: &ve_runtime::Moved) {
        if self.json {
            self.print_json(m);
            return;
        }
        println!(
            "VE {}: {what} from {} to {} (snapshot {}{})",
            m.ve,
            m.from,
            m.to,
            m.snapshot,
            if m.restarted { ", restarted" } else { "" }
        );
        if !m.conflicts.is_empty() {
            let paths: Vec<&str> = m.conflicts.iter().map(|c| c.path.as_str()).collect();
            self.warn(&format!(
                "VE {}: its own copies of {} hide the new version's",
                m.ve,
                paths.join(", ")
            ));
        }
    }

    /// A fleet rollout's VE as soon as its outcome is known (stderr, so the
    /// table on stdout stays the result).
    pub fn fleet_progress(&self, r: &ve_runtime::FleetRow) {
        self.note(&format!("VE {}: {} ({})", r.ve, r.outcome, r.detail));
    }

    pub fn fleet(&self, rows: &[ve_runtime::FleetRow]) {
        if self.json {
            self.print_json(&rows);
            return;
        }
        if rows.is_empty() {
            println!("no VE on that version");
            return;
        }
        let mut t = Table::new(&["VE", "OUTCOME", "DETAIL"]);
        for r in rows {
            t.row(vec![r.ve.clone(), r.outcome.clone(), r.detail.clone()]);
        }
        t.print();
    }

    /// What `commit` did; `complete`: no VE failed (else "nothing to
    /// commit" would not be the whole truth).
    pub fn committed(&self, done: &[ve_runtime::Committed], complete: bool) {
        if self.json {
            self.print_json(&done);
            return;
        }
        if done.is_empty() && complete {
            println!("nothing to commit");
        }
        for c in done {
            let mut what = Vec::new();
            if !c.released.is_empty() {
                what.push(format!(
                    "{} no longer kept for rollback",
                    c.released.join(", ")
                ));
            }
            if !c.snapshots.is_empty() {
                what.push(format!("removed snapshot {}", c.snapshots.join(", ")));
            }
            if what.is_empty() {
                println!("VE {}: nothing to commit (on {})", c.ve, c.template);
            } else {
                println!(
                    "VE {}: committed {} ({})",
                    c.ve,
                    c.template,
                    what.join("; ")
                );
            }
        }
    }

    pub fn history(&self, ve: &str, h: &[ve_runtime::TemplateMove]) {
        if self.json {
            self.print_json(&json!({"ve": ve, "history": h}));
            return;
        }
        if h.is_empty() {
            println!("VE {ve}: no template moves");
            return;
        }
        let mut rows = Table::new(&["WHEN", "ACTION", "FROM", "TO", "SNAPSHOT"]);
        for m in h {
            rows.row(vec![
                m.at.clone(),
                if m.pending {
                    // Finished by the next command on the VE.
                    format!("{} (interrupted)", m.action)
                } else {
                    m.action.clone()
                },
                m.from.clone(),
                m.to.clone(),
                m.snapshot.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        rows.print();
    }

    pub fn cloned(&self, src: &str, c: &ve_runtime::Cloned) {
        if self.json {
            self.print_json(c);
            return;
        }
        let cfg = &c.config;
        let addrs: Vec<String> = cfg
            .nics
            .iter()
            .map(|n| format!("{} on {}", n.ip, n.net))
            .collect();
        let how = match c.consistency {
            ve_runtime::Consistency::Frozen => format!(", source frozen {:.1} ms", c.frozen_ms),
            ve_runtime::Consistency::Stopped => String::new(),
        };
        println!(
            "cloned VE {src} as {} (id {}) on {}{}{how}",
            cfg.name,
            cfg.id,
            cfg.template,
            if addrs.is_empty() {
                String::new()
            } else {
                format!(", address {}", addrs.join(", "))
            }
        );
    }

    pub fn renamed(&self, r: &ve_runtime::Renamed) {
        if self.json {
            self.print_json(r);
        } else {
            match &r.hostname {
                Some(h) => println!("renamed VE {} to {} (hostname {h})", r.old, r.new),
                None => println!("renamed VE {} to {}", r.old, r.new),
            }
        }
    }

    pub fn autostart_set(&self, ve: &str, a: &ve_runtime::Autostart) {
        if self.json {
            self.print_json(&json!({"ve": ve, "autostart": a}));
        } else {
            println!(
                "VE {ve}: onboot {}, boot order {}, restart {}",
                if a.onboot { "yes" } else { "no" },
                a.boot_order,
                a.restart
            );
        }
    }

    pub fn hostname_set(&self, ve: &str, hostname: &str, live: bool) {
        if self.json {
            self.print_json(&json!({"ve": ve, "hostname": hostname, "live": live}));
        } else if live {
            println!("VE {ve}: hostname {hostname} (now; its /etc/hostname at its next start)");
        } else {
            println!("VE {ve}: hostname {hostname} (at its next start)");
        }
    }

    pub fn nics_set(&self, ve: &str, nics: &[ve_runtime::Nic]) {
        if self.json {
            self.print_json(&json!({"ve": ve, "nics": nics}));
        } else if nics.is_empty() {
            println!("VE {ve}: no NICs");
        } else {
            let l: Vec<String> = nics
                .iter()
                .enumerate()
                .map(|(i, n)| format!("eth{i} {} on {}", n.ip, n.net))
                .collect();
            println!("VE {ve}: {}", l.join(", "));
        }
    }

    pub fn published(&self, ve: &str, list: &[ve_runtime::PortMap]) {
        if self.json {
            self.print_json(&json!({"ve": ve, "publish": list}));
        } else if list.is_empty() {
            println!("VE {ve}: no ports published");
        } else {
            let l: Vec<String> = list.iter().map(ToString::to_string).collect();
            println!("VE {ve}: published {}", l.join(", "));
        }
    }

    pub fn net_created(&self, n: &ve_runtime::NetConfig) {
        if self.json {
            self.print_json(n);
        } else {
            println!(
                "created network {} ({}, {}{})",
                n.name,
                n.mode,
                n.subnet,
                n.gateway
                    .map_or(String::new(), |g| format!(", gateway {g}"))
            );
        }
    }

    pub fn net_updated(&self, n: &ve_runtime::NetConfig) {
        if self.json {
            self.print_json(n);
        } else {
            println!(
                "network {}: host services open to its VEs: {}",
                n.name,
                host_access(n)
            );
        }
    }

    pub fn nets(&self, nets: &[ve_runtime::NetDetails]) {
        if self.json {
            self.print_json(&nets);
            return;
        }
        let mut rows = Table::new(&[
            "NAME",
            "MODE",
            "SUBNET",
            "GATEWAY",
            "UPLINK",
            "BANDWIDTH",
            "VES",
            "FREE",
        ]);
        for n in nets {
            let c = &n.config;
            rows.row(vec![
                c.name.clone(),
                c.mode.to_string(),
                c.subnet.to_string(),
                c.gateway.map_or("-".into(), |g| g.to_string()),
                match (&c.uplink, c.vlan) {
                    (Some(u), Some(v)) => format!("{u} vlan {v}"),
                    (Some(u), None) => u.clone(),
                    _ => "-".into(),
                },
                c.bandwidth.map_or("-".into(), |b| b.to_string()),
                n.ves.len().to_string(),
                n.free_addresses.to_string(),
            ]);
        }
        rows.print();
    }

    pub fn net_show(&self, n: &ve_runtime::NetDetails) {
        if self.json {
            self.print_json(n);
            return;
        }
        let c = &n.config;
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let dns: Vec<String> = c.dns.iter().map(ToString::to_string).collect();
        print_pairs(&[
            ("name", c.name.clone()),
            ("id", c.id.to_string()),
            ("mode", c.mode.to_string()),
            ("subnet", c.subnet.to_string()),
            ("gateway", dash(c.ve_gateway().map(|g| g.to_string()))),
            ("uplink", dash(c.uplink.clone())),
            ("vlan", dash(c.vlan.map(|v| v.to_string()))),
            ("bridge", dash(n.bridge.clone())),
            (
                "dns",
                if dns.is_empty() {
                    "-".into()
                } else {
                    dns.join(", ")
                },
            ),
            ("bandwidth", dash(c.bandwidth.map(|b| b.to_string()))),
            ("host services", host_access(c)),
            (
                "guaranteed",
                if n.guaranteed_bps == 0 {
                    "none".into()
                } else {
                    ve_runtime::Rate(n.guaranteed_bps).to_string()
                },
            ),
            ("free addresses", n.free_addresses.to_string()),
            ("created", c.created.clone()),
        ]);
        if !n.ves.is_empty() {
            println!();
            let mut rows = Table::new(&["VE", "ADDRESS", "MAC", "PORT", "STATUS"]);
            for m in &n.ves {
                rows.row(vec![
                    m.ve.clone(),
                    m.ip.to_string(),
                    m.mac.clone(),
                    m.port.clone(),
                    if m.running { "running" } else { "stopped" }.into(),
                ]);
            }
            rows.print();
        }
    }

    /// A plain confirmation (`{"ok": true, "message": ...}` in JSON).
    pub fn done(&self, msg: &str) {
        if self.json {
            self.print_json(&json!({"ok": true, "message": msg}));
        } else {
            println!("{msg}");
        }
    }

    pub fn pool_info(&self, p: &ve_runtime::PoolInfo) {
        if let Some(problem) = &p.image_problem {
            self.warn(problem);
        }
        if self.json {
            self.print_json(p);
            return;
        }
        let source = match &p.source {
            Some(PoolSource::Image { path }) => format!("image {}", path.display()),
            Some(PoolSource::Device { path }) => {
                format!("device {}", path.display())
            }
            Some(PoolSource::Mounted) => format!("the operator's {} mount", p.backend),
            None => "a directory".into(),
        };
        let rows = [
            ("pool", p.dir.display().to_string()),
            ("backend", p.backend.to_string()),
            ("on", source),
            (
                "disk limits",
                p.quota
                    .map_or("none".into(), |q| format!("yes ({q} quotas)")),
            ),
            ("size", human_bytes(p.space.size_bytes)),
            ("used", human_bytes(p.space.used_bytes)),
            ("free", human_bytes(p.space.free_bytes)),
        ];
        print_pairs(&rows);
        let mut table = Table::new(&["KIND", "NAME", "USED", "LIMIT"]);
        for (kind, list) in [("template", &p.templates), ("ve", &p.ves)] {
            for v in list.iter() {
                table.row(vec![
                    kind.to_string(),
                    v.name.clone(),
                    human_bytes(v.used_bytes),
                    v.limit_bytes.map_or("-".into(), human_bytes),
                ]);
            }
        }
        println!();
        table.print();
    }

    pub fn pool_grown(&self, s: &PoolSpaceView) {
        if self.json {
            self.print_json(s);
        } else {
            println!(
                "pool grown to {} ({} free)",
                human_bytes(s.size_bytes),
                human_bytes(s.free_bytes)
            );
        }
    }

    pub fn pool_check(&self, problems: &[ve_runtime::PoolProblem], repair: bool) {
        if self.json {
            self.print_json(&problems);
            return;
        }
        if problems.is_empty() {
            println!("pool: no problems found");
            return;
        }
        for p in problems {
            let state = if p.repaired {
                "repaired"
            } else if p.is_note() {
                "note"
            } else if repair {
                "NOT repaired"
            } else {
                "found"
            };
            println!("{state}: {} {}: {}", p.kind, p.subject, p.detail);
        }
        if !repair && problems.iter().any(|p| !p.is_note()) {
            println!("(run `vectl pool check --repair` to fix)");
        }
    }

    pub fn snapshot_made(&self, m: &ve_runtime::SnapshotMade) {
        if self.json {
            self.print_json(m);
        } else {
            match m.consistency {
                ve_runtime::Consistency::Stopped => {
                    println!("VE {}: snapshot {} taken (VE stopped)", m.ve, m.name);
                }
                ve_runtime::Consistency::Frozen => println!(
                    "VE {}: snapshot {} taken (VE frozen for {:.1} ms)",
                    m.ve, m.name, m.frozen_ms
                ),
            }
        }
    }

    pub fn backup_made(&self, m: &ve_runtime::BackupMade) {
        if self.json {
            self.print_json(m);
            return;
        }
        self.print_backup(m);
    }

    fn print_backup(&self, m: &ve_runtime::BackupMade) {
        let how = match m.consistency {
            ve_runtime::Consistency::Stopped => "VE stopped".to_string(),
            ve_runtime::Consistency::Frozen => format!("VE frozen for {:.1} ms", m.frozen_ms),
        };
        let kind = match &m.parent {
            Some(p) => format!("incremental to {p}"),
            None => "full".to_string(),
        };
        println!(
            "VE {}: backup {} ({kind}, {} of files, {} written in {:.1} s; {how})",
            m.ve,
            m.file.display(),
            human_bytes(m.layer_bytes),
            human_bytes(m.bytes),
            m.seconds
        );
        for r in &m.removed {
            println!("  removed older backup {}", r.display());
        }
    }

    /// `backup --all`: each VE's outcome; exit 1 if any failed.
    pub fn backups_made(
        &self,
        all: Vec<(String, ve_runtime::Result<ve_runtime::BackupMade>)>,
    ) -> std::process::ExitCode {
        let failed = all.iter().filter(|(_, r)| r.is_err()).count();
        if self.json {
            let rows: Vec<_> = all
                .iter()
                .map(|(ve, r)| match r {
                    Ok(m) => json!({"ve": ve, "ok": true, "backup": m}),
                    Err(e) => json!({"ve": ve, "ok": false, "error": e.to_string()}),
                })
                .collect();
            self.print_json(&rows);
        } else {
            for (_, r) in &all {
                match r {
                    Ok(m) => self.print_backup(m),
                    Err(e) => eprintln!("vectl: {}", e.to_string().replace('\n', " ")),
                }
            }
            println!(
                "{} of {} VEs backed up{}",
                all.len() - failed,
                all.len(),
                if failed > 0 {
                    format!(", {failed} failed")
                } else {
                    String::new()
                }
            );
        }
        std::process::ExitCode::from(u8::from(failed > 0))
    }

    pub fn backup_verified(&self, v: &ve_runtime::Verified) {
        if self.json {
            self.print_json(v);
            return;
        }
        let parts: Vec<String> = v
            .parts
            .iter()
            .map(|(n, b)| format!("{n} {}", human_bytes(*b)))
            .collect();
        println!(
            "{}: intact: backup {} of VE {} ({}, {}; {}); restorable with {} backup{}",
            v.file.display(),
            v.manifest.id,
            v.manifest.ve,
            v.manifest.kind,
            v.manifest.created,
            parts.join(", "),
            v.chain.len(),
            if v.chain.len() == 1 { "" } else { "s" }
        );
    }

    pub fn backups(&self, list: &[ve_runtime::BackupEntry]) {
        if self.json {
            self.print_json(&list);
            return;
        }
        let mut rows = Table::new(&["ID", "VE", "TAKEN", "KIND", "SIZE", "TEMPLATE"]);
        for b in list {
            let m = &b.manifest;
            rows.row(vec![
                m.id.clone(),
                m.ve.clone(),
                m.created.clone(),
                match &m.parent {
                    Some(_) => "incremental".into(),
                    None => "full".into(),
                },
                human_bytes(b.bytes),
                format!(
                    "{}{}",
                    m.template,
                    if m.with_template {
                        " (in the backup)"
                    } else {
                        ""
                    }
                ),
            ]);
        }
        rows.print();
    }

    pub fn replicated(&self, r: &ve_runtime::Replicated) {
        if self.json {
            self.print_json(r);
            return;
        }
        println!(
            "VE {}: replica {} on {} ({}, {} of files in {:.1} s; frozen {:.1} ms)",
            r.ve,
            r.id,
            r.dest,
            if r.parent.is_some() {
                "incremental"
            } else {
                "full"
            },
            human_bytes(r.bytes),
            r.seconds,
            r.frozen_ms
        );
    }

    pub fn replicas(&self, list: &[ve_runtime::ReplicaInfo]) {
        if self.json {
            self.print_json(&list);
            return;
        }
        let mut rows = Table::new(&["VE", "REPLICA", "TAKEN", "FROM", "TEMPLATE", "FENCED"]);
        for r in list {
            rows.row(vec![
                r.ve.clone(),
                r.id.clone(),
                r.taken.clone(),
                r.from_host.clone(),
                r.template.clone(),
                r.fenced.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        rows.print();
    }

    #[allow(clippy::type_complexity)]
    pub fn replica_schedules(
        &self,
        list: &[(
            String,
            ve_runtime::ReplicaSchedule,
            Option<ve_runtime::ReplicaRun>,
        )],
    ) {
        if self.json {
            let rows: Vec<_> = list
                .iter()
                .map(|(ve, s, r)| json!({"ve": ve, "schedule": s, "last": r}))
                .collect();
            self.print_json(&rows);
            return;
        }
        let mut rows = Table::new(&["VE", "DEST", "EVERY", "LAST", "RESULT"]);
        for (ve, s, r) in list {
            rows.row(vec![
                ve.clone(),
                s.dest.clone(),
                s.every_secs.map_or_else(|| "-".into(), |e| format!("{e}s")),
                r.as_ref().map_or_else(
                    || "-".into(),
                    |r| {
                        humantime::format_rfc3339_seconds(
                            std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.at),
                        )
                        .to_string()
                    },
                ),
                r.as_ref().map_or_else(
                    || "-".into(),
                    |r| match &r.error {
                        Some(e) => format!("failed: {e}"),
                        None => format!("ok {}", r.id.clone().unwrap_or_default()),
                    },
                ),
            ]);
        }
        rows.print();
    }

    pub fn failed_over(&self, f: &ve_runtime::FailedOver) {
        if self.json {
            self.print_json(f);
            return;
        }
        println!(
            "VE {} (id {}) started from replica {} (taken {}); fence: {}",
            f.config.name, f.config.id, f.replica, f.taken, f.fence
        );
        for ch in &f.changes {
            println!("  {ch}");
        }
    }

    pub fn host_imported(&self, m: &ve_runtime::HostImported) {
        if self.json {
            self.print_json(m);
            return;
        }
        println!(
            "imported template {} ({} files, {}) in {:.1} s",
            m.template.reference(),
            m.template.files,
            human_bytes(m.template.size_bytes),
            m.seconds
        );
        if let Some(c) = &m.ve {
            self.created(c);
        }
    }

    pub fn migrated(&self, m: &ve_runtime::Migrated) {
        if self.json {
            self.print_json(m);
            return;
        }
        let rounds: Vec<String> = m
            .rounds
            .iter()
            .map(|r| format!("{} in {:.1} s", human_bytes(r.bytes), r.seconds))
            .collect();
        println!(
            "VE {} migrated to {} (id {}) in {:.1} s, down for {:.0} ms; rounds: {}",
            m.ve,
            m.dest,
            m.config.id,
            m.seconds,
            m.downtime_ms,
            rounds.join(", ")
        );
        if m.template_sent {
            println!("  its template {} was sent along", m.config.template);
        }
        for ch in &m.changes {
            println!("  {ch}");
        }
    }

    pub fn restored(&self, r: &ve_runtime::Restored, started: bool) {
        if self.json {
            self.print_json(r);
            return;
        }
        let c = &r.config;
        println!(
            "VE {} (id {}) restored from {} backup{} in {:.1} s{}",
            c.name,
            c.id,
            r.chain.len(),
            if r.chain.len() == 1 { "" } else { "s" },
            r.seconds,
            if started { " and started" } else { "" }
        );
        if r.template_imported {
            println!("  template {} imported from the backup", c.template);
        }
        for ch in &r.changes {
            println!("  {ch}");
        }
    }

    pub fn snapshots(&self, ve: &str, list: &[SnapshotView]) {
        if self.json {
            self.print_json(&json!({"ve": ve, "snapshots": list}));
            return;
        }
        let mut rows = Table::new(&["NAME", "TAKEN", "OWN DATA"]);
        for s in list {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(s.created_unix);
            rows.row(vec![
                s.name.clone(),
                humantime::format_rfc3339_seconds(t).to_string(),
                human_bytes(s.exclusive_bytes),
            ]);
        }
        rows.print();
    }

    pub fn userns_set(&self, ve: &str, range: Option<ve_runtime::IdRange>) {
        if self.json {
            self.print_json(&json!({
                "name": ve,
                "privileged": range.is_none(),
                "userns": range,
            }));
            return;
        }
        match range {
            Some(r) => println!("VE {ve}: in its own user namespace (host ids {r})"),
            None => println!("VE {ve}: privileged (no user namespace)"),
        }
    }

    /// `vectl list`: the columns `cols` (of [`LIST_COLUMNS`]) as a table or
    /// CSV; with `--json` every VE whole ([`VeView`]).
    /// Containers of OCI engines (`oci`) follow the VEs, marked as such.
    pub fn list(
        &self,
        host: &Host,
        ves: &[VeInfo],
        oci: &[ve_runtime::oci::State],
        cols: &[&ListColumn],
        csv: bool,
    ) {
        if self.json {
            let mut all: Vec<serde_json::Value> = VeView::all(host, ves)
                .iter()
                .filter_map(|v| serde_json::to_value(v).ok())
                .collect();
            all.extend(
                oci.iter()
                    .filter_map(|s| serde_json::to_value(crate::view::OciView::new(s)).ok()),
            );
            self.print_json(&all);
            return;
        }
        let headers: Vec<String> = cols.iter().map(|c| c.name.to_uppercase()).collect();
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let mut rows = Table::new(&headers);
        for v in ves {
            rows.row(cols.iter().map(|c| (c.cell)(v)).collect());
        }
        for s in oci {
            rows.row(
                cols.iter()
                    .map(|c| match c.name {
                        "name" => s.id.clone(),
                        "status" => s.status.to_string(),
                        "template" => "(OCI container)".into(),
                        _ => "-".into(),
                    })
                    .collect(),
            );
        }
        if csv {
            print!("{}", rows.render_csv());
        } else {
            rows.print();
        }
    }

    /// `vectl show`: name-value lines; with `--json` a [`ShowView`].
    pub fn show(&self, host: &Host, d: &VeDetails) {
        if self.json {
            self.print_json(&ShowView::new(host, d));
            return;
        }
        let i = &d.info;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
        let none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        let mut rows = vec![
            ("name", i.name.clone()),
            ("id", i.id.to_string()),
            ("status", i.status.to_string()),
            ("template", i.template.clone()),
            ("hostname", i.hostname.clone()),
            (
                "user namespace",
                match i.userns {
                    Some(r) => format!("private (host ids {r})"),
                    None => "host (privileged)".into(),
                },
            ),
            ("init", d.init.join(" ")),
            ("stop signal", d.stop_signal.clone()),
            ("created", d.created.clone()),
            ("ram", opt(i.limits.ram.map(|r| r.to_string()))),
            (
                "ram guarantee",
                none(i.limits.ram_guarantee.map(|r| r.to_string())),
            ),
            ("swap", opt(i.limits.swap.map(|r| r.to_string()))),
            ("cpu limit", opt(i.limits.cpu_limit.map(|c| c.to_string()))),
            (
                "cpu guarantee",
                none(i.limits.cpu_guarantee.map(|c| c.to_string())),
            ),
            (
                "cpus",
                d.kernel_limits
                    .cpuset
                    .clone()
                    .unwrap_or_else(|| "all".into()),
            ),
            ("pids", opt(i.limits.pids.map(|p| p.to_string()))),
            ("io limit", opt(i.limits.io_limit.map(|r| format!("{r}/s")))),
            (
                "iops limit",
                opt(i.limits.iops_limit.map(|p| p.to_string())),
            ),
            (
                "io weight",
                d.kernel_limits
                    .io_weight
                    .map_or("default".into(), |w| w.to_string()),
            ),
        ];
        rows.push(("net limit", opt(i.limits.net_limit.map(|r| r.to_string()))));
        rows.push((
            "net guarantee",
            none(i.limits.net_guarantee.map(|r| r.to_string())),
        ));
        for n in &d.interfaces {
            rows.push((
                "interface",
                format!(
                    "{} {} on {} ({}), mac {}, host port {}{}",
                    n.ifname,
                    n.ip,
                    n.net,
                    n.mode,
                    n.mac,
                    n.port,
                    n.gateway
                        .map_or(String::new(), |g| format!(", gateway {g}"))
                ),
            ));
        }
        for p in &i.ports {
            rows.push(("published", p.to_string()));
        }
        if let Some(pid) = i.pid {
            rows.push(("init pid", pid.to_string()));
        }
        if let Some(up) = i.uptime_secs {
            rows.push(("uptime", duration(up)));
        }
        rows.push((
            "autostart",
            format!(
                "onboot {}, boot order {}, restart {}",
                if i.autostart.onboot { "yes" } else { "no" },
                i.autostart.boot_order,
                i.autostart.restart
            ),
        ));
        if let Some(x) = &i.last_exit {
            rows.push((
                "last exit",
                format!(
                    "{} at {} after {} (restarts in a row: {})",
                    x.how(),
                    x.at,
                    duration(x.ran_secs),
                    x.restarts
                ),
            ));
        }
        match d.console {
            Some(true) => rows.push((
                "console",
                format!(
                    "held by the supervisor (vectl console {0}, vectl logs {0})",
                    i.name
                ),
            )),
            Some(false) => rows.push((
                "console",
                "/dev/null (no supervisor ran when it started)".into(),
            )),
            None => {}
        }
        match d.sysinfo {
            Some(true) => rows.push((
                "sysinfo",
                "its own memory, swap, uptime and tasks (answered by the supervisor)".into(),
            )),
            Some(false) => rows.push((
                "sysinfo",
                "the host's values (no supervisor, or no /proc view, when it started)".into(),
            )),
            None => {}
        }
        match &d.proc_view {
            None => {}
            Some(ProcView::Own { lxcfs_dir }) => rows.push((
                "proc view",
                format!("its own limits and use (LXCFS at {})", lxcfs_dir.display()),
            )),
            Some(ProcView::HostValues { reason }) => {
                self.warn(&format!(
                    "VE {}: /proc/meminfo, cpuinfo, uptime and the like show the host's values: {reason}",
                    i.name
                ));
                rows.push(("proc view", format!("the host's values ({reason})")));
            }
            Some(ProcView::Broken { reason }) => {
                self.warn(&format!("VE {}: {reason}", i.name));
                rows.push(("proc view", "broken (LXCFS restarted)".into()));
            }
        }
        if let Some(u) = &d.usage {
            rows.push(("ram used", human_bytes(u.memory_bytes)));
            rows.push(("swap used", human_bytes(u.swap_bytes)));
            rows.push(("processes", u.pids.to_string()));
            rows.push(("cpu time", format!("{:.2}s", u.cpu_usage_ns as f64 / 1e9)));
            rows.push((
                "disk read",
                format!("{} ({} ops)", human_bytes(u.io_read_bytes), u.io_read_ops),
            ));
            rows.push((
                "disk written",
                format!("{} ({} ops)", human_bytes(u.io_write_bytes), u.io_write_ops),
            ));
            rows.push(("oom kills", u.oom_kills.to_string()));
        }
        rows.push((
            "disk used",
            match d.disk_limit_bytes {
                Some(l) => format!("{} of {}", human_bytes(d.private_bytes), human_bytes(l)),
                None => human_bytes(d.private_bytes),
            },
        ));
        rows.push(("config", d.config_path.display().to_string()));
        rows.push(("private dir", d.private_dir.display().to_string()));
        rows.push(("template dir", d.template_dir.display().to_string()));
        for c in &d.cgroups {
            rows.push(("cgroup", c.display().to_string()));
        }
        print_pairs(&rows);
    }
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Sends what goes to stdout to stderr until dropped (a command's output while
/// stdout is kept for JSON).
pub struct StdoutToStderr(std::os::fd::OwnedFd);

impl StdoutToStderr {
    pub fn new() -> anyhow::Result<StdoutToStderr> {
        use std::os::fd::AsFd;
        std::io::stdout().flush()?;
        let saved = std::io::stdout().as_fd().try_clone_to_owned()?;
        nix::unistd::dup2_stdout(std::io::stderr().as_fd())?;
        Ok(StdoutToStderr(saved))
    }
}

impl Drop for StdoutToStderr {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        let _ = nix::unistd::dup2_stdout(&self.0);
    }
}

/// The host services a network's VEs reach besides ping (`--allow-host`).
fn host_access(n: &ve_runtime::NetConfig) -> String {
    if n.allow_host.is_empty() {
        "none (ping only)".into()
    } else {
        let l: Vec<String> = n.allow_host.iter().map(ToString::to_string).collect();
        l.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_uptime() {
        assert_eq!(duration(5), "5s");
        assert_eq!(duration(65), "1m5s");
        assert_eq!(duration(3700), "1h1m");
        assert_eq!(duration(90000), "1d1h");
    }
}

/// A column `vectl list -o` can show.
#[derive(Debug)]
pub struct ListColumn {
    pub name: &'static str,
    cell: fn(&VeInfo) -> String,
}

/// What `vectl list` shows without `-o`.
pub const LIST_DEFAULT: &str = "id,name,status,template,ram,cpu,pids,address,userns,uptime";

/// Every column of `vectl list -o`, by name.
pub const LIST_COLUMNS: &[ListColumn] = &[
    ListColumn {
        name: "id",
        cell: |v| v.id.to_string(),
    },
    ListColumn {
        name: "name",
        cell: |v| v.name.clone(),
    },
    ListColumn {
        name: "status",
        cell: |v| v.status.to_string(),
    },
    ListColumn {
        name: "template",
        cell: |v| v.template.clone(),
    },
    ListColumn {
        name: "hostname",
        cell: |v| v.hostname.clone(),
    },
    ListColumn {
        name: "ram",
        cell: |v| dash(v.limits.ram),
    },
    ListColumn {
        name: "swap",
        cell: |v| dash(v.limits.swap),
    },
    ListColumn {
        name: "cpu",
        cell: |v| dash(v.limits.cpu_limit),
    },
    ListColumn {
        name: "cpus",
        cell: |v| dash(v.limits.cpus.as_ref()),
    },
    ListColumn {
        name: "pids",
        cell: |v| dash(v.limits.pids),
    },
    ListColumn {
        name: "disk",
        cell: |v| dash(v.limits.disk),
    },
    ListColumn {
        name: "address",
        cell: |v| v.nics.first().map_or("-".into(), |n| n.ip.to_string()),
    },
    ListColumn {
        name: "addresses",
        cell: |v| {
            let all: Vec<String> = v.nics.iter().map(|n| n.ip.to_string()).collect();
            if all.is_empty() {
                "-".into()
            } else {
                all.join(" ")
            }
        },
    },
    ListColumn {
        name: "userns",
        cell: |v| if v.privileged { "host" } else { "private" }.into(),
    },
    ListColumn {
        name: "pid",
        cell: |v| dash(v.pid),
    },
    ListColumn {
        name: "uptime",
        cell: |v| v.uptime_secs.map_or("-".into(), duration),
    },
];

fn dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}
