//! Host limits at hosting scale: the kernel settings (sysctls) that a stock
//! host runs out of long before its CPU or RAM when it carries hundreds to
//! thousands of VEs, what each should be for a number of VEs, and raising them.
//!
//! A stock host logs `neighbour: arp_cache: neighbor table overflow` at about
//! 500 VEs (the ARP table's hard maximum is 1024 entries), refuses inotify
//! instances to systemd in the VEs at about 10 (128 per user, and every VE
//! root created counts against the host root's), runs out of pids at 32768,
//! and so on. [`HostLimits::check`] reads each setting of [`RULES`] and
//! compares it with what [`Rule::recommended`] says for a VE count;
//! [`tune`] raises the low ones live (`/proc/sys`) and persists them in
//! `/etc/sysctl.d/60-vectl.conf`, so that they hold after a reboot.
//!
//! **Only raised, never lowered.** A value above the recommendation (the
//! operator's, or another tool's) is left as it is, live and in the file: the
//! file's values only ever grow, whatever VE count a later run is given.
//!
//! **Whose settings.** Every setting of the table is the host's, not a network
//! namespace's, on the kernels vectl runs on (6.x): the neighbour tables are
//! one per protocol, shared by every network namespace (each VE's entries
//! count in them), and the kernel shows `net.ipv*.neigh.default.gc_thresh*`
//! in the initial network namespace only; `nf_conntrack_max` is read-only in
//! the others; the inotify limits belong to the initial user namespace for
//! VEs that root makes, `pid_max` to the initial PID namespace, the key
//! quotas and `file-max` to the whole kernel. So vectl writes them (and the
//! file in /etc/sysctl.d, which the host applies to its own namespaces at
//! boot) only when it runs in the host's network namespace; a vectl in a
//! network namespace of its own (in a container, or a test) is a tenant: it
//! reads what it can see and tells the operator the commands instead.
//!
//! **Testing hook.** `VECTL_SYSCTL_ROOT` names a directory that stands in for
//! the host's `/proc/sys` (files named like `kernel/pid_max`) and
//! `VECTL_SYSCTL_D` one for `/etc/sysctl.d`; with `VECTL_SYSCTL_ROOT` set,
//! vectl treats the tree as the host's, wherever it runs. Tests use them to
//! check raising and persisting without touching the real host.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result, io_err};
use crate::fsutil::write_atomic;

/// The VE count the limits are sized for unless told otherwise.
pub const DEFAULT_VES: u64 = 1000;

/// Environment variable: a directory standing in for the host's `/proc/sys`
/// (testing hook).
pub const SYSCTL_ROOT_ENV: &str = "VECTL_SYSCTL_ROOT";

/// Environment variable: a directory standing in for `/etc/sysctl.d`
/// (testing hook).
pub const SYSCTL_D_ENV: &str = "VECTL_SYSCTL_D";

/// The file in the sysctl.d directory where the raised values persist: after
/// distribution defaults (`50-*.conf`, e.g. systemd's `50-pid-max.conf`), before
/// an operator's own later files and `99-sysctl.conf`.
pub const CONF_NAME: &str = "60-vectl.conf";

/// Inode number the kernel gives the initial network namespace
/// (`PROC_NET_INIT_INO`, fixed on current kernels): how vectl knows the host's
/// namespace when /proc/1 is not readable (a sandbox, hidepid).
const INIT_NET_INO: u64 = 0xEFFF_FFF9;

/// Largest value of an `int` sysctl.
const INT_MAX: u64 = i32::MAX as u64;

/// One host setting and how much of it a number of VEs needs.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The sysctl name (`kernel.pid_max`).
    pub key: &'static str,
    /// The host's own share: the stock value where that is what a host without
    /// VEs needs.
    pub base: u64,
    /// What each VE adds.
    pub per_ve: u64,
    /// The largest value the kernel takes.
    pub max: u64,
    /// Why it binds, in one line (shown by `host info --json` and written as
    /// the comment above the key in the sysctl.d file).
    pub why: &'static str,
}

impl Rule {
    /// The smallest value this rule wants for `ves` VEs: `base + per_ve × ves`,
    /// at most what the kernel takes.
    pub fn recommended(&self, ves: u64) -> u64 {
        self.base
            .saturating_add(self.per_ve.saturating_mul(ves))
            .min(self.max)
    }

