//! The storage pool as the operator sees it: `pool info` and `pool grow`, and
//! the one-line form of a pool error about a VE. `pool check` is in
//! [`crate::pool_check`], snapshots in [`crate::snapshot`], clones in
//! [`crate::clone`].

use serde::Serialize;

use crate::error::{Error, Result};
use crate::host::Host;

/// `vectl pool info`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolInfo {
    pub backend: quota::Backend,
    pub dir: std::path::PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<quota::Source>,
    /// `simple` (squota), `qgroups`, or absent (no disk limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<&'static str>,
    #[serde(flatten)]
    pub space: quota::PoolSpace,
    pub ves: Vec<VolumeUse>,
    pub templates: Vec<VolumeUse>,
}

/// One volume's use in `pool info`.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeUse {
    pub name: String,
    pub used_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bytes: Option<u64>,
}

impl Host {
    /// Size, use and free space of the pool, with every VE's and template's use.
    pub(crate) fn pool_info(&self) -> Result<PoolInfo> {
        let pool = self.pool();
        // Quota numbers are counted at commit.
        pool.commit()?;
        let (list, _) = self.list()?;
        let ves = list
            .iter()
            .map(|v| {
                let d = pool.disk(&v.name).unwrap_or_default();
                VolumeUse {
                    name: v.name.clone(),
                    used_bytes: d.used,
                    limit_bytes: d.limit,
                }
            })
            .collect();
        let mut templates = Vec::new();
        for tv in self.list_templates()? {
            let path = self.store().path(&tv);
            templates.push(VolumeUse {
                name: tv.reference(),
                used_bytes: pool.volume_bytes(&path).unwrap_or(tv.size_bytes),
                limit_bytes: None,
            });
        }
        Ok(PoolInfo {
            backend: pool.backend(),
            dir: pool.dir().to_path_buf(),
            source: self.settings().pool_source.clone(),
            quota: pool.quota_mode().map(|m| match m {
                quota::btrfs::QuotaMode::Simple => "simple",
                quota::btrfs::QuotaMode::Qgroups => "qgroups",
            }),
            space: pool.space()?,
            ves,
            templates,
        })
    }

    /// Grows the pool online (see [`quota::Pool::grow`]). Returns the new space.
    pub(crate) fn pool_grow(&self, size: Option<u64>) -> Result<quota::PoolSpace> {
        let _host = self.lock_host()?;
        let pool = self.pool();
        let source = match (pool.backend(), &self.settings().pool_source) {
            (quota::Backend::Btrfs, Some(s)) => s.clone(),
            _ => {
                return Err(Error::Refused {
                    what: format!("pool {}", pool.dir().display()),
                    reason: format!(
                        "the {} backend cannot grow (it uses its file system as it is)",
                        pool.backend()
                    ),
                });
            }
        };
        pool.grow(&source, size)?;
        Ok(pool.space()?)
    }
}

/// A pool error about one VE, as one line that names it (once).
pub(crate) fn ve_storage(ve: &str, e: quota::Error) -> Error {
    let msg = e.to_string();
    if msg.starts_with(&format!("VE {ve}: ")) {
        Error::Storage(e)
    } else {
        Error::ve(ve, msg)
    }
}
