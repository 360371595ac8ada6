//! The one error type of ve-runtime. Every message is one line that names the VE,
//! file or knob it concerns and says why.

use std::io;
use std::path::PathBuf;

/// Errors from VE operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A VE name that vectl does not accept.
    #[error(
        "invalid VE name {0:?}: use lower-case letters, digits and '-', starting with a letter or digit, not all digits, at most 63 characters"
    )]
    InvalidName(String),
    /// No VE of that name or id.
    #[error("VE {0}: no such VE (see `vectl list`)")]
    NoSuchVe(String),
    /// A container an OCI engine (podman, containerd) made through `vectl oci`:
    /// the engine owns its lifecycle.
    #[error(
        "{0}: an OCI container (managed by podman, containerd or another engine through vectl-oci): use the engine, not vectl's own verbs"
    )]
    OciManaged(String),
    /// A VE of that name already exists.
    #[error("VE {ve}: already exists (id {id})")]
    VeExists { ve: String, id: u32 },
    /// Another VE's config has this VE's id too (a config was edited).
    #[error(
        "VE {ve}: id {id} is also VE {other}'s (their configs in ves/ both have it): give one of them another id"
    )]
    DuplicateId { ve: String, id: u32, other: String },
    /// The requested numeric id is in use or out of range.
    #[error("VE id {id}: {reason}")]
    BadId { id: u32, reason: String },
    /// The VE is running and the operation needs it stopped.
    #[error("VE {ve}: running (init pid {pid}); stop it first or use --force")]
    Running { ve: String, pid: i32 },
    /// `start` of a VE that runs.
    #[error("VE {ve}: already running (init pid {pid})")]
    AlreadyRunning { ve: String, pid: i32 },
    /// The VE is stopped and the operation needs it running.
    #[error("VE {0}: not running (start it with `vectl start {0}`)")]
    NotRunning(String),
    /// Admission control: the VE's guarantees do not fit beside the others'.
    #[error("VE {ve}: refused: {reason} (use --force to override)")]
    Admission { ve: String, reason: String },
    /// A limit that is out of range for this host.
    #[error("VE {ve}: {reason}")]
    BadLimit { ve: String, reason: String },
    /// A configuration or state file that cannot be parsed.
    #[error("{path}: corrupt {what}: {reason}")]
    Corrupt {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    /// The kernel refused a cgroup write.
    #[error("VE {ve}: the kernel refused {knob} = {value}: {reason} ({path})")]
    Kernel {
        ve: String,
        knob: String,
        value: String,
        reason: String,
        path: PathBuf,
    },
    /// cgroups are missing or unusable on this host.
    #[error("cgroups: {0}")]
    Cgroups(String),
    /// Starting the VE failed at a given step.
    #[error("VE {ve}: start failed: {reason}")]
    Start { ve: String, reason: String },
    /// Stopping or cleaning up the VE failed.
    #[error("VE {ve}: stop failed: {reason}")]
    Stop { ve: String, reason: String },
    /// Running a command in the VE failed before the command ran.
    #[error("VE {ve}: exec failed: {reason}")]
    Exec { ve: String, reason: String },
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    /// A VE operation refused or failed for a reason no variant above covers.
    #[error("VE {ve}: {reason}")]
    Ve { ve: String, reason: String },
    /// A template operation (build, remove) refused or failed.
    #[error("template {name}: {reason}")]
    TemplateOp { name: String, reason: String },
    /// The state directory, the pool directory or the host settings file.
    #[error("{}: {reason}", path.display())]
    State { path: PathBuf, reason: String },
    /// A `--root` that is not an initialised state directory (no `vectl.toml`),
    /// given to a command that does not make one.
    #[error(
        "{}: not a vectl root (run `vectl init` to make one there, or give the right --root)",
        .0.display()
    )]
    NotARoot(PathBuf),
    /// A command-line option out of range, or options that do not go together.
    #[error("{option}: {reason}")]
    Option {
        /// The option as the user wrote it (`--reserve-cpu 150%`).
        option: String,
        reason: String,
    },
    /// A name or path that vectl does not accept.
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        what: &'static str,
        value: String,
        rule: &'static str,
    },
    /// `init` could not make the default network (the host is left uninitialised).
    #[error(
        "{0} (the default network could not be made; `vectl init --no-net` makes a host without it)"
    )]
    DefaultNet(Box<Error>),
    /// An error, and what failed after it (a restart, say).
    #[error("{first}; {then}")]
    Then { first: Box<Error>, then: String },
    /// A rollback that failed part-way: the next command on the VE finishes it.
    #[error("{source} (its rollback is not finished: the next command on VE {ve} tries again)")]
    RollbackPending {
        ve: String,
        #[source]
        source: Box<Error>,
    },
    /// An operation refused for a reason of the host's state.
    #[error("{what}: {reason}")]
    Refused { what: String, reason: String },
    /// Every VE id is taken.
    #[error("no free VE id left")]
    NoFreeId,
    /// A path or argument with a NUL byte, which no system call takes.
    #[error("{0:?}: contains a NUL byte")]
    Nul(String),
    /// An upgrade refused because the VE's own files conflict with the target.
    #[error(
        "VE {ve}: {} of its files conflict with {to} ({}); see `vectl upgrade {ve} --template {to} --check`, or --force",
        paths.len(),
        paths.join(", ")
    )]
    Conflicts {
        ve: String,
        to: String,
        paths: Vec<String>,
    },
    /// Template store errors.
    #[error(transparent)]
    Template(#[from] ve_templates::Error),
    /// Storage pool errors.
    #[error(transparent)]
    Storage(#[from] quota::Error),
    /// No network of that name.
    #[error("network {0}: no such network (see `vectl net list`)")]
    NoSuchNet(String),
    /// A network operation that is refused or failed.
    #[error("network {net}: {reason}")]
    Net { net: String, reason: String },
    /// Network errors of the host's (the firewall, a network name).
    #[error(transparent)]
    Netns(netns::Error),
    /// Network errors for a VE.
    #[error("VE {ve}: network: {source}")]
    Network {
        ve: String,
        #[source]
        source: netns::Error,
    },
}

/// Result alias for ve-runtime.
pub type Result<T> = std::result::Result<T, Error>;

/// Maps an `io::Error` to [`Error::Io`] for `path`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Maps a `nix::Error` to [`Error::Sys`] describing the call.
pub(crate) fn sys_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

impl Error {
    /// [`Error::Ve`] for `ve`.
    pub(crate) fn ve(ve: &str, reason: impl Into<String>) -> Error {
        Error::Ve {
            ve: ve.to_string(),
            reason: reason.into(),
        }
    }

    /// [`Error::TemplateOp`] for template `name`.
    pub(crate) fn template(name: &str, reason: impl Into<String>) -> Error {
        Error::TemplateOp {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// [`Error::State`] for `path`.
    pub(crate) fn state(path: &std::path::Path, reason: impl Into<String>) -> Error {
        Error::State {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