    /// The file holding the key below a sysctl directory.
    fn path(&self, dir: &Path) -> PathBuf {
        dir.join(self.key.replace('.', "/"))
    }
}

/// The table. Numbers per VE are for the small web VE hosts stamp out by the
/// hundred (init, a web server, a database, a few services; systemd or not)
/// with one NIC, with room to spare: a setting too high costs nothing until it
/// is used, one too low breaks a VE with an error far from its cause.
pub const RULES: &[Rule] = &[
    // The neighbour (ARP) table is one for the whole kernel: entries of every
    // network namespace count against it. Per VE: the host's entry for the
    // VE's address on its bridge, the VE's entry for its gateway, and entries
    // for the VEs and hosts it talks to on its own network. gc_thresh1 is the
    // count below which entries are never collected (the steady state: the
    // two a VE always has), gc_thresh2 the soft maximum (collected after 5 s
    // above it), gc_thresh3 the hard one: above it new neighbours are refused
    // and the kernel logs "neighbor table overflow" (the 1000 VEs
    // against the stock 1024).
    Rule {
        key: "net.ipv4.neigh.default.gc_thresh1",
        base: 128,
        per_ve: 2,
        max: INT_MAX,
        why: "ARP entries never collected: a VE always has two (the host's for it, its gateway)",
    },
    Rule {
        key: "net.ipv4.neigh.default.gc_thresh2",
        base: 512,
        per_ve: 4,
        max: INT_MAX,
        why: "ARP entries above which collection starts: the steady state of every VE with room",
    },
    Rule {
        key: "net.ipv4.neigh.default.gc_thresh3",
        base: 1024,
        per_ve: 8,
        max: INT_MAX,
        why: "ARP entries of all namespaces at most: above it 'neighbor table overflow' drops new peers",
    },
    // The same for IPv6's neighbour discovery: every veth has an IPv6
    // link-local address by default, so VEs make ND entries (router and
    // neighbour solicitations) even on IPv4-only networks.
    Rule {
        key: "net.ipv6.neigh.default.gc_thresh1",
        base: 128,
        per_ve: 2,
        max: INT_MAX,
        why: "ND entries never collected: IPv6 link-local neighbours of every VE",
    },
    Rule {
        key: "net.ipv6.neigh.default.gc_thresh2",
        base: 512,
        per_ve: 4,
        max: INT_MAX,
        why: "ND entries above which collection starts",
    },
    Rule {
        key: "net.ipv6.neigh.default.gc_thresh3",
        base: 1024,
        per_ve: 8,
        max: INT_MAX,
        why: "ND entries of all namespaces at most: above it 'ndisc_cache: neighbor table overflow'",
    },
    // inotify instances are counted per user in each user namespace and every
    // one above it: all VEs that root made (with a user namespace of their own
    // or not) count against root's 128 on the host. systemd (PID 1 alone holds
    // several), journald, logind, dbus, cron and daemons watching their
    // configuration take about ten per VE; 16 leaves room.
    Rule {
        key: "fs.inotify.max_user_instances",
        base: 128,
        per_ve: 16,
        max: INT_MAX,
        why: "inotify instances per user, VEs' counted as root's: systemd and services use ~10 per VE",
    },
    // Watches, counted the same way: systemd watches its unit directories,
    // /etc and /run paths, services their files; a few hundred per VE. Each
    // watch in use costs about 1 KiB of kernel memory, none unused.
    Rule {
        key: "fs.inotify.max_user_watches",
        base: 8192,
        per_ve: 1024,
        max: INT_MAX,
        why: "inotify watches per user, VEs' counted as root's: a few hundred per VE, 1 KiB each in use",
    },
    // Every process and thread of every VE takes a pid in the host's PID
    // namespace too. A web VE runs 50-150 tasks (worker threads count);
    // 256 each, on top of the host's stock 32768. At most PID_MAX_LIMIT.
    Rule {
        key: "kernel.pid_max",
        base: 32768,
        per_ve: 256,
        max: 4_194_304,
        why: "pids of the host and every VE's processes and threads (~50-150 per VE)",
    },
    // Key quotas are per host user. A VE with its own user namespace has its
    // own host ids, so its root is a non-root host user with these quotas of
    // its own, and systemd in a VE keeps a session keyring and an invocation
    // id key per service: the stock 200 keys / 20000 bytes run out with a few
    // dozen units. Not scaled by the VE count (each VE has its own quota);
    // 2000 keys of up to 1000 bytes each. (--privileged VEs count against
    // root's kernel.keys.root_maxkeys, whose stock million lasts ~5000 VEs.)
    Rule {
        key: "kernel.keys.maxkeys",
        base: 2000,
        per_ve: 0,
        max: INT_MAX,
        why: "keys per host user, i.e. per VE root: systemd keeps keyrings per service",
    },
    Rule {
        key: "kernel.keys.maxbytes",
        base: 2_000_000,
        per_ve: 0,
        max: INT_MAX,
        why: "bytes of keys per host user, i.e. per VE root: 2000 keys of up to 1000 bytes",
    },
    // The connection-tracking table (only if nf_conntrack is loaded: NAT
    // networks and published ports load it) is the host's, shared by every
    // namespace. A small web VE's concurrent connections plus those in
    // TIME_WAIT (tracked 120 s) are ~100-200; when full the kernel drops new
    // connections ("nf_conntrack: table full, dropping packet").
    Rule {
        key: "net.netfilter.nf_conntrack_max",
        base: 65536,
        per_ve: 256,
        max: INT_MAX,
        why: "tracked connections of all namespaces (NAT, published ports): ~100-200 per web VE",
    },
    // Open files of the whole host; the stock value scales with RAM (about
    // 100 per MiB) and is usually enough, but a host with little RAM per VE
    // can run out: a VE's services hold ~1000-2000 files and sockets.
    Rule {
        key: "fs.file-max",
        base: 65536,
        per_ve: 2048,
        max: i64::MAX as u64,
        why: "open files of the host and every VE (~1000-2000 per VE)",
    },
];

