//! `vectl import-host NAME`: a physical (or virtual) server's system as a VE.
//! Its files come over SSH (`rsync -aHAX` from `ssh://[USER@]HOST[:PORT][/ROOT]`),
//! from a directory (the same rsync, locally) or from a tar archive, without
//! what belongs to the running kernel or the machine (/proc, /sys, /dev, /run,
//! /tmp, kernel modules, /boot, swap files). They become a template version of
//! the same name, which a build VE then adapts to life in a VE (from inside:
//! the tree is never written from the host): fstab empties, gettys on ttys,
//! udev, module loading, file system checks, time sync and the system's own
//! network configuration are masked, as vectl sets the VE's network from
//! `--net`/`--ip`; `/etc/machine-id` is emptied (the server it came from may
//! still run: the VE gets an id of its own at boot). Last, unless `--as-template`, a VE of that name is made on
//! the adapted version, booting the server's own init.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use ve_templates::{Progress, Source, TemplateVersion};

use crate::config::VeConfig;
use crate::error::{Error, Result, io_err};
use crate::host::Host;
use crate::migrate::{Dest, parse_dest};
use crate::options::CreateOptions;

/// Where a server's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSource {
    /// `ssh://[USER@]HOST[:PORT][/ROOT]` (ROOT default `/`).
    Ssh(String),
    /// A directory holding a system's root (a mounted disk, a live `/`).
    Dir(PathBuf),
    /// A tar archive of a system's root.
    Tar(PathBuf),
}

/// What `import-host` asks for.
#[derive(Debug, Clone)]
pub struct ImportHostOptions {
    pub from: ServerSource,
    /// The ssh command and its options (default `ssh`).
    pub ssh: Option<String>,
    /// Only the template (no VE).
    pub as_template: bool,
    /// The VE to make (its name, template and everything else are set here
    /// but the limits, NICs, hostname and the like).
    pub create: CreateOptions,
}

/// What `import-host` made.
#[derive(Debug, Clone, Serialize)]
pub struct HostImported {
    /// The adapted template version.
    pub template: TemplateVersion,
    /// The VE on it (none with `--as-template`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ve: Option<VeConfig>,
    /// What was left out of the copy.
    pub excluded: Vec<&'static str>,
    pub seconds: f64,
}

/// Left out of a server's copy (rsync patterns, anchored at its root): the
/// running kernel's and the machine's, not the system's.
pub const EXCLUDED: &[&str] = &[
    "/proc/*",
    "/sys/*",
    "/dev/*",
    "/run/*",
    "/tmp/*",
    "/var/tmp/*",
    "/boot/*",
    "/lib/modules/*",
    "/usr/lib/modules/*",
    "/lost+found",
    "/swapfile",
    "/swap.img",
    "/var/lib/vectl",
    "/var/cache/apt/archives/*.deb",
];

/// Units a VE must not run (masked): consoles on hardware ttys, devices,
/// modules, disks, the clock, and network managers that would undo the
/// address vectl gives eth0. The VE keeps `console-getty.service`.
const MASKED: &[&str] = &[
    "getty@.service",
    "serial-getty@.service",
    "getty-static.service",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
    "systemd-modules-load.service",
    "kmod-static-nodes.service",
    "systemd-remount-fs.service",
    "systemd-fsck-root.service",
    "systemd-fsck@.service",
    "systemd-growfs-root.service",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "chrony.service",
    "ntp.service",
    "networking.service",
    "systemd-networkd.service",
    "systemd-networkd-wait-online.service",
    "NetworkManager.service",
    "NetworkManager-wait-online.service",
    "dhcpcd.service",
    "cloud-init-local.service",
    "cloud-init.service",
    "cloud-config.service",
    "cloud-final.service",
    "lvm2-monitor.service",
    "mdmonitor.service",
    "smartmontools.service",
    "irqbalance.service",
    "multipathd.service",
];

/// The adaptation, run by `/bin/sh` inside a build VE on the imported tree.
fn adapt_script() -> String {
    let units = MASKED.join(" ");
    format!(
        "set -e\n\
         if [ -e /etc/fstab ] || [ -L /etc/fstab ]; then rm -f /etc/fstab; \
           printf '# vectl: a VE mounts nothing at boot (its root is set up by vectl)\\n' > /etc/fstab; fi\n\
         mkdir -p /etc/systemd/system\n\
         for u in {units}; do rm -f \"/etc/systemd/system/$u\"; ln -s /dev/null \"/etc/systemd/system/$u\"; done\n\
         if [ -f /etc/inittab ] && command -v sed >/dev/null; then \
           sed -i -e 's/^\\([^#][^:]*:[^:]*:respawn:.*getty.*tty[0-9S]\\)/#\\1/' /etc/inittab; fi\n\
         if [ -f /etc/machine-id ]; then : > /etc/machine-id; fi\n"
    )
}

