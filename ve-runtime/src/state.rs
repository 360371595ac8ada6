//! Runtime facts of a running VE (`run/<name>.json`) and how they are checked
//! against the kernel. The file is a hint: a VE is running only if the recorded
//! init pid is alive *and* has the recorded start time in this boot.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::fsutil::write_atomic;

/// Whether a VE runs, and if not, how its init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    /// Stopped by vectl, never started, or the host rebooted.
    Stopped,
    /// Its init died without `vectl stop` (killed by a signal, or exited with
    /// a status other than 0), as the supervisor saw it ([`ExitRecord`]).
    Crashed,
    /// Its init ended by itself with status 0, or the VE was halted from inside.
    Exited,
}

impl Status {
    pub fn is_running(self) -> bool {
        self == Status::Running
    }

    /// Whether a VE in this status is one `want` asks for: `stopped` takes
    /// every VE that does not run.
    pub fn matches(self, want: Status) -> bool {
        self == want || (want == Status::Stopped && !self.is_running())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Status::Running => "running",
            Status::Stopped => "stopped",
            Status::Crashed => "crashed",
            Status::Exited => "exited",
        })
    }
}

/// What vectl records when it starts a VE.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// The VE's init, as a host pid.
    pub pid: i32,
    /// Its start time in clock ticks after boot (`/proc/PID/stat` field 22).
    pub start_ticks: u64,
    /// The boot it belongs to (/proc/sys/kernel/random/boot_id).
    pub boot_id: String,
    /// Wall-clock start, seconds since the epoch.
    pub started_at: u64,
    /// The host-side names its NICs' ports got, in NIC order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Its init's stdio and /dev/console are a pty the supervisor holds
    /// (`console.rs`); `false`: /dev/null.
    #[serde(default)]
    pub console: bool,
    /// Its init's sysinfo(2) calls are answered by the supervisor with the
    /// VE's own values (`sysinfo.rs`); `false`: the host's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sysinfo: bool,
    /// How its init ended last time without `vectl stop` (moved here from
    /// `run/NAME.exit` when it started again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<ExitRecord>,
    /// Why the VE's /proc shows the host's values (LXCFS was not running when
    /// it started, or the view is off); `None` = it shows the VE's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proc_view_off: Option<String>,
}

impl RunState {
    /// Reads the state file; missing = not started by vectl in a way it remembers.
    pub(crate) fn load(path: &Path) -> Result<Option<RunState>> {
        match fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .map(Some)
                .map_err(|e| Error::Corrupt {
                    path: path.to_path_buf(),
                    what: "runtime state",
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(path)(e)),
        }
    }

    /// Writes the state file atomically (no fsync: it means nothing after a reboot).
    pub(crate) fn store(&self, path: &Path) -> Result<()> {
        let data = serde_json::to_vec(self).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: "runtime state",
            reason: e.to_string(),
        })?;
        write_atomic(path, &data, false)
    }

    /// Whether the recorded init is alive now.
    pub fn is_alive(&self) -> bool {
        self.boot_id == boot_id()
            && proc_stat(self.pid).is_some_and(|s| s.start_ticks == self.start_ticks && s.alive())
    }
}

/// How a VE's init ended without `vectl stop`, as the supervisor saw it
/// (`run/NAME.exit`, until the next `start` or `stop`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// Its exit status, if it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, if one did. A reboot or power-off from inside
    /// the VE (reboot(2)) ends its init with SIGKILL: the kernel's way for a
    /// PID namespace, and all the process connector reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// How long it had run, in seconds.
    pub ran_secs: u64,
    /// Restarts by the supervisor in a row (a VE that ran 10 minutes starts
    /// the count again).
    #[serde(default)]
    pub restarts: u32,
}

impl ExitRecord {
    /// Whether the init failed: killed by a signal, exited with a status
    /// other than 0, or ended in a way nobody saw.
    pub fn failed(&self) -> bool {
        self.signal.is_some() || self.code != Some(0)
    }

    pub fn status(&self) -> Status {
        if self.failed() {
            Status::Crashed
        } else {
            Status::Exited
        }
    }