/// How a setting compares with its recommendation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitStatus {
    /// At or above the recommendation.
    Ok,
    /// Below it.
    Low,
    /// Not there to read: a module not loaded, or a setting the kernel shows
    /// in the host's network namespace only.
    Absent,
    /// There but not readable as a number.
    Unreadable,
}

impl LimitStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitStatus::Ok => "OK",
            LimitStatus::Low => "LOW",
            LimitStatus::Absent => "absent",
            LimitStatus::Unreadable => "unreadable",
        }
    }
}

/// One setting as it is now.
#[derive(Debug, Clone, Serialize)]
pub struct HostLimit {
    pub key: &'static str,
    /// The value now, if it could be read.
    pub current: Option<u64>,
    pub recommended: u64,
    pub status: LimitStatus,
    /// Why it is absent or unreadable.
    pub problem: Option<String>,
    /// The command that raises it, for a LOW one.
    pub command: Option<String>,
    pub why: &'static str,
}

/// Every setting of [`RULES`] for a VE count.
#[derive(Debug, Clone, Serialize)]
pub struct HostLimits {
    /// The VE count the recommendations are for.
    pub ves: u64,
    /// Where the values were read (`/proc/sys`).
    pub sysctl_dir: PathBuf,
    /// Whether vectl runs in the host's network namespace (and so may change
    /// the host's settings).
    pub host_netns: bool,
    pub limits: Vec<HostLimit>,
}

impl HostLimits {
    /// Reads every setting and compares it with what `ves` VEs need.
    pub fn check(ves: u64) -> HostLimits {
        let dir = sysctl_dir();
        let host_netns = in_host_netns();
        let limits = RULES
            .iter()
            .map(|r| limit(r, &dir, ves, host_netns))
            .collect();
        HostLimits {
            ves,
            sysctl_dir: dir,
            host_netns,
            limits,
        }
    }

    /// The settings below their recommendation.
    pub fn low(&self) -> impl Iterator<Item = &HostLimit> {
        self.limits.iter().filter(|l| l.status == LimitStatus::Low)
    }
}