/// `rsync` of a server's root into `dest`: over SSH for `ssh://...`,
/// locally for a directory.
fn rsync(from: &ServerSource, ssh: Option<&str>, dest: &Path) -> Result<Command> {
    let mut c = Command::new("rsync");
    // Archive with hard links, ACLs and xattrs, ids as numbers, sparse files
    // sparse; nothing of the destination is followed (it is new).
    c.args(["-aHAX", "--numeric-ids", "--sparse", "--delete"]);
    for e in EXCLUDED {
        c.arg(format!("--exclude={e}"));
    }
    let src = match from {
        ServerSource::Dir(d) => {
            if !d.is_dir() {
                return Err(Error::State {
                    path: d.clone(),
                    reason: "not a directory".into(),
                });
            }
            format!("{}/", d.display())
        }
        ServerSource::Ssh(url) => {
            let (host, port, root) = parse_ssh(url)?;
            let mut e = ssh.unwrap_or("ssh").to_string();
            e.push_str(" -o BatchMode=yes");
            if let Some(p) = port {
                e.push_str(&format!(" -p {p}"));
            }
            c.arg("-e").arg(e);
            format!("{host}:{}/", root.trim_end_matches('/'))
        }
        ServerSource::Tar(t) => {
            return Err(Error::State {
                path: t.clone(),
                reason: "a tar archive is imported as it is, not copied".into(),
            });
        }
    };
    c.arg(src)
        .arg(format!("{}/", dest.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Ok(c)
}

/// `ssh://[USER@]HOST[:PORT][/ROOT]`: the host, port and root (default `/`).
fn parse_ssh(url: &str) -> Result<(String, Option<u16>, String)> {
    let bad = |why: &str| Error::Option {
        option: "--from".into(),
        reason: format!("{url:?}: {why}"),
    };
    if !url.starts_with("ssh://") {
        return Err(bad("not ssh://[USER@]HOST[:PORT][/ROOT]"));
    }
    let Dest::Ssh { host, port, root } = parse_dest(url)? else {
        return Err(bad("not ssh://[USER@]HOST[:PORT][/ROOT]"));
    };
    let root = root.unwrap_or_else(|| "/".into());
    // rsync takes HOST:PATH, and the remote shell reads the path.
    if root.contains([' ', ':']) {
        return Err(bad("the root path has spaces or colons"));
    }
    Ok((host, port, root))
}

impl Host {
    /// Imports a server's system as template `name` and a VE of that name:
    /// see the module's documentation.
    pub(crate) fn import_host(
        &self,
        name: &str,
        opts: &ImportHostOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<HostImported> {
        let t0 = Instant::now();
        crate::config::validate_name(name)?;
        ve_templates::validate_name(name)?;
        if !opts.as_template
            && let Some(existing) = VeConfig::load(&self.config_path(name))?
        {
            return Err(Error::VeExists {
                ve: name.to_string(),
                id: existing.id,
            });
        }
        let what = format!("the system of {}", describe(&opts.from));
        let first = match &opts.from {
            ServerSource::Tar(tar) => {
                self.import_template(name, &Source::Tar(tar.clone()), &what, progress)?
                    .0
            }
            from => {
                let staging = self.root().join("tmp").join(format!("import-{name}"));
                remove_tree(&staging)?;
                fs::create_dir_all(&staging).map_err(io_err(&staging))?;
                let copied = (|| {
                    let mut c = rsync(from, opts.ssh.as_deref(), &staging)?;
                    let out = c
                        .stderr(Stdio::piped())
                        .output()
                        .map_err(|e| Error::Refused {
                            what: format!("import of {name}"),
                            reason: format!("cannot run rsync: {e}"),
                        })?;
                    // 24: files vanished while copied (a live server).
                    if !out.status.success() && out.status.code() != Some(24) {
                        let err = String::from_utf8_lossy(&out.stderr);
                        let last = err
                            .lines()
                            .rev()
                            .find(|l| !l.trim().is_empty())
                            .unwrap_or("");
                        return Err(Error::Refused {
                            what: format!("import of {name}: copying {}", describe(from)),
                            reason: format!("rsync {}: {}", out.status, last.trim()),
                        });
                    }
                    self.import_template(name, &Source::Dir(staging.clone()), &what, progress)
                })();
                let _ = remove_tree(&staging);
                copied?.0
            }
        };
        // Adapted from inside a build VE, as the next version; the raw copy
        // goes (nothing uses it).
        let adapted = self.build_template(name, &adapt_script(), "adapted for a VE", progress);
        let _ = self.remove_template(&first.reference());
        let (template, _) = adapted?;
        let ve = if opts.as_template {
            None
        } else {
            let mut c = opts.create.clone();
            c.name = name.to_string();
            c.template = template.reference();
            Some(self.create(&c)?)
        };
        Ok(HostImported {
            template,
            ve,
            excluded: EXCLUDED.to_vec(),
            seconds: t0.elapsed().as_secs_f64(),
        })
    }
}

fn describe(from: &ServerSource) -> String {
    match from {
        ServerSource::Ssh(u) => u.clone(),
        ServerSource::Dir(d) => format!("dir:{}", d.display()),
        ServerSource::Tar(t) => format!("tar:{}", t.display()),
    }
}

fn remove_tree(p: &Path) -> Result<()> {
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(p)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_parse_and_bad_ones_are_refused() {
        assert_eq!(
            parse_ssh("ssh://root@srv:2222/mnt/old").unwrap(),
            ("root@srv".into(), Some(2222), "/mnt/old".into())
        );
        assert_eq!(
            parse_ssh("ssh://srv").unwrap(),
            ("srv".into(), None, "/".into())
        );
        for bad in [
            "srv",
            "ssh://",
            "ssh://-e",
            "ssh://h:x",
            "ssh://h/a b",
            "ssh://h/a:b",
        ] {
            assert!(parse_ssh(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_adaptation_masks_each_unit_and_keeps_the_console() {
        let s = adapt_script();
        for u in MASKED {
            assert!(s.contains(u), "{u}");
        }
        assert!(!s.contains("console-getty"));
    }
}
