//! The network files in a VE's private layer: /etc/hostname, vectl's lines of
//! /etc/hosts and /etc/resolv.conf, written at each start ([`write_net_files`])
//! and taken out again for a build or an upgrade ([`forget_vectl_files`]). A
//! layer's /etc is only ever reached through a directory handle opened without
//! following a symlink ([`Etc`]); reads are capped.

use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::fstatat;
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::model::NetConfig;
use crate::nic::Nic;
use crate::{Error, Result};

/// An I/O error on `path` as this crate's [`Error::File`].
fn file_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::File {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads all of `f`, refusing more than `max` bytes (the file may grow while it
/// is read: the cap is on what is read, not on what `stat` said).
fn read_capped(f: fs::File, max: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(buf)
}

/// The most of a VE's /etc/hosts vectl reads (it rewrites the file at each
/// start): a VE's root could otherwise make the host read gigabytes.
pub const HOSTS_MAX: u64 = 8 << 20;

/// What a name in a layer's /etc is, without following a symlink.
enum Entry {
    Missing,
    /// A regular file of UTF-8 text, read whole.
    File(String),
    /// A regular file longer than the cap it was read with.
    TooLarge,
    /// A symlink, a whiteout, a FIFO, a directory, a file that is not text...:
    /// nothing vectl reads through.
    Other,
}

/// A layer's /etc (a VE's own layer, or the template tree under it) as a
/// directory fd opened without following a symlink: every file in it is looked
/// at, read, written and removed relative to that fd, never through a symlink,
/// and opened non-blocking (a FIFO cannot hang vectl) only once it is known to
/// be a regular file; reads are capped.
struct Etc {
    fd: OwnedFd,
    path: PathBuf,
}

impl Etc {
    /// `layer/etc`, or `None` when it is missing or not a plain directory (a
    /// symlink to anywhere, say).
    fn open(layer: &Path) -> Result<Option<Etc>> {
        let path = layer.join("etc");
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        match nix::fcntl::open(&path, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => Ok(Some(Etc { fd, path })),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => Ok(None),
            Err(e) => Err(file_err(&path)(e.into())),
        }
    }

    fn file_type(&self, name: &str) -> std::result::Result<libc::mode_t, Errno> {
        let st = fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(st.st_mode & libc::S_IFMT)
    }

    /// What `name` is; a regular file is read if it holds at most `max` bytes.
    fn entry(&self, name: &str, max: u64) -> Entry {
        match self.file_type(name) {
            Ok(libc::S_IFREG) => {}
            Ok(_) => return Entry::Other,
            Err(Errno::ENOENT) => return Entry::Missing,
            Err(_) => return Entry::Other,
        }
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let f = match openat(&self.fd, name, flags, nix::sys::stat::Mode::empty()) {
            Ok(fd) => fs::File::from(fd),
            Err(Errno::ENOENT) => return Entry::Missing,
            Err(_) => return Entry::Other,
        };
        // What was opened, not what was looked at a moment before.
        if !f.metadata().is_ok_and(|m| m.file_type().is_file()) {
            return Entry::Other;
        }
        match read_capped(f, max) {
            Ok(bytes) => String::from_utf8(bytes).map_or(Entry::Other, Entry::File),
            Err(e) if e.kind() == io::ErrorKind::FileTooLarge => Entry::TooLarge,
            Err(_) => Entry::Other,
        }
    }

    /// Writes `text` to `name` unless it holds that already. Something other
    /// than a regular file there (a symlink, a FIFO...) is replaced; a
    /// directory is left alone.
    fn write(&self, name: &str, text: &str) -> Result<()> {
        match self.entry(name, text.len() as u64) {
            Entry::File(old) if old == text => return Ok(()),
            Entry::File(_) | Entry::Missing | Entry::TooLarge => {}
            Entry::Other => {
                if self.file_type(name) == Ok(libc::S_IFDIR) {
                    return Ok(());
                }
                self.remove(name)?;
            }
        }
        self.put(name, text)
    }

    /// Writes `text` to the regular file `name` (made if missing, mode 0644),
    /// never through a symlink.
    fn put(&self, name: &str, text: &str) -> Result<()> {
        use std::io::Write;
        let path = self.path.join(name);
        let flags = OFlag::O_WRONLY
            | OFlag::O_CREAT
            | OFlag::O_TRUNC
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o644);
        let fd = openat(&self.fd, name, flags, mode).map_err(|e| file_err(&path)(e.into()))?;
        let mut f = fs::File::from(fd);
        if !f.metadata().map_err(file_err(&path))?.file_type().is_file() {
            return Err(file_err(&path)(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        f.write_all(text.as_bytes()).map_err(file_err(&path))
    }

    /// Removes `name` (not a directory); a missing one is fine.
    fn remove(&self, name: &str) -> Result<()> {
        match unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(file_err(&self.path.join(name))(e.into())),
        }
    }

    /// [`Etc::entry`] of /etc/hosts, whose being too large to read is an error
    /// (naming the file) rather than a reason to replace the VE's own lines.
    fn hosts(&self) -> Result<Entry> {
        match self.entry("hosts", HOSTS_MAX) {
            Entry::TooLarge => Err(file_err(&self.path.join("hosts"))(io::Error::new(
                io::ErrorKind::FileTooLarge,
                format!(
                    "larger than {} MiB, more than vectl reads of the file it rewrites at each start (make it smaller or remove it)",
                    HOSTS_MAX >> 20
                ),
            ))),
            e => Ok(e),
        }
    }
}

/// Writes the VE's identity into its private layer, before its root is mounted
/// (no process of the VE runs): /etc/hostname (where the tree has one: a
/// system's init sets the host name from it), its /etc/hosts entry and, when one
/// of its networks has name servers, /etc/resolv.conf (the first such network's). Lines vectl owns in
/// /etc/hosts end in `# vectl`; the rest is the VE's own. Nothing is followed
/// through a symlink and every file is reached through an fd of its /etc (see
/// [`Etc`]): a VE whose /etc is not a plain directory is left alone, and a
/// symlink, FIFO or other non-regular file in place of one of these files is
/// replaced. An /etc/hosts (the VE's or its template's) larger than
/// [`HOSTS_MAX`] is not read: the start fails, naming the file.
pub fn write_net_files(
    upper: &Path,
    lower: &Path,
    hostname: &str,
    nics: &[Nic],
    nets: &[NetConfig],
) -> Result<()> {
    let upper_etc = Etc::open(upper)?;
    let lower_etc = Etc::open(lower)?;
    let upper_etc_missing = upper_etc.is_none() && upper.join("etc").symlink_metadata().is_err();
    // Only whether it is a regular file counts here: read nothing of it.
    let is_file = |etc: &Option<Etc>, name: &str| {
        etc.as_ref().map(|e| e.file_type(name)).map(|t| match t {
            Ok(libc::S_IFREG) => Some(true),
            Err(Errno::ENOENT) => None,
            _ => Some(false),
        })
    };
    let has_hostname = match is_file(&upper_etc, "hostname") {
        Some(Some(f)) => f,
        Some(None) => is_file(&lower_etc, "hostname") == Some(Some(true)),
        None => upper_etc_missing && is_file(&lower_etc, "hostname") == Some(Some(true)),
    };
    if nics.is_empty() && !has_hostname {
        return Ok(());
    }
    let etc = match upper_etc {
        Some(e) => e,
        None if !upper_etc_missing => return Ok(()),
        None => {
            let Some(base) = lower
                .join("etc")
                .symlink_metadata()
                .ok()
                .filter(|m| m.file_type().is_dir())
            else {
                return Ok(());
            };
            // As overlayfs would copy it up: the template's owner and mode (a
            // build publishes this directory's metadata).
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            let dir = upper.join("etc");
            fs::create_dir(&dir).map_err(file_err(&dir))?;
            std::os::unix::fs::lchown(&dir, Some(base.uid()), Some(base.gid()))
                .map_err(file_err(&dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(base.mode() & 0o7777))
                .map_err(file_err(&dir))?;
            match Etc::open(upper)? {
                Some(e) => e,
                None => return Ok(()),
            }
        }
    };
    if has_hostname {
        etc.write("hostname", &format!("{hostname}\n"))?;
    }
    let Some(first) = nics.first() else {
        return Ok(());
    };
    // The file as the VE sees it: its own layer's, else the template's.
    let old = match etc.hosts()? {
        Entry::File(t) => t,
        Entry::Missing => match lower_etc.as_ref().map(Etc::hosts).transpose()? {
            Some(Entry::File(t)) => t,
            _ => String::new(),
        },
        Entry::TooLarge | Entry::Other => String::new(),
    };
    let mut hosts: String = old
        .lines()
        .filter(|l| !l.ends_with("# vectl"))
        .map(|l| format!("{l}\n"))
        .collect();
    if !hosts
        .lines()
        .any(|l| l.split_whitespace().skip(1).any(|n| n == "localhost"))
    {
        hosts.push_str("127.0.0.1\tlocalhost # vectl\n");
    }
    let short = hostname.split('.').next().unwrap_or(hostname);
    if short == hostname {
        hosts.push_str(&format!("{}\t{hostname} # vectl\n", first.ip));
    } else {
        hosts.push_str(&format!("{}\t{hostname} {short} # vectl\n", first.ip));
    }
    etc.write("hosts", &hosts)?;
    // The name servers of the first of its networks that has some (a bridged
    // network on the LAN's DHCP has none; a nat one after it does).
    if let Some(net) = nets.iter().find(|n| !n.dns.is_empty()) {
        let mut text = format!("# written by vectl from network {}\n", net.name);
        for d in &net.dns {
            text.push_str(&format!("nameserver {d}\n"));
        }
        etc.write("resolv.conf", &text)?;
    }
    Ok(())
}

/// What vectl itself wrote into a VE's private layer `layer` (over the
/// template tree `lower`) at its starts, and nothing else changed: /etc/hostname
/// holding the VE's host name, /etc/hosts whose lines but vectl's (`# vectl`)
/// are the template's, /etc/resolv.conf as vectl writes it. Unless `dry_run`,
/// they are taken out of the layer (and vectl's lines out of an /etc/hosts the
/// VE changed too), so the template's files show through again: for a build,
/// whose layer becomes a template version, and for an upgrade, after which the
/// next start writes them anew over the new version's. Returns their paths
/// (`/etc/hosts`). Nothing is followed through a symlink, and a file too large
/// to be vectl's is left alone.
pub fn forget_vectl_files(
    layer: &Path,
    lower: &Path,
    hostname: &str,
    dry_run: bool,
) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    let Some(etc) = Etc::open(layer)? else {
        return Ok(out);
    };
    let lower_etc = Etc::open(lower)?;
    let lower_file = |name: &str| match lower_etc.as_ref().map(|e| e.entry(name, HOSTS_MAX)) {
        Some(Entry::File(t)) => t,
        _ => String::new(),
    };
    let own_name = format!("{hostname}\n");
    if matches!(etc.entry("hostname", own_name.len() as u64), Entry::File(t) if t == own_name) {
        out.push("/etc/hostname");
        if !dry_run {
            etc.remove("hostname")?;
        }
    }
    if let Entry::File(text) = etc.entry("hosts", HOSTS_MAX) {
        let own: String = text
            .lines()
            .filter(|l| !l.ends_with("# vectl"))
            .map(|l| format!("{l}\n"))
            .collect();
        if own == lower_file("hosts") {
            out.push("/etc/hosts");
            if !dry_run {
                etc.remove("hosts")?;
            }
        } else if own != text && !dry_run {
            etc.put("hosts", &own)?;
        }
    }
    // vectl's resolv.conf: a comment and a few name servers.
    if matches!(etc.entry("resolv.conf", 64 << 10), Entry::File(t) if t.starts_with("# written by vectl"))
    {
        out.push("/etc/resolv.conf");
        if !dry_run {
            etc.remove("resolv.conf")?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{self, Mode};
    use std::net::Ipv4Addr;

    fn net() -> NetConfig {
        NetConfig {
            name: "n".into(),
            id: 1,
            mode: Mode::Nat,
            subnet: "10.0.3.0/24".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 3, 1)),
            uplink: None,
            vlan: None,
            dns: vec![Ipv4Addr::new(192, 0, 2, 53)],
            bandwidth: None,
            allow_host: vec![],
            created: String::new(),
            root: None,
        }
    }

    fn nic() -> Nic {
        Nic {
            net: "n".into(),
            ip: Ipv4Addr::new(10, 0, 3, 2),
            mac: model::Mac([2, 0, 0, 0, 0, 1]),
        }
    }

    #[test]
    fn net_files_keep_the_ves_lines_and_follow_no_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower, outside) = (
            tmp.path().join("upper"),
            tmp.path().join("lower"),
            tmp.path().join("outside"),
        );
        for d in [&upper, &lower.join("etc"), &outside] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(
            lower.join("etc/hosts"),
            "127.0.0.1 localhost\n10.9.9.9 db\n",
        )
        .unwrap();
        write_net_files(&upper, &lower, "web.example.com", &[nic()], &[net()]).unwrap();
        assert_eq!(
            fs::read_to_string(upper.join("etc/hosts")).unwrap(),
            "127.0.0.1 localhost\n10.9.9.9 db\n10.0.3.2\tweb.example.com web # vectl\n"
        );
        assert!(
            fs::read_to_string(upper.join("etc/resolv.conf"))
                .unwrap()
                .contains("nameserver 192.0.2.53")
        );
        // Name servers come from the first network that has some.
        let mut bridged = net();
        bridged.name = "lan".into();
        bridged.dns.clear();
        fs::remove_file(upper.join("etc/resolv.conf")).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[bridged, net()]).unwrap();
        assert!(
            fs::read_to_string(upper.join("etc/resolv.conf"))
                .unwrap()
                .contains("nameserver 192.0.2.53")
        );
        // A symlinked file is neither read nor written through: it is replaced.
        fs::write(outside.join("secret"), "secret\n").unwrap();
        fs::remove_file(upper.join("etc/hosts")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), upper.join("etc/hosts")).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[net()]).unwrap();
        assert_eq!(
            fs::read_to_string(outside.join("secret")).unwrap(),
            "secret\n"
        );
        let hosts = fs::read_to_string(upper.join("etc/hosts")).unwrap();
        assert!(
            !hosts.contains("secret") && hosts.contains("10.0.3.2\tweb # vectl"),
            "{hosts}"
        );
        // No /etc/hostname in the tree: none is made.
        assert!(!upper.join("etc/hostname").exists());
        // An /etc that is a symlink is left alone.
        fs::remove_dir_all(upper.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, upper.join("etc")).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[net()]).unwrap();
        assert!(!outside.join("hosts").exists() && !outside.join("resolv.conf").exists());
    }

    #[test]
    fn fifos_and_huge_files_in_a_layer_neither_hang_nor_get_read() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        for d in [&upper.join("etc"), &lower.join("etc")] {
            fs::create_dir_all(d).unwrap();
        }
        let fifo = |p: &Path| {
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap()
        };
        // FIFOs where the files are, in the VE's layer and in the template: the
        // template's is not read, the layer's are replaced by regular files.
        fifo(&upper.join("etc/hosts"));
        fifo(&upper.join("etc/hostname"));
        fifo(&upper.join("etc/resolv.conf"));
        fifo(&lower.join("etc/hosts"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (u, l) = (upper.clone(), lower.clone());
        std::thread::spawn(move || {
            let _ = tx.send(
                write_net_files(&u, &l, "web", &[nic()], &[net()]).map_err(|e| e.to_string()),
            );
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("write_net_files hung on a FIFO");
        r.unwrap();
        for f in ["hosts", "resolv.conf"] {
            assert!(
                fs::symlink_metadata(upper.join("etc").join(f))
                    .unwrap()
                    .is_file(),
                "{f}"
            );
        }
        // /etc/hostname is written only where the tree has a regular one.
        assert!(
            !fs::symlink_metadata(upper.join("etc/hostname"))
                .unwrap()
                .is_file()
        );
        assert_eq!(
            fs::read_to_string(upper.join("etc/hosts")).unwrap(),
            "127.0.0.1\tlocalhost # vectl\n10.0.3.2\tweb # vectl\n"
        );
        // A huge sparse /etc/hosts is not read: one error naming the file, and
        // the file as it was.
        let huge = upper.join("etc/hosts");
        fs::remove_file(&huge).unwrap();
        let f = fs::File::create(&huge).unwrap();
        f.set_len(64 << 30).unwrap();
        let e = write_net_files(&upper, &lower, "web", &[nic()], &[net()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&huge.display().to_string()) && e.contains("larger than 8 MiB"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        assert_eq!(fs::metadata(&huge).unwrap().len(), 64 << 30);
        // Just under the cap: read, and the VE's lines kept.
        let mut text = "10.9.9.9 db\n".to_string();
        text.push_str(&"#\n".repeat(((HOSTS_MAX as usize) - text.len() - 40) / 2));
        fs::write(&huge, &text).unwrap();
        write_net_files(&upper, &lower, "web", &[nic()], &[net()]).unwrap();
        let now = fs::read_to_string(&huge).unwrap();
        assert!(now.starts_with("10.9.9.9 db\n") && now.ends_with("10.0.3.2\tweb # vectl\n"));
        // A build or upgrade leaves a huge file alone, FIFOs too.
        fs::File::create(&huge).unwrap().set_len(64 << 30).unwrap();
        fs::remove_file(upper.join("etc/resolv.conf")).unwrap();
        fifo(&upper.join("etc/resolv.conf"));
        assert!(
            forget_vectl_files(&upper, &lower, "web", false)
                .unwrap()
                .is_empty()
        );
        assert_eq!(fs::metadata(&huge).unwrap().len(), 64 << 30);
    }

    #[test]
    fn the_hostname_file_gets_the_ves_name_with_or_without_nics() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper, lower) = (tmp.path().join("upper"), tmp.path().join("lower"));
        for d in [&upper, &lower.join("etc")] {
            fs::create_dir_all(d).unwrap();
        }
        fs::write(lower.join("etc/hostname"), "localhost\n").unwrap();
        write_net_files(&upper, &lower, "web1", &[], &[]).unwrap();
        assert_eq!(
            fs::read_to_string(upper.join("etc/hostname")).unwrap(),
            "web1\n"
        );
        assert!(!upper.join("etc/hosts").exists());
        // A clone's new name replaces the old one.
        write_net_files(&upper, &lower, "web2", &[nic()], &[net()]).unwrap();
        assert_eq!(
            fs::read_to_string(upper.join("etc/hostname")).unwrap(),
            "web2\n"
        );
    }
}