fn limit(rule: &Rule, dir: &Path, ves: u64, host_netns: bool) -> HostLimit {
    let recommended = rule.recommended(ves);
    let path = rule.path(dir);
    let (current, status, problem) = match read_value(&path) {
        Ok(v) if v >= recommended => (Some(v), LimitStatus::Ok, None),
        Ok(v) => (Some(v), LimitStatus::Low, None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let why = if rule.key.contains(".neigh.") && !host_netns {
                "the kernel shows it only in the host's network namespace"
            } else if rule.key.starts_with("net.netfilter.") {
                "nf_conntrack is not loaded"
            } else {
                "not in this kernel"
            };
            (None, LimitStatus::Absent, Some(why.to_string()))
        }
        Err(e) => (
            None,
            LimitStatus::Unreadable,
            Some(format!("{}: {e}", path.display())),
        ),
    };
    HostLimit {
        key: rule.key,
        current,
        recommended,
        status,
        problem,
        command: (status == LimitStatus::Low).then(|| command(rule.key, recommended)),
        why: rule.why,
    }
}

/// The command an operator runs to set `key` to `value` live.
fn command(key: &str, value: u64) -> String {
    format!("sysctl -w {key}={value}")
}

/// The sysctl directory: `/proc/sys` or the testing hook's.
pub fn sysctl_dir() -> PathBuf {
    std::env::var_os(SYSCTL_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/proc/sys"), PathBuf::from)
}

/// The sysctl.d directory: `/etc/sysctl.d` or the testing hook's.
pub fn sysctl_d_dir() -> PathBuf {
    std::env::var_os(SYSCTL_D_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/etc/sysctl.d"), PathBuf::from)
}

/// Whether this process is in the host's network namespace: the one PID 1 is
/// in, or (where /proc/1 cannot be read) the kernel's initial one. With the
/// testing hook's directory the tree is the host's by definition.
fn in_host_netns() -> bool {
    if std::env::var_os(SYSCTL_ROOT_ENV).is_some_and(|v| !v.is_empty()) {
        return true;
    }
    let Ok(own) = fs::metadata("/proc/self/ns/net") else {
        return false;
    };
    match fs::metadata("/proc/1/ns/net") {
        Ok(init) => own.dev() == init.dev() && own.ino() == init.ino(),
        Err(_) => own.ino() == INIT_NET_INO,
    }
}

/// A sysctl file's value as an unsigned number.
fn read_value(path: &Path) -> io::Result<u64> {
    let text = fs::read_to_string(path)?;
    text.trim().parse::<u64>().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a number ({:?}: {e})", text.trim()),
        )
    })
}

/// What [`tune`] did (or would do) with one setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TuneAction {
    /// Already at or above the recommendation: untouched.
    Ok,
    /// Raised live (and persisted, unless the file could not be written).
    Raised,
    /// Low; a dry run or `--no-host-tuning` changes nothing.
    WouldRaise,
    /// Low, but the host's and vectl runs in a network namespace of its own.
    LeftToOperator,
    /// Not there (see [`LimitStatus::Absent`]) or not readable.
    Skipped,
    /// The write was refused, or the kernel kept another value.
    Failed,
}

/// One setting's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TunedLimit {
    pub key: &'static str,
    pub before: Option<u64>,
    pub after: Option<u64>,
    pub recommended: u64,
    pub action: TuneAction,
    /// Why it was skipped, left or failed (one line, naming the file).
    pub reason: Option<String>,
    /// The command that raises it, where vectl did not.
    pub command: Option<String>,
}

/// What [`tune`] did.
#[derive(Debug, Clone, Serialize)]
pub struct TuneReport {
    pub ves: u64,
    pub dry_run: bool,
    pub host_netns: bool,
    pub sysctl_dir: PathBuf,
    /// The persistence file (`/etc/sysctl.d/60-vectl.conf`).
    pub conf: PathBuf,
    /// Whether the file was written (its content changed).
    pub persisted: bool,
    pub limits: Vec<TunedLimit>,
    /// One line each: every write that failed, naming the file and why.
    pub errors: Vec<String>,
}

impl TuneReport {
    pub fn raised(&self) -> impl Iterator<Item = &TunedLimit> {
        self.limits
            .iter()
            .filter(|l| l.action == TuneAction::Raised)
    }
}

