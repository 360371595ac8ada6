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
    /// The image pool's file is gone from its path while the pool is mounted
    /// from it (what happened and how to keep the data, one line).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_problem: Option<String>,
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
            quota: match pool.backend() {
                quota::Backend::Xfs => Some("project"),
                _ => pool.quota_mode().map(|m| match m {
                    quota::btrfs::QuotaMode::Simple => "simple",
                    quota::btrfs::QuotaMode::Qgroups => "qgroups",
                }),
            },
            space: pool.space()?,
            ves,
            templates,
            image_problem: self.lost_pool_image().map(|l| l.to_string()),
        })
    }

    /// For an image pool: its image file deleted, moved or replaced while the
    /// pool is mounted from it (`None`: all is well, or not an image pool).
    pub(crate) fn lost_pool_image(&self) -> Option<quota::LostImage> {
        self.pool()
            .lost_image(self.settings().pool_source.as_ref()?)
    }

    /// Refuses commands that put new data into a pool whose image file is gone
    /// (`create`, `start`, `pool grow`): the data would vanish with the pool's
    /// next unmount. Reading, stopping and `pool check` still work, so the
    /// operator can save the data first.
    pub(crate) fn refuse_lost_pool_image(&self) -> Result<()> {
        match self.lost_pool_image() {
            None => Ok(()),
            Some(lost) => Err(Error::Refused {
                what: format!("pool {}", self.pool().dir().display()),
                reason: lost.to_string(),
            }),
        }
    }

    /// Grows the pool online (see [`quota::Pool::grow`]). Returns the new space.
    pub(crate) fn pool_grow(&self, size: Option<u64>) -> Result<quota::PoolSpace> {
        let _host = self.lock_host()?;
        self.refuse_lost_pool_image()?;
        let pool = self.pool();
        let source = match (pool.backend(), &self.settings().pool_source) {
            (b, Some(s)) if b.has_file_system() => s.clone(),
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
