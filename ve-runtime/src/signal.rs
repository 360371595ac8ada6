//! Signals by name: parsing `SIGTERM`, `TERM`, `15`, `SIGRTMIN+4`, and naming
//! a signal for people.

use std::str::FromStr;

/// A signal vectl does not accept (unknown, out of range, or one that cannot
/// be caught, which could never ask an init to halt).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid signal {0:?}: expected a name like SIGTERM or SIGRTMIN+4, or a number")]
pub struct BadSignal(pub String);

/// Parses a signal: `SIGTERM`, `TERM`, `15`, `SIGRTMIN+4`.
pub fn parse_signal(s: &str) -> Result<i32, BadSignal> {
    let bad = || BadSignal(s.to_string());
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=libc::SIGRTMAX()).contains(&n) && n != libc::SIGKILL && n != libc::SIGSTOP {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let up = t.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')
                .and_then(|n| n.parse().ok())
                .ok_or_else(bad)?
        };
        let n = libc::SIGRTMIN() + off;
        return if n <= libc::SIGRTMAX() {
            Ok(n)
        } else {
            Err(bad())
        };
    }
    let sig = nix::sys::signal::Signal::from_str(&format!("SIG{name}")).map_err(|_| bad())?;
    if matches!(
        sig,
        nix::sys::signal::Signal::SIGKILL | nix::sys::signal::Signal::SIGSTOP
    ) {
        return Err(bad());
    }
    Ok(sig as i32)
}

/// A signal's name for people: `SIGUSR1`, `SIGRTMIN+4`.
pub fn signal_name(sig: i32) -> String {
    if sig >= libc::SIGRTMIN() {
        return format!("SIGRTMIN+{}", sig - libc::SIGRTMIN());
    }
    nix::sys::signal::Signal::try_from(sig)
        .map_or_else(|_| sig.to_string(), |s| s.as_str().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_by_name_number_and_realtime_offset() {
        assert_eq!(parse_signal("SIGUSR1").unwrap(), libc::SIGUSR1);
        assert_eq!(parse_signal("term").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("15").unwrap(), 15);
        assert_eq!(parse_signal("SIGRTMIN+4").unwrap(), libc::SIGRTMIN() + 4);
        for bad in ["SIGKILL", "9", "0", "SIGNOPE", "RTMIN+99", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
        assert_eq!(signal_name(libc::SIGRTMIN() + 4), "SIGRTMIN+4");
        assert_eq!(signal_name(libc::SIGUSR1), "SIGUSR1");
    }
}
