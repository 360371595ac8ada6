//! Templates as the host sees them: the template store backed by the pool.

use std::fs;
use std::io;
use std::path::Path;

use ve_templates::{Progress, Source, TemplateVersion, VolumeOps};

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::fsutil::{Lock, remove_file};
use crate::host::Host;
use crate::options::ExecOptions;
use crate::options::{CreateOptions, StopOptions};

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
    fn snapshot(&self, base: &Path, path: &Path) -> io::Result<bool> {
        if self.0.backend() != quota::Backend::Btrfs || !quota::btrfs::is_subvolume(base) {
            return Ok(false);
        }
        quota::btrfs::snapshot(base, path, false)?;
        Ok(true)
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
    pub(crate) fn import_template(
        &self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        Ok(self
            .store()
            .import(name, source, message, &PoolVolumes(self.pool()), progress)?)
    }

    /// A version's tree (the overlay lower layer of its VEs).
    pub(crate) fn template_dir(&self, v: &TemplateVersion) -> std::path::PathBuf {
        self.store().path(v)
    }

    /// Every template version.
    pub(crate) fn list_templates(&self) -> Result<Vec<TemplateVersion>> {
        Ok(self.store().list()?)
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
    pub(crate) fn template_usage(&self, name: Option<&str>) -> Result<Vec<TemplateUsage>> {
        self.template_versions(name, false)
    }

    /// [`Host::template_usage`] with, for Debian-based versions, the package
    /// changes from each version's predecessor (from their dpkg databases).
    pub(crate) fn template_log(&self, name: &str) -> Result<Vec<TemplateUsage>> {
        self.template_versions(Some(name), true)
    }

    fn template_versions(&self, name: Option<&str>, packages: bool) -> Result<Vec<TemplateUsage>> {
        let versions = match name {
            Some(n) => {
                let v = self.store().versions(n)?;
                if v.is_empty() {
                    return Err(ve_templates::Error::UnknownTemplate(n.to_string()).into());
                }
                v
            }
            None => self.store().list()?,
        };
        let (ves, _) = self.list()?;
        // A version an upgrade came from stays while it can be rolled back to.
        let mut rollback_to: Vec<(String, String)> = self
            .configs()?
            .iter()
            .flat_map(|c| {
                crate::upgrade::open_upgrades(&c.history)
                    .into_iter()
                    .map(|m| (c.name.clone(), m.from.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        rollback_to.sort();
        Ok(versions
            .iter()
            .enumerate()
            .map(|(i, v)| TemplateUsage {
                packages: (packages && i > 0 && versions[i - 1].name == v.name)
                    .then(|| {
                        ve_templates::package_changes(
                            &self.store().path(&versions[i - 1]),
                            &self.store().path(v),
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
    pub(crate) fn update_template(
        &self,
        name: &str,
        source: &Source,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        ve_templates::validate_name(name)?;
        if self.store().versions(name)?.is_empty() {
            return Err(ve_templates::Error::UnknownTemplate(name.to_string()).into());
        }
        self.import_template(name, source, message, progress)
    }

    /// Removes `NAME@VERSION`, or every version of `NAME`; refused while a VE
    /// is pinned to one of them. Returns what was removed. What killed
    /// removals left is deleted first (a version being removed is no longer
    /// listed: removing it again finds no such version).
    pub(crate) fn remove_template(&self, reference: &str) -> Result<Vec<TemplateVersion>> {
        let r: ve_templates::TemplateRef = reference.parse()?;
        // VEs pick versions under the host lock (create): none can start using
        // one while it is checked and removed.
        let _host = self.lock_host()?;
        self.store().finish_removals(&PoolVolumes(self.pool()))?;
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
                let mut held: Vec<&str> = u
                    .ves
                    .iter()
                    .filter_map(|v| v.strip_suffix(" (rollback)"))
                    .collect();
                held.dedup();
                let mut advice = String::from("upgrade or destroy them first");
                if !held.is_empty() {
                    advice = format!(
                        "{advice}; `vectl commit {}` keeps an upgrade for good and lets go of the version kept for its rollback",
                        held.join(" ")
                    );
                }
                return Err(ve_templates::Error::InUse {
                    reference: u.version.reference(),
                    ves: u.ves.join(", "),
                    advice,
                }
                .into());
            }
        }
        for u in &doomed {
            self.store()
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
            Some(e) => Err(Error::Refused {
                what: what.to_string(),
                reason: format!("refused while a VE config cannot be read ({e})"),
            }),
        }
    }

    /// Removes every version that is neither the latest of its template nor
    /// used by a VE, and what killed removals left. Returns what was removed.
    pub(crate) fn gc_templates(&self) -> Result<Vec<TemplateVersion>> {
        let _host = self.lock_host()?;
        self.store().finish_removals(&PoolVolumes(self.pool()))?;
        self.all_configs_readable("template gc")?;
        let mut removed = Vec::new();
        for u in self.template_usage(None)? {
            if u.latest || !u.ves.is_empty() {
                continue;
            }
            self.store().remove(
                &u.version.name,
                u.version.version,
                &PoolVolumes(self.pool()),
            )?;
            removed.push(u.version);
        }
        Ok(removed)
    }
}

/// The init of a build VE: it only has to keep the VE alive while the build
/// command runs (the VE is killed afterwards).
const BUILD_INIT: &str = "/bin/sh -c 'while :; do sleep 3600; done'";

/// The build VE of template `name`: `build-NAME` (VE names have no '.' or '_').
pub fn build_ve_name(name: &str) -> String {
    let mut ve: String = format!("build-{name}")
        .chars()
        .map(|c| if c == '.' || c == '_' { '-' } else { c })
        .collect();
    ve.truncate(63);
    ve
}

impl Host {
    /// `template update NAME --run CMD`: runs `CMD` (with `/bin/sh -c`, its
    /// output passed through) in a throwaway build VE on the latest version of
    /// `name`, then publishes that version with the build's changes as the next
    /// one. The published version itself is never written: the build VE sees it
    /// as its overlay lower layer, and the new version starts as a copy of it (a
    /// snapshot on btrfs) with the VE's private layer applied, deletions included.
    ///
    /// A failed command publishes nothing. The build VE is destroyed either way;
    /// one left by a killed vectl (it is recorded under `builds/`) is destroyed by
    /// the next build of the template.
    pub(crate) fn build_template(
        &self,
        name: &str,
        command: &str,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        ve_templates::validate_name(name)?;
        let latest = self.store().resolve(&ve_templates::TemplateRef {
            name: name.to_string(),
            version: None,
        })?;
        if command.trim().is_empty() {
            return Err(Error::template(name, "--run needs a command"));
        }
        let ve = build_ve_name(name);
        // Keyed on the build VE, which templates whose names differ only in
        // '.', '_' and '-' share: their builds take turns. (Not `template-*`:
        // those are the store's locks of templates.)
        let _build = Lock::acquire(&self.root().join("locks").join(format!("build-{ve}.lock")))?;
        let builds = self.root().join("builds");
        let marker = builds.join(&ve);
        if VeConfig::load(&self.config_path(&ve))?.is_some() {
            if !marker.exists() {
                return Err(Error::template(
                    name,
                    format!(
                        "its build VE would be {ve}, but a VE of that name exists that is not a build VE (rename or destroy it)"
                    ),
                ));
            }
            self.discard_build(&ve)?;
        }
        fs::create_dir_all(&builds).map_err(io_err(&builds))?;
        fs::write(&marker, name).map_err(io_err(&marker))?;
        let built = self.run_build(name, &ve, &latest, command, message, progress);
        let discarded = self.discard_build(&ve);
        if discarded.is_ok() {
            remove_file(&marker)?;
        }
        let built = built?;
        discarded?;
        Ok(built)
    }

    fn run_build(
        &self,
        name: &str,
        ve: &str,
        base: &TemplateVersion,
        command: &str,
        message: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(TemplateVersion, Vec<String>)> {
        let in_build = |e: Error| Error::template(name, format!("build VE {ve}: {e}"));
        let cfg = self
            .create(&CreateOptions {
                name: ve.to_string(),
                template: base.reference(),
                init: Some(BUILD_INIT.into()),
                force: true,
                ..CreateOptions::default()
            })
            .map_err(in_build)?;
        self.start(ve, true).map_err(in_build)?;
        crate::failpoint::hit("build-after-start");
        let status = self
            .exec(
                ve,
                &ExecOptions {
                    // Builds never wait for input: apt, debconf and friends get none.
                    argv: vec![
                        "/bin/sh".into(),
                        "-c".into(),
                        format!("exec </dev/null\n{command}"),
                    ],
                    env: vec!["DEBIAN_FRONTEND=noninteractive".into()],
                    workdir: Some("/".into()),
                    ..ExecOptions::default()
                },
            )
            .map_err(in_build)?;
        if status != 0 {
            return Err(Error::template(
                name,
                format!(
                    "the build command failed with exit status {status}; nothing was published"
                ),
            ));
        }
        self.stop(
            ve,
            StopOptions {
                fast: true,
                ..StopOptions::default()
            },
        )
        .map_err(in_build)?;
        // Stopped: the layer keeps still while it is applied. What the build
        // left in it (symlinks to the host's files, FIFOs, huge sparse files)
        // is published as it is, never followed or read whole.
        let layer = self.pool().ve_volume(ve).upper();
        let lower = self.store().path(base);
        crate::net::forget_vectl_files(&layer, &lower, &cfg.hostname, false)?;
        let source = Source::Build {
            base: lower,
            on: base.version,
            layer,
            what: format!("run:{command} (on {})", base.reference()),
        };
        self.import_template(name, &source, message, progress)
    }

    /// Kills and destroys a build VE (missing is fine).
    fn discard_build(&self, ve: &str) -> Result<()> {
        if VeConfig::load(&self.config_path(ve))?.is_none() {
            return Ok(());
        }
        let fast = StopOptions {
            fast: true,
            ..StopOptions::default()
        };
        match self.stop(ve, fast) {
            Ok(_) | Err(Error::NotRunning(_)) => {}
            Err(e) => return Err(e),
        }
        self.destroy(ve, true)
    }
}
