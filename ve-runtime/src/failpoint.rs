//! Crash points for tests: `VECTL_FAILPOINT=name` makes vectl kill itself with
//! SIGKILL when it reaches the point of that name, so tests can prove that every
//! step of create/start/stop/destroy leaves a state the next command recovers from.
//! A few points stop the process instead (SIGSTOP), so a test can look at it as it
//! is there (say, from inside a VE) and let it go on with SIGCONT.
//! Without the variable a check costs one cached environment lookup.

use std::sync::OnceLock;

static POINT: OnceLock<Option<String>> = OnceLock::new();

fn armed(name: &str) -> bool {
    POINT
        .get_or_init(|| std::env::var("VECTL_FAILPOINT").ok())
        .as_deref()
        == Some(name)
}

/// Dies here if the environment asks for a crash at `name`.
pub(crate) fn hit(name: &str) {
    if armed(name) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Stops here until SIGCONT if the environment names `name`.
pub(crate) fn stop(name: &str) {
    if armed(name) {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGSTOP);
    }
}
