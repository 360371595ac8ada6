//! Package changes between two Debian-based template versions, from their dpkg
//! databases (`var/lib/dpkg/status`).
//!
//! A build VE (`template update --run`) wrote the version: its status file may
//! be a symlink, a FIFO or huge. It is read through [`Tree`] (symlinks resolve
//! inside the version, never on the host), only as a regular file, and only up
//! to [`MAX_STATUS`] bytes; anything else means no package list.

use std::collections::BTreeMap;
use std::path::Path;

use crate::tree::Tree;

/// The largest dpkg status file read (a full Debian desktop's is ~10 MiB).
pub const MAX_STATUS: u64 = 64 << 20;

/// One package that differs between two versions.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageChange {
    pub package: String,
    /// Its version before (`None`: added).
    pub from: Option<String>,
    /// Its version after (`None`: removed).
    pub to: Option<String>,
}

/// The installed packages of a tree and their versions, by (package,
/// architecture); `None` when the tree has no dpkg database (not Debian-based).
fn installed(tree: &Path) -> Option<BTreeMap<(String, String), String>> {
    // An absolute `var -> /var` is the tree's own /var, not the host's.
    let text = Tree::open(tree)
        .ok()?
        .read_to_string(Path::new("var/lib/dpkg/status"), MAX_STATUS)
        .ok()?;
    let mut out = BTreeMap::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
        };
        let installed = field("Status:").is_some_and(|s| s.ends_with(" installed"));
        if let (true, Some(p), Some(v)) = (installed, field("Package:"), field("Version:")) {
            out.insert((p, field("Architecture:").unwrap_or_default()), v);
        }
    }
    Some(out)
}

/// What changed between the package sets of two trees; `None` unless both
/// have a dpkg database. A package is named `name:arch` only when it is
/// installed for more than one architecture (multi-arch), in either tree.
pub fn changes(old: &Path, new: &Path) -> Option<Vec<PackageChange>> {
    let (a, b) = (installed(old)?, installed(new)?);
    let mut archs: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for (p, arch) in a.keys().chain(b.keys()) {
        archs.entry(p).or_default().insert(arch);
    }
    let name = |(p, arch): &(String, String)| {
        if archs.get(p.as_str()).is_some_and(|s| s.len() > 1) {
            format!("{p}:{arch}")
        } else {
            p.clone()
        }
    };
    let mut out = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            Some(w) if w == v => {}
            to => out.push(PackageChange {
                package: name(k),
                from: Some(v.clone()),
                to: to.cloned(),
            }),
        }
    }
    for (k, w) in &b {
        if !a.contains_key(k) {
            out.push(PackageChange {
                package: name(k),
                from: None,
                to: Some(w.clone()),
            });
        }
    }
    out.sort_by(|x, y| x.package.cmp(&y.package));
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn status(dir: &Path, pkgs: &[(&str, &str, &str)]) {
        fs::create_dir_all(dir.join("var/lib/dpkg")).unwrap();
        let text: Vec<String> = pkgs
            .iter()
            .map(|(p, v, s)| {
                let (p, arch) = p.split_once(':').unwrap_or((p, "amd64"));
                format!("Package: {p}\nStatus: {s}\nArchitecture: {arch}\nVersion: {v}\nDescription: x\n long text\n")
            })
            .collect();
        fs::write(dir.join("var/lib/dpkg/status"), text.join("\n")).unwrap();
    }

    #[test]
    fn changes_are_added_removed_and_upgraded_packages() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let ok = "install ok installed";
        status(
            &a,
            &[
                ("openssl", "3.0.11-1", ok),
                ("vim", "9.0", ok),
                ("old", "1", ok),
                ("gone", "1", "deinstall ok config-files"),
            ],
        );
        status(
            &b,
            &[
                ("openssl", "3.0.13-1", ok),
                ("vim", "9.0", ok),
                ("new", "2", ok),
            ],
        );
        let c = changes(&a, &b).unwrap();
        let got: Vec<(&str, Option<&str>, Option<&str>)> = c
            .iter()
            .map(|c| (c.package.as_str(), c.from.as_deref(), c.to.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("new", None, Some("2")),
                ("old", Some("1"), None),
                ("openssl", Some("3.0.11-1"), Some("3.0.13-1")),
            ]
        );
        assert!(changes(&a, t.path()).is_none(), "no dpkg database, no list");
    }

    #[test]
    fn multi_arch_packages_are_named_by_architecture_whatever_the_order() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        let ok = "install ok installed";
        // libc6 for two architectures, listed in either order; zlib for one
        // in a, two in b.
        status(
            &a,
            &[
                ("libc6:i386", "2.36-9", ok),
                ("libc6:amd64", "2.36-9", ok),
                ("zlib1g", "1", ok),
            ],
        );
        status(
            &b,
            &[
                ("libc6:amd64", "2.36-10", ok),
                ("libc6:i386", "2.36-9", ok),
                ("zlib1g:i386", "1", ok),
                ("zlib1g", "1", ok),
            ],
        );
        let c = changes(&a, &b).unwrap();
        let got: Vec<(&str, Option<&str>, Option<&str>)> = c
            .iter()
            .map(|c| (c.package.as_str(), c.from.as_deref(), c.to.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("libc6:amd64", Some("2.36-9"), Some("2.36-10")),
                ("zlib1g:i386", None, Some("1")),
            ]
        );
    }

    #[test]
    fn a_hostile_status_file_gives_no_list_and_nothing_of_the_host() {
        let t = tempfile::tempdir().unwrap();
        let (a, b, host) = (
            t.path().join("a"),
            t.path().join("b"),
            t.path().join("host"),
        );
        let ok = "install ok installed";
        status(&a, &[("openssl", "1", ok)]);
        status(&host, &[("leaked", "6.6.6", ok)]);
        let host_status = host.join("var/lib/dpkg/status");
        let db = b.join("var/lib/dpkg");
        fs::create_dir_all(&db).unwrap();
        // A symlink to the host's file: looked up inside the tree, where there
        // is none.
        std::os::unix::fs::symlink(&host_status, db.join("status")).unwrap();
        assert!(changes(&a, &b).is_none());
        // The same through `..`.
        fs::remove_file(db.join("status")).unwrap();
        let dots = format!("../../../../../../../..{}", host_status.display());
        std::os::unix::fs::symlink(&dots, db.join("status")).unwrap();
        assert!(changes(&a, &b).is_none());
        // A FIFO neither hangs nor is read.
        fs::remove_file(db.join("status")).unwrap();
        nix::unistd::mkfifo(&db.join("status"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(changes(&a, &b).is_none());
        // A huge (sparse) one is not read into memory.
        fs::remove_file(db.join("status")).unwrap();
        let f = fs::File::create(db.join("status")).unwrap();
        f.set_len(MAX_STATUS + 1).unwrap();
        assert!(changes(&a, &b).is_none());
        // A symlink that stays in the tree is followed there.
        fs::remove_file(db.join("status")).unwrap();
        status(&b.join("real"), &[("openssl", "2", ok)]);
        std::os::unix::fs::symlink("/real/var/lib/dpkg/status", db.join("status")).unwrap();
        let c = changes(&a, &b).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].to.as_deref(), Some("2"));
    }
}
