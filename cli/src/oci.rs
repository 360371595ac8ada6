//! `vectl oci` / `vectl-oci`: the OCI runtime command line as runc documents
//! it, for podman, containerd and CRI-O. `vectl-oci` is the same binary
//! under another name (a link); main.rs hands over before its own parser runs,
//! because the runtime's global `--root` is the runtime's state directory,
//! not vectl's.
//!
//! Errors are one line on stderr (`vectl-oci: ID: reason`) and, with `--log`,
//! a line in that file too: JSON (`{"level":"error","msg":...,"time":...}`)
//! with `--log-format json`, which is how podman and containerd read why a
//! runtime failed.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ve_runtime::oci::{self, CreateOptions, ExecOptions, Runtime};

/// vectl's OCI runtime: runs OCI bundles as vectl containers.
#[derive(Debug, Parser)]
#[command(name = "vectl-oci", version, about, max_term_width = 100)]
struct Cli {
    /// State directory of the runtime's containers ($VECTL_OCI_ROOT, else
    /// /run/vectl-oci; `vectl list` looks there too).
    #[arg(long, global = true, env = "VECTL_OCI_ROOT", default_value = oci::DEFAULT_ROOT)]
    root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Format of --log: text or json.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// linux.cgroupsPath is systemd's slice:prefix:name.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility (more logging).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Set a container up from a bundle; its process waits for `start`.
    Create {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Accepted for runc compatibility.
        #[arg(long)]
        no_pivot: bool,
        /// Accepted for runc compatibility.
        #[arg(long)]
        no_new_keyring: bool,
    },
    /// Create and start in one go.
    Run {
        #[command(flatten)]
        bundle: BundleArgs,
        /// Return once it runs (else wait until it stops, and delete it).
        #[arg(long, short)]
        detach: bool,
    },
    /// Start a created container's process.
    Start { id: String },
    /// The container's state (runtime-spec JSON).
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init, or to all of
    /// its processes.
    Kill {
        id: String,
        #[arg(default_value = "SIGTERM")]
        signal: String,
        #[arg(long, short)]
        all: bool,
    },
    /// Remove a container (a running one only with --force).
    Delete {
        #[arg(long, short)]
        force: bool,
        id: String,
    },
    /// Run a process in a running container.
    Exec {
        /// The process as JSON (config.json's `process`).
        #[arg(long, short)]
        process: Option<PathBuf>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long, short)]
        detach: bool,
        #[arg(long, short)]
        tty: bool,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(long, short)]
        env: Vec<String>,
        /// UID[:GID]
        #[arg(long, short)]
        user: Option<String>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: i32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Change a running container's resources (LinuxResources JSON; - for stdin).
    Update {
        #[arg(long, short)]
        resources: Option<PathBuf>,
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long)]
        memory_swap: Option<i64>,
        #[arg(long)]
        cpu_quota: Option<i64>,
        #[arg(long)]
        cpu_period: Option<u64>,
        #[arg(long)]
        cpu_share: Option<u64>,
        #[arg(long)]
        pids_limit: Option<i64>,
        id: String,
    },
    /// The containers of this root.
    List {
        #[arg(long, short, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        #[arg(long, short)]
        quiet: bool,
    },
    /// What this runtime implements (runtime-spec features JSON).
    Features,
}