/// Raises every setting below what `ves` VEs need, live and in the
/// persistence file; never lowers one. With `dry_run` nothing is written.
/// Failures do not stop the others: they are in the report's `errors`.
pub fn tune(ves: u64, dry_run: bool) -> TuneReport {
    let check = HostLimits::check(ves);
    let conf = sysctl_d_dir().join(CONF_NAME);
    let mut errors = Vec::new();
    let mut limits = Vec::new();
    let mut to_persist: Vec<(&Rule, u64)> = Vec::new();
    for (rule, l) in RULES.iter().zip(&check.limits) {
        let mut t = TunedLimit {
            key: l.key,
            before: l.current,
            after: l.current,
            recommended: l.recommended,
            action: TuneAction::Ok,
            reason: None,
            command: None,
        };
        match l.status {
            LimitStatus::Ok => {}
            LimitStatus::Absent | LimitStatus::Unreadable => {
                t.action = TuneAction::Skipped;
                t.reason = l.problem.clone();
            }
            LimitStatus::Low if dry_run => {
                t.action = TuneAction::WouldRaise;
                t.command = l.command.clone();
            }
            LimitStatus::Low if !check.host_netns => {
                t.action = TuneAction::LeftToOperator;
                t.reason = Some(
                    "the host's setting, and vectl runs in a network namespace of its own".into(),
                );
                t.command = l.command.clone();
            }
            LimitStatus::Low => match raise(rule, &check.sysctl_dir, l.recommended) {
                Ok(now) => {
                    t.action = TuneAction::Raised;
                    t.after = Some(now);
                    to_persist.push((rule, now.min(l.recommended)));
                }
                Err(e) => {
                    let line = e.to_string();
                    t.action = TuneAction::Failed;
                    t.reason = Some(line.clone());
                    t.command = l.command.clone();
                    errors.push(line);
                }
            },
        }
        limits.push(t);
    }
    let mut persisted = false;
    if !to_persist.is_empty() {
        match persist(&conf, &to_persist) {
            Ok(changed) => persisted = changed,
            Err(e) => errors.push(e.to_string()),
        }
    }
    TuneReport {
        ves,
        dry_run,
        host_netns: check.host_netns,
        sysctl_dir: check.sysctl_dir,
        conf,
        persisted,
        limits,
        errors,
    }
}

/// Writes `value` into the rule's file and reads it back: the kernel may
/// refuse the write or keep another value, both an error.
fn raise(rule: &Rule, dir: &Path, value: u64) -> Result<u64> {
    let path = rule.path(dir);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| Error::state(&path, format!("cannot raise {} to {value}: {e}", rule.key)))?;
    f.write_all(format!("{value}\n").as_bytes())
        .map_err(|e| Error::state(&path, format!("cannot raise {} to {value}: {e}", rule.key)))?;
    drop(f);
    let now = read_value(&path).map_err(io_err(&path))?;
    if now < value {
        return Err(Error::state(
            &path,
            format!(
                "{} was written as {value} but the kernel kept {now}",
                rule.key
            ),
        ));
    }
    Ok(now)
}

/// Records `raised` in the persistence file, merged with what it holds: each
/// key the larger of its old and new value, keys vectl does not know kept as
/// they are. Returns whether the file changed. Runs under a lock on the
/// directory, so two roots tuning at once do not lose each other's keys.
fn persist(conf: &Path, raised: &[(&Rule, u64)]) -> Result<bool> {
    let dir = conf.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let lock = fs::File::open(dir).map_err(io_err(dir))?;
    lock.lock().map_err(io_err(dir))?;
    let old = match fs::read_to_string(conf) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(conf)(e)),
    };
    let mut values: Vec<(String, u64)> = Vec::new();
    let mut foreign: Vec<String> = Vec::new();
    for line in old.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let parsed = line
            .split_once('=')
            .and_then(|(k, v)| Some((k.trim(), v.trim().parse::<u64>().ok()?)));
        match parsed {
            Some((k, v)) if RULES.iter().any(|r| r.key == k) => values.push((k.to_string(), v)),
            _ => foreign.push(line.to_string()),
        }
    }
    for (rule, v) in raised {
        match values.iter_mut().find(|(k, _)| k == rule.key) {
            Some((_, old)) => *old = (*old).max(*v),
            None => values.push((rule.key.to_string(), *v)),
        }
    }
    let text = render_conf(&values, &foreign);
    if text == old {
        return Ok(false);
    }
    write_atomic(conf, text.as_bytes(), true)?;
    Ok(true)
}

