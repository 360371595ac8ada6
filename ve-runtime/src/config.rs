//! A VE's configuration file (`ves/<name>.toml`): the source of truth for what the
//! VE is. Written atomically and durably; never partially.

use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io_err};
use crate::fsutil::write_atomic;
use crate::limits::Limits;

/// The first id vectl hands out (ids below are reserved, as in OpenVZ).
pub const FIRST_ID: u32 = 100;
/// The largest id.
pub const MAX_ID: u32 = 999_999_999;

/// One VE's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VeConfig {
    /// Numeric id (from 100), accepted wherever a name is.
    pub id: u32,
    /// The VE's name.
    pub name: String,
    /// The pinned template version, `name@version`.
    pub template: String,
    /// The VE's hostname.
    pub hostname: String,
    /// The init command; absent = the template's /sbin/init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<Vec<String>>,
    /// The signal that asks init to halt; absent = chosen from the init program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// When it was created (RFC 3339 UTC).
    pub created: String,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Network interfaces, `eth0` first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<netns::nic::Nic>,
    /// Ports published on the host's addresses (to the first NAT NIC); the
    /// key is `publish`, as the option.
    #[serde(rename = "publish", default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<netns::model::PortMap>,
    /// Its user namespace's range of host ids; absent = privileged (root in
    /// the VE is the host's root, with fewer capabilities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<crate::userns::IdRange>,
    /// Its moves between template versions, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<TemplateMove>,
    /// When it starts by itself and what happens when its init ends.
    #[serde(default, skip_serializing_if = "Autostart::is_default")]
    pub autostart: Autostart,
}

/// A VE's autostart settings (`--onboot`, `--boot-order`, `--restart`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Autostart {
    /// Started by `vectl host boot` (the vectl.service unit at host boot).
    #[serde(default)]
    pub onboot: bool,
    /// Lower orders start first at boot (and stop last at shutdown); VEs of
    /// one order start at once.
    #[serde(default)]
    pub boot_order: u32,
    /// What the supervisor does when the init ends without `vectl stop`.
    #[serde(default)]
    pub restart: RestartPolicy,
}

impl Autostart {
    fn is_default(&self) -> bool {
        *self == Autostart::default()
    }
}

/// A change of [`Autostart`]; `None` = keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AutostartChange {
    pub onboot: Option<bool>,
    pub boot_order: Option<u32>,
    pub restart: Option<RestartPolicy>,
}

impl AutostartChange {
    pub fn applied_to(&self, a: &Autostart) -> Autostart {
        Autostart {
            onboot: self.onboot.unwrap_or(a.onboot),
            boot_order: self.boot_order.unwrap_or(a.boot_order),
            restart: self.restart.unwrap_or(a.restart),
        }
    }
}

/// When the supervisor (`vectl supervise`) starts a VE whose init ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Never.
    #[default]
    No,
    /// When init was killed by a signal or exited with a status other than 0.
    OnFailure,
    /// Whenever it ended without `vectl stop`.
    Always,
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "no" => Ok(RestartPolicy::No),
            "on-failure" => Ok(RestartPolicy::OnFailure),
            "always" => Ok(RestartPolicy::Always),
            _ => Err(format!("{s}: expected no, on-failure or always")),
        }
    }
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        })
    }
}

/// One move of a VE between template versions (`vectl history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateMove {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// `upgrade`, `rollback`, or `commit` (the upgrades before it kept for
    /// good: `from` is the version the first of them came from, `to` the
    /// VE's).
    pub action: String,
    pub from: String,
    pub to: String,
    /// The snapshot of the VE's own files taken before the upgrade: what a
    /// rollback restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Begun and not finished: a vectl was killed during this move (only ever
    /// the last entry; the next command finishes it, see the module docs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

impl VeConfig {
    /// Reads a VE's config; `Ok(None)` if there is none.
    pub(crate) fn load(path: &Path) -> Result<Option<VeConfig>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        let cfg: VeConfig = toml::from_str(&text).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: "VE config",
            reason: e.message().replace('\n', " "),
        })?;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if cfg.name != stem {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                what: "VE config",
                reason: format!("it names VE {:?}", cfg.name),
            });
        }
        Ok(Some(cfg))
    }

    /// Reads a config kept under another file name (a tombstone) for VE `ve`.
    pub(crate) fn load_from(path: &Path, ve: &str) -> Result<Option<VeConfig>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path)(e)),
        };
        Ok(toml::from_str::<VeConfig>(&text)
            .ok()
            .filter(|c| c.name == ve))
    }

    /// Writes the config atomically and durably.
    pub(crate) fn store(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            what: "VE config",
            reason: e.to_string(),
        })?;
        write_atomic(path, text.as_bytes(), true)
    }
}

/// Checks a VE name: `[a-z0-9][a-z0-9-]*`, not all digits (those are ids), at most
/// 63 characters (it is the default hostname); the rule network names share.
pub fn validate_name(name: &str) -> Result<()> {
    if netns::alloc::is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// Checks a hostname (RFC 1123 labels).
pub fn validate_hostname(h: &str) -> Result<()> {
    let ok = !h.is_empty()
        && h.len() <= 64
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            what: "hostname",
            value: h.to_string(),
            rule: "use letters, digits, '-' and '.', at most 64 characters",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{Amount, Percent, Size};

    #[test]
    fn names() {
        for good in ["web1", "a", "web-1", "1web", &"x".repeat(63)] {
            validate_name(good).unwrap();
        }
        for bad in [
            "",
            "-a",
            "Web",
            "web_1",
            "web.1",
            "123",
            &"x".repeat(64),
            "a b",
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_hostname("web1.example.com").unwrap();
        assert!(validate_hostname("bad_host").is_err());
    }

    #[test]
    fn configs_round_trip_and_corruption_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("web1.toml");
        let cfg = VeConfig {
            id: 101,
            name: "web1".into(),
            template: "bb@1".into(),
            hostname: "web1".into(),
            init: Some(vec!["/bin/sh".into()]),
            stop_signal: None,
            created: "2026-11-26T00:00:00Z".into(),
            limits: Limits {
                ram: Some(Amount::Bytes(Size(256 << 20))),
                cpu_limit: Some(Percent(50.0)),
                pids: Some(200),
                ..Limits::default()
            },
            nics: vec![],
            ports: vec![],
            userns: None,
            history: vec![],
            autostart: Default::default(),
        };
        cfg.store(&p).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(
            text.contains("ram = \"256M\"") && text.contains("cpu_limit = \"50%\""),
            "{text}"
        );
        assert_eq!(VeConfig::load(&p).unwrap(), Some(cfg));
        assert_eq!(VeConfig::load(&tmp.path().join("none.toml")).unwrap(), None);
        fs::write(&p, "id = 101\nname = [").unwrap();
        let e = VeConfig::load(&p).unwrap_err().to_string();
        assert!(e.contains("web1.toml: corrupt VE config"), "{e}");
        assert!(!e.contains('\n'));
    }
}
