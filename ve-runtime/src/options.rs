//! What an operator asks of a VE operation: the options of create, stop and
//! exec. Plain data at the bottom of the crate's import graph.

use std::time::Duration;

use crate::limits::LimitsUpdate;

/// What `create` needs.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub name: String,
    /// `NAME` or `NAME@VERSION`.
    pub template: String,
    pub limits: LimitsUpdate,
    pub hostname: Option<String>,
    /// The init command line (split like a shell would).
    pub init: Option<String>,
    pub stop_signal: Option<String>,
    pub id: Option<u32>,
    /// Skip admission control.
    pub force: bool,
    /// NICs; `None` = one on the default network (if the host has one).
    pub nics: Option<Vec<netns::nic::NicRequest>>,
    /// Ports to publish.
    pub ports: Vec<netns::model::PortMap>,
    /// No user namespace: root in the VE is the host's root (with fewer
    /// capabilities).
    pub privileged: bool,
    /// --onboot, --boot-order, --restart.
    pub autostart: crate::config::Autostart,
}

/// Options of `stop`.
#[derive(Debug, Clone, Copy)]
pub struct StopOptions {
    /// How long init gets to halt before everything is killed.
    pub timeout: Duration,
    /// Kill at once without asking init.
    pub fast: bool,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            timeout: Duration::from_secs(30),
            fast: false,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecOptions {
    /// The command and its arguments; looked up in the VE's PATH.
    pub argv: Vec<String>,
    /// Allocate a pseudo-terminal.
    pub tty: bool,
    /// Extra `KEY=VALUE` environment variables.
    pub env: Vec<String>,
    /// Working directory inside the VE (default: /root if it exists, else /).
    pub workdir: Option<String>,
    /// `argv[0]` to pass instead of the command path (`-sh` for a login shell).
    pub arg0: Option<String>,
    /// How many descriptors after stdio (3, 4, ...) the command inherits from
    /// vectl's caller; all others are closed at exec.
    pub preserve_fds: u32,
}