/// What `create` and `run` take.
#[derive(Debug, clap::Args)]
struct BundleArgs {
    /// The bundle: a directory with config.json.
    #[arg(long, short, default_value = ".")]
    bundle: PathBuf,
    /// Write the container's init pid here.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Send the terminal's master to this unix socket (process.terminal).
    #[arg(long)]
    console_socket: Option<PathBuf>,
    /// Pass file descriptors 3..3+N on to the container.
    #[arg(long, default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

impl BundleArgs {
    fn options(self) -> CreateOptions {
        CreateOptions {
            id: self.id,
            bundle: self.bundle,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            preserve_fds: self.preserve_fds,
        }
    }
}

/// Signal numbers from `9`, `KILL` or `SIGKILL`.
fn signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return Ok(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .map(|s| s as i32)
        .map_err(|_| format!("unknown signal {s}"))
}

struct Logger {
    file: Option<PathBuf>,
    json: bool,
}

impl Logger {
    fn error(&self, msg: &str) {
        eprintln!("vectl-oci: {msg}");
        let Some(p) = &self.file else { return };
        let line = if self.json {
            serde_json::json!({
                "level": "error",
                "msg": msg,
                "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            })
            .to_string()
        } else {
            format!("error: {msg}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// The runtime's parser (for its manual pages).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Runs the OCI command line on `args` (args[0] is the program name).
pub fn main(args: Vec<std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let log = Logger {
        file: cli.log.clone(),
        json: cli.log_format == "json",
    };
    let rt = Runtime::new(&cli.root, cli.systemd_cgroup);
    match run(&rt, cli.command) {
        Ok(code) => code,
        Err(msg) => {
            log.error(&msg);
            ExitCode::from(1)
        }
    }
}

fn run(rt: &Runtime, cmd: Cmd) -> Result<ExitCode, String> {
    let ok = Ok(ExitCode::SUCCESS);
    let named = |id: &str, r: Result<(), String>| r.map_err(|e| format!("{id}: {e}"));
    match cmd {
        Cmd::Create { bundle, .. } => {
            let o = bundle.options();
            named(&o.id, rt.create(&o))?;
            ok
        }
        Cmd::Run { bundle, detach } => {
            let o = bundle.options();
            let id = o.id.clone();
            named(&id, rt.create(&o))?;
            named(&id, rt.start(&id))?;
            if detach {
                return ok;
            }
            // Wait for the container's init (not our child: poll its state).
            loop {
                let st = rt.state(&id).map_err(|e| format!("{id}: {e}"))?;
                if st.status == oci::Status::Stopped {
                    named(&id, rt.delete(&id, true))?;
                    return ok;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Cmd::Start { id } => {
            named(&id, rt.start(&id))?;
            ok
        }
        Cmd::State { id } => {
            let st = rt.state(&id).map_err(|e| format!("{id}: {e}"))?;
            println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            ok
        }
        Cmd::Kill { id, signal: s, all } => {
            let sig = signal(&s).map_err(|e| format!("{id}: {e}"))?;
            named(&id, rt.kill(&id, sig, all))?;
            ok
        }
        Cmd::Delete { force, id } => {
            named(&id, rt.delete(&id, force))?;
            ok
        }
        Cmd::Exec {
            process,
            pid_file,
            console_socket,
            detach,
            tty,
            cwd,
            env,
            user,
            preserve_fds,
            id,
            command,
        } => {
            let user = match user {
                None => None,
                Some(u) => {
                    let (uid, gid) = u.split_once(':').unwrap_or((&u, "0"));
                    Some((
                        uid.parse().map_err(|_| format!("{id}: bad --user {u}"))?,
                        gid.parse().map_err(|_| format!("{id}: bad --user {u}"))?,
                    ))
                }
            };
            let o = ExecOptions {
                id: id.clone(),
                process,
                args: command,
                cwd,
                env,
                tty,
                user,
                detach,
                pid_file,
                console_socket,
                preserve_fds,
            };
            let code = rt.exec(&o).map_err(|e| format!("{id}: {e}"))?;
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(255)))
        }
        Cmd::Update {
            resources,
            memory,
            memory_swap,
            cpu_quota,
            cpu_period,
            cpu_share,
            pids_limit,
            id,
        } => {
            let mut v: serde_json::Value = match resources {
                Some(p) => {
                    let mut text = Vec::new();
                    if p.as_os_str() == "-" {
                        std::io::stdin()
                            .read_to_end(&mut text)
                            .map_err(|e| format!("{id}: stdin: {e}"))?;
                    } else {
                        text =
                            std::fs::read(&p).map_err(|e| format!("{id}: {}: {e}", p.display()))?;
                    }
                    serde_json::from_slice(&text).map_err(|e| format!("{id}: resources: {e}"))?
                }
                None => serde_json::json!({}),
            };
            let obj = v
                .as_object_mut()
                .ok_or(format!("{id}: resources: not an object"))?;
            let mut set = |section: &str, key: &str, val: serde_json::Value| {
                let s = obj.entry(section).or_insert_with(|| serde_json::json!({}));
                if let Some(s) = s.as_object_mut() {
                    s.insert(key.into(), val);
                }
            };
            if let Some(m) = memory {
                set("memory", "limit", m.into());
            }
            if let Some(m) = memory_swap {
                set("memory", "swap", m.into());
            }
            if let Some(q) = cpu_quota {
                set("cpu", "quota", q.into());
            }
            if let Some(p) = cpu_period {
                set("cpu", "period", p.into());
            }
            if let Some(s) = cpu_share {
                set("cpu", "shares", s.into());
            }
            if let Some(p) = pids_limit {
                set("pids", "limit", p.into());
            }
            named(&id, rt.update(&id, v))?;
            ok
        }
        Cmd::List { format, quiet } => {
            let all = rt.list()?;
            if quiet {
                for c in &all {
                    println!("{}", c.id);
                }
            } else if format == "json" {
                println!("{}", serde_json::to_string(&all).unwrap_or_default());
            } else {
                println!(
                    "{:<20} {:>8} {:<10} {:<40} CREATED",
                    "ID", "PID", "STATUS", "BUNDLE"
                );
                for c in &all {
                    println!(
                        "{:<20} {:>8} {:<10} {:<40} {}",
                        c.id,
                        c.pid,
                        c.status,
                        c.bundle.display(),
                        c.created
                    );
                }
            }
            ok
        }
        Cmd::Features => {
            println!(
                "{}",
                serde_json::to_string_pretty(&oci::features()).unwrap_or_default()
            );
            ok
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_number_and_name() {
        assert_eq!(signal("9"), Ok(9));
        assert_eq!(signal("KILL"), Ok(libc::SIGKILL));
        assert_eq!(signal("SIGTERM"), Ok(libc::SIGTERM));
        assert_eq!(signal("term"), Ok(libc::SIGTERM));
        assert!(signal("NOPE").is_err());
    }

    #[test]
    fn the_command_line_parses_as_runc_s() {
        let c = Cli::try_parse_from([
            "vectl-oci",
            "--root",
            "/r",
            "--log",
            "/l",
            "--log-format",
            "json",
            "--systemd-cgroup",
            "create",
            "--bundle",
            "/b",
            "--pid-file",
            "/p",
            "x1",
        ])
        .unwrap();
        assert_eq!(c.root, PathBuf::from("/r"));
        assert!(matches!(c.command, Cmd::Create { ref bundle, .. } if bundle.id == "x1"));
        let c = Cli::try_parse_from([
            "vectl-oci",
            "exec",
            "--pid-file",
            "/p",
            "--process",
            "/f",
            "--detach",
            "x1",
        ])
        .unwrap();
        assert!(matches!(c.command, Cmd::Exec { detach: true, .. }));
        let c = Cli::try_parse_from(["vectl-oci", "kill", "--all", "x1", "9"]).unwrap();
        assert!(matches!(c.command, Cmd::Kill { all: true, .. }));
        let c = Cli::try_parse_from(["vectl-oci", "update", "--resources=/tmp/r", "x1"]).unwrap();
        assert!(matches!(c.command, Cmd::Update { .. }));
    }
}
