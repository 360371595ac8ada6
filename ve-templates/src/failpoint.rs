//! Crash points for tests, as in ve-runtime: `VECTL_FAILPOINT=name` makes the
//! process kill itself with SIGKILL when it reaches the point of that name (so
//! tests can prove a killed template removal is finished by the next command).

use std::sync::OnceLock;

static POINT: OnceLock<Option<String>> = OnceLock::new();

/// Dies here if the environment asks for a crash at `name`.
pub(crate) fn hit(name: &str) {
    let point = POINT.get_or_init(|| std::env::var("VECTL_FAILPOINT").ok());
    if point.as_deref() == Some(name) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}