/// The persistence file's text: a header, then each key in table order with
/// its reason as a comment above it.
fn render_conf(values: &[(String, u64)], foreign: &[String]) -> String {
    let mut s = String::from(
        "# Written by vectl (`vectl init`, `vectl host tune`): host limits that bind\n\
         # when a host runs hundreds of VEs. vectl only ever raises these values; to\n\
         # go higher, set them in a later file (e.g. 70-local.conf).\n",
    );
    for rule in RULES {
        if let Some((_, v)) = values.iter().find(|(k, _)| k == rule.key) {
            s.push_str(&format!("\n# {}\n{} = {v}\n", rule.why, rule.key));
        }
    }
    if !foreign.is_empty() {
        s.push_str("\n# Kept from an earlier version of this file\n");
        for line in foreign {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_limits_recommendations_grow_with_ves_and_keep_the_order() {
        for ves in [0, 1, 500, 1000, 10_000] {
            let r = |k: &str| RULES.iter().find(|r| r.key == k).unwrap().recommended(ves);
            for p in ["net.ipv4", "net.ipv6"] {
                let t1 = r(&format!("{p}.neigh.default.gc_thresh1"));
                let t2 = r(&format!("{p}.neigh.default.gc_thresh2"));
                let t3 = r(&format!("{p}.neigh.default.gc_thresh3"));
                assert!(t1 <= t2 && t2 <= t3, "{p} at {ves}: {t1} {t2} {t3}");
            }
        }
        // The host: 1000 VEs need far more than the stock 1024.
        let t3 = RULES[2].recommended(1000);
        assert_eq!(RULES[2].key, "net.ipv4.neigh.default.gc_thresh3");
        assert_eq!(t3, 9024);
        // Never beyond what the kernel takes.
        let pid = RULES.iter().find(|r| r.key == "kernel.pid_max").unwrap();
        assert_eq!(pid.recommended(1_000_000), 4_194_304);
        for r in RULES {
            assert!(r.recommended(0) >= r.base.min(r.max), "{}", r.key);
            assert!(r.recommended(u64::MAX) <= r.max, "{}", r.key);
            assert!(!r.why.contains('\n'), "{}", r.key);
        }
    }

    #[test]
    fn host_limits_conf_merges_never_lowers_and_keeps_foreign_lines() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join(CONF_NAME);
        fs::write(
            &conf,
            "# old\nkernel.pid_max = 500000\nvm.swappiness=10\nfs.file-max = 1\n",
        )
        .unwrap();
        let pid = RULES.iter().find(|r| r.key == "kernel.pid_max").unwrap();
        let t3 = &RULES[2];
        assert!(persist(&conf, &[(pid, 288_768), (t3, 9024)]).unwrap());
        let text = fs::read_to_string(&conf).unwrap();
        assert!(text.contains("\nkernel.pid_max = 500000\n"), "{text}");
        assert!(
            text.contains("\nnet.ipv4.neigh.default.gc_thresh3 = 9024\n"),
            "{text}"
        );
        assert!(text.contains("\nfs.file-max = 1\n"), "{text}");
        assert!(text.contains("\nvm.swappiness=10\n"), "{text}");
        // Each key has its comment on the line above it.
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if RULES
                .iter()
                .any(|r| l.starts_with(&format!("{} = ", r.key)))
            {
                assert!(lines[i - 1].starts_with("# "), "{text}");
            }
        }
        // The same again changes nothing.
        assert!(!persist(&conf, &[(pid, 288_768), (t3, 9024)]).unwrap());
        assert_eq!(fs::read_to_string(&conf).unwrap(), text);
    }

    #[test]
    fn host_limits_unreadable_and_absent_values() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kernel")).unwrap();
        fs::write(dir.path().join("kernel/pid_max"), "lots\n").unwrap();
        let pid = RULES.iter().find(|r| r.key == "kernel.pid_max").unwrap();
        let l = limit(pid, dir.path(), 1000, true);
        assert_eq!(l.status, LimitStatus::Unreadable);
        assert!(l.problem.unwrap().contains("kernel/pid_max"));
        let ct = RULES
            .iter()
            .find(|r| r.key == "net.netfilter.nf_conntrack_max")
            .unwrap();
        let l = limit(ct, dir.path(), 1000, true);
        assert_eq!(l.status, LimitStatus::Absent);
        assert_eq!(l.command, None);
        fs::write(dir.path().join("kernel/pid_max"), "32768\n").unwrap();
        let l = limit(pid, dir.path(), 1000, true);
        assert_eq!(l.status, LimitStatus::Low);
        assert_eq!(
            l.command.as_deref(),
            Some("sysctl -w kernel.pid_max=288768")
        );
    }
}
