//! Why a step of a process vectl starts failed: the VE's init before its
//! exec (`launch.rs`), a command entering a VE (`exec.rs`), the confinement
//! both go through (`security.rs`). Such a process cannot return an [`Error`]
//! to vectl; it writes the message to a pipe, and the parent makes it the
//! reason of an [`Error::Start`] or [`Error::Exec`] naming the VE.
//!
//! [`Error`]: crate::Error
//! [`Error::Start`]: crate::Error::Start
//! [`Error::Exec`]: crate::Error::Exec

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// A system call or file operation failed: what it was and why.
    #[error("{what}: {cause}")]
    Failed { what: String, cause: Cause },
    /// The VE's files or the caller's request do not allow the step (a path
    /// that is not a directory, a command that is not there).
    #[error("{0}")]
    Refused(String),
}

/// What a failed call returned.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Cause {
    #[error(transparent)]
    Sys(#[from] nix::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Caps(#[from] caps::errors::CapsError),
    #[error(transparent)]
    Seccomp(#[from] seccompiler::Error),
}

impl From<rustix::io::Errno> for Cause {
    fn from(e: rustix::io::Errno) -> Cause {
        Cause::Io(e.into())
    }
}

impl From<seccompiler::BackendError> for Cause {
    fn from(e: seccompiler::BackendError) -> Cause {
        Cause::Seccomp(e.into())
    }
}

/// The result of a step.
pub(crate) type Step<T = ()> = std::result::Result<T, StepError>;

/// Makes a failed call's error a [`StepError::Failed`] saying `what` it was.
pub(crate) fn step<E: Into<Cause>>(what: impl FnOnce() -> String) -> impl FnOnce(E) -> StepError {
    move |e| StepError::Failed {
        what: what(),
        cause: e.into(),
    }
}

/// The calling thread's last OS error as a [`StepError::Failed`] of `what`.
pub(crate) fn last_os_error(what: impl Into<String>) -> StepError {
    StepError::Failed {
        what: what.into(),
        cause: Cause::Io(std::io::Error::last_os_error()),
    }
}

/// A [`StepError::Failed`] of `what` with cause `e`.
pub(crate) fn failed(what: impl Into<String>, e: impl Into<Cause>) -> StepError {
    StepError::Failed {
        what: what.into(),
        cause: e.into(),
    }
}
