//! Templates as the host sees them: the template store backed by the pool.

use std::io;
use std::path::Path;

use ve_templates::{Progress, Source, TemplateVersion, VolumeOps};

use crate::error::Result;
use crate::host::Host;

/// The pool's volumes, as the template store needs them.
struct PoolVolumes<'a>(&'a quota::Pool);

fn to_io(e: quota::Error) -> io::Error {
    io::Error::other(e.to_string())
}

impl VolumeOps for PoolVolumes<'_> {
    fn create(&self, path: &Path) -> io::Result<()> {
        self.0.create_dir_volume(path).map_err(to_io)
    }
    fn seal(&self, path: &Path) -> io::Result<()> {
        self.0.seal_volume(path).map_err(to_io)
    }
    fn delete(&self, path: &Path) -> io::Result<()> {
        self.0.delete_volume(path).map_err(to_io)
    }
    fn usage(&self, path: &Path) -> io::Result<(u64, u64)> {
        quota::usage(path)
            .map(|u| (u.bytes, u.files))
            .map_err(to_io)
    }
}

impl Host {
    /// Imports a tree as the next version of template `name`. Returns the new
    /// version and warnings for the operator.
    pub fn import_template(
        &self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        Ok(self
            .templates()
            .import(name, source, message, &PoolVolumes(self.pool()), progress)?)
    }

    /// A version's tree (the overlay lower layer of its VEs).
    pub fn template_dir(&self, v: &TemplateVersion) -> std::path::PathBuf {
        self.templates().path(v)
    }

    /// Every template version.
    pub fn list_templates(&self) -> Result<Vec<TemplateVersion>> {
        Ok(self.templates().list()?)
    }
}

/// One template version with the VEs pinned to it (`template usage`, `show`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TemplateUsage {
    #[serde(flatten)]
    pub version: TemplateVersion,
    /// Whether it is the template's latest version (what new VEs get).
    pub latest: bool,
    pub ves: Vec<String>,
    /// Package changes since the previous version (`template log`, Debian-based
    /// versions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<Vec<ve_templates::PackageChange>>,
}

impl Host {
    /// The versions of template `name` (all templates if `None`), oldest first,
    /// each with the VEs pinned to it.
    pub fn template_usage(&self, name: Option<&str>) -> Result<Vec<TemplateUsage>> {
        self.template_versions(name, false)
    }

    /// [`Host::template_usage`] with, for Debian-based versions, the package
    /// changes from each version's predecessor (from their dpkg databases).
    pub fn template_log(&self, name: &str) -> Result<Vec<TemplateUsage>> {
        self.template_versions(Some(name), true)
    }

    fn template_versions(&self, name: Option<&str>, packages: bool) -> Result<Vec<TemplateUsage>> {
        let versions = match name {
            Some(n) => {
                let v = self.templates().versions(n)?;
                if v.is_empty() {
                    return Err(ve_templates::Error::UnknownTemplate(n.to_string()).into());
                }
                v
            }
            None => self.templates().list()?,
        };
        let (ves, _) = self.list()?;
        // A version an upgrade came from stays while it can be rolled back to.
        let rollback_to: Vec<(String, String)> = self
            .configs()?
            .iter()
            .flat_map(|c| {
                crate::upgrade::open_upgrades(&c.history)
                    .into_iter()
                    .map(|m| (c.name.clone(), m.from.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Ok(versions
            .iter()
            .enumerate()
            .map(|(i, v)| TemplateUsage {
                packages: (packages && i > 0 && versions[i - 1].name == v.name)
                    .then(|| {
                        ve_templates::package_changes(
                            &self.templates().path(&versions[i - 1]),
                            &self.templates().path(v),
                        )
                    })
                    .flatten(),
                latest: !versions
                    .iter()
                    .any(|o| o.name == v.name && o.version > v.version),
                ves: ves
                    .iter()
                    .filter(|ve| ve.template == v.reference())
                    .map(|ve| ve.name.clone())
                    .chain(
                        rollback_to
                            .iter()
                            .filter(|(_, from)| *from == v.reference())
                            .map(|(ve, _)| format!("{ve} (rollback)")),
                    )
                    .collect(),
                version: v.clone(),
            })
            .collect())
    }

    /// Publishes a tree as the next version of an existing template (its VEs
    /// stay on the versions they are pinned to).
    pub fn update_template(
        &self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        ve_templates::validate_name(name)?;
        if self.templates().versions(name)?.is_empty() {
            return Err(ve_templates::Error::UnknownTemplate(name.to_string()).into());
        }
        self.import_template(name, source, message, progress)
    }

    /// Removes `NAME@VERSION`, or every version of `NAME`; refused while a VE
    /// is pinned to one of them. Returns what was removed. What killed
    /// removals left is deleted first (a version being removed is no longer
    /// listed: removing it again finds no such version).
    pub fn remove_template(&self, reference: &str) -> Result<Vec<TemplateVersion>> {
        let r: ve_templates::TemplateRef = reference.parse()?;
        // VEs pick versions under the host lock (create): none can start using
        // one while it is checked and removed.
        let _host = self.lock_host()?;
        self.templates()
            .finish_removals(&PoolVolumes(self.pool()))?;
        self.all_configs_readable("template rm")?;
        let usage = self.template_usage(Some(&r.name))?;
        let doomed: Vec<&TemplateUsage> = match r.version {
            Some(v) => {
                let one: Vec<&TemplateUsage> =
                    usage.iter().filter(|u| u.version.version == v).collect();
                if one.is_empty() {
                    return Err(ve_templates::Error::UnknownVersion {
                        name: r.name.clone(),
                        version: v,
                    }
                    .into());
                }
                one
            }
            None => usage.iter().collect(),
        };
        for u in &doomed {
            if !u.ves.is_empty() {
                return Err(ve_templates::Error::InUse {
                    reference: u.version.reference(),
                    ves: u.ves.join(", "),
                }
                .into());
            }
        }
        for u in &doomed {
            self.templates()
                .remove(&r.name, u.version.version, &PoolVolumes(self.pool()))?;
        }
        Ok(doomed.into_iter().map(|u| u.version.clone()).collect())
    }

    /// Refuses `what` while a VE config cannot be read: the versions it pins
    /// are not known.
    fn all_configs_readable(&self, what: &str) -> Result<()> {
        let (_, errors) = self.list()?;
        match errors.first() {
            None => Ok(()),
            Some(e) => Err(crate::error::Error::Host(format!(
                "{what}: refused while a VE config cannot be read ({e})"
            ))),
        }
    }

    /// Removes every version that is neither the latest of its template nor
    /// used by a VE, and what killed removals left. Returns what was removed.
    pub fn gc_templates(&self) -> Result<Vec<TemplateVersion>> {
        let _host = self.lock_host()?;
        self.templates()
            .finish_removals(&PoolVolumes(self.pool()))?;
        self.all_configs_readable("template gc")?;
        let mut removed = Vec::new();
        for u in self.template_usage(None)? {
            if u.latest || !u.ves.is_empty() {
                continue;
            }
            self.templates().remove(
                &u.version.name,
                u.version.version,
                &PoolVolumes(self.pool()),
            )?;
            removed.push(u.version);
        }
        Ok(removed)
    }
}