    /// How it ended, in words: `exit status 3`, `killed by SIGKILL`.
    pub fn how(&self) -> String {
        match (&self.signal, self.code) {
            (Some(s), _) => format!("killed by {s}"),
            (None, Some(c)) => format!("exit status {c}"),
            (None, None) => "ended".into(),
        }
    }

    pub(crate) fn load(path: &Path) -> Option<ExitRecord> {
        fs::read(path)
            .ok()
            .and_then(|d| serde_json::from_slice(&d).ok())
    }

    pub(crate) fn store(&self, path: &Path) -> Result<()> {
        let data = serde_json::to_vec(self).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: "exit record",
            reason: e.to_string(),
        })?;
        write_atomic(path, &data, false)
    }
}

/// The parts of /proc/<pid>/stat vectl uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start_ticks: u64,
}

impl ProcStat {
    /// Not a zombie and not dead.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads state and start time of a process; `None` if it does not exist.
pub fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name may contain spaces and parentheses: fields start after the
    // last ')'. After it: state is field 3, starttime field 22 (1-based overall).
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

/// Rebuilds the runtime state of a VE whose init is `pid`, if `pid` is the init of
/// its own PID namespace (its last NSpid is 1). For state files that were lost.
pub fn recover(pid: i32) -> Option<RunState> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let nspid: Vec<&str> = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .collect();
    if nspid.len() < 2 || nspid.last() != Some(&"1") {
        return None;
    }
    let stat = proc_stat(pid).filter(ProcStat::alive)?;
    Some(RunState {
        pid,
        start_ticks: stat.start_ticks,
        boot_id: boot_id(),
        started_at: boot_time() + stat.start_ticks / clock_ticks(),
        ports: Vec::new(),
        console: false,
        sysinfo: false,
        last_exit: None,
        proc_view_off: None,
    })
}

/// When this boot began, in seconds since the epoch (`btime` in /proc/stat).
fn boot_time() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Clock ticks per second (the unit of start times in /proc).
pub(crate) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .map_or(100, |t| t as u64)
}

/// Now, in seconds since the epoch (a VE's start time).
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, as configs record it (`2026-12-05T18:04:08Z`).
pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// This boot's id, read once per process (`list` and `stats` ask for it once
/// per running VE).
pub fn boot_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

/// Whether an init in its own PID namespace would receive `sig` from outside. The
/// kernel drops such signals unless the init has a handler for them (`SigCgt`),
/// blocks them (`SigBlk`: read later from a signalfd, as systemd does) or is waiting
/// for signals in sigtimedwait (busybox init does; its mask is hidden meanwhile).
pub fn init_listens(pid: i32, sig: i32) -> bool {
    if !(1..=64).contains(&sig) {
        return false;
    }
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let mask = |field: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (sig - 1);
    if (mask("SigCgt:") | mask("SigBlk:")) & bit != 0 {
        return true;
    }
    fs::read_to_string(format!("/proc/{pid}/wchan")).is_ok_and(|w| w.contains("sigtimedwait"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line = "4242 (we ird) name)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.start_ticks, 987654);
        assert!(s.alive());
        assert!(
            !ProcStat {
                state: 'Z',
                start_ticks: 1
            }
            .alive()
        );
    }

    #[test]
    fn our_own_process_is_alive_with_its_start_time() {
        let me = std::process::id().cast_signed();
        let s = proc_stat(me).unwrap();
        let rs = RunState {
            pid: me,
            start_ticks: s.start_ticks,
            boot_id: boot_id(),
            started_at: 0,
            ports: vec!["vn1p100".into()],
            console: false,
            sysinfo: false,
            last_exit: None,
            proc_view_off: None,
        };
        assert!(rs.is_alive());
        let other = RunState {
            start_ticks: s.start_ticks + 1,
            ..rs.clone()
        };
        assert!(!other.is_alive(), "a reused pid is not our VE");
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.json");
        assert_eq!(RunState::load(&p).unwrap(), None);
        rs.store(&p).unwrap();
        assert_eq!(RunState::load(&p).unwrap(), Some(rs));
        fs::write(&p, "{garbage").unwrap();
        assert!(
            RunState::load(&p)
                .unwrap_err()
                .to_string()
                .contains("corrupt runtime state")
        );
    }
}
