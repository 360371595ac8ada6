//! Kernel features the development host lacks and users' hosts (and the VM of
//! `integration/vm/run`) have, checked once so later work can rely on them:
//! - an 802.1Q VLAN interface works (CONFIG_VLAN_8021Q),
//! - an ext4 file system on a loop device grows online (needs CAP_SYS_RESOURCE).
//!
//! Where a feature is absent the test prints `SKIP: <reason>` and returns. Each
//! test works in a thread of its own with its own network or mount namespace, and
//! drop guards kill, unmount and detach what it made, pass or fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use integration::{is_root, skip};
use nix::mount::{MntFlags, MsFlags};
use nix::sched::{CloneFlags, unshare};

/// CAP_SYS_RESOURCE's bit in the capability sets.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether the calling thread has `cap` in its effective set.
fn has_cap(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|eff| eff >> cap & 1 == 1)
}

/// The path of a program in PATH or the sbin directories, if installed.
fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs a command; `Ok(stdout)` on success, `Err(what failed)` otherwise.
fn run(prog: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} {args:?}: {e}", prog.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} {args:?} failed ({}): {}{}",
            prog.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

/// Runs a command that must succeed.
#[track_caller]
fn must(prog: &Path, args: &[&str]) -> String {
    run(prog, args).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `f` in a new thread (so namespaces it unshares die with the thread) and
/// passes its panic on.
fn in_own_thread(f: impl FnOnce() + Send + 'static) {
    if let Err(p) = std::thread::spawn(f).join() {
        std::panic::resume_unwind(p);
    }
}

/// A child process killed and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_8021q_vlan_interface_carries_tagged_traffic() {
    const T: &str = "an_8021q_vlan_interface_carries_tagged_traffic";
    if !is_root(T) {
        return;
    }
    let (Some(ip), Some(unshare_bin), Some(nsenter), Some(busybox)) = (
        tool("ip"),
        tool("unshare"),
        tool("nsenter"),
        tool("busybox"),
    ) else {
        skip(
            T,
            "needs ip (iproute2), unshare and nsenter (util-linux) and busybox",
        );
        return;
    };
    in_own_thread(move || {
        // This thread's own network namespace: the host's interfaces are never
        // touched, and everything made here goes away with it.
        if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
            skip(T, &format!("cannot create a network namespace: {e}"));
            return;
        }
        must(
            &ip,
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
        );
        if let Err(e) = run(
            &ip,
            &[
                "link", "add", "link", "v0", "name", "v0.10", "type", "vlan", "id", "10",
            ],
        ) {
            if e.contains("Unknown device type") || e.contains("not supported") {
                skip(
                    T,
                    &format!(
                        "host gap 802.1q: no 802.1Q VLAN support in this kernel (CONFIG_VLAN_8021Q off, module 8021q not loadable): {e}"
                    ),
                );
                return;
            }
            panic!("{e}");
        }
        let details = must(&ip, &["-d", "link", "show", "v0.10"]);
        assert!(
            details.contains("vlan protocol 802.1Q id 10"),
            "v0.10 is not an 802.1Q VLAN with id 10:\n{details}"
        );

        // The peer end in a second namespace, held by a sleeping process, with its
        // own VLAN 10: a ping between the two VLAN interfaces crosses the veth
        // tagged. Addresses from TEST-NET-1, inside these namespaces only.
        let peer = Killed(
            Command::new(&unshare_bin)
                .args(["--net", "--", "sleep", "600"])
                .stdin(Stdio::null())
                .spawn()
                .expect("unshare --net sleep"),
        );
        let pid = peer.0.id().to_string();
        let own_ns = fs::read_link("/proc/thread-self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while fs::read_link(format!("/proc/{pid}/ns/net")).ok().as_ref() == Some(&own_ns) {
            assert!(Instant::now() < deadline, "the peer never left our netns");
            std::thread::sleep(Duration::from_millis(10));
        }
        must(&ip, &["link", "set", "v1", "netns", &pid]);
        let in_peer = |args: &[&str]| {
            let mut all = vec!["-t", pid.as_str(), "-n", "--"];
            all.extend_from_slice(args);
            must(&nsenter, &all)
        };
        let ip_s = ip.to_str().unwrap();
        in_peer(&[
            ip_s, "link", "add", "link", "v1", "name", "v1.10", "type", "vlan", "id", "10",
        ]);
        in_peer(&[ip_s, "addr", "add", "192.0.2.2/24", "dev", "v1.10"]);
        in_peer(&[ip_s, "link", "set", "v1", "up"]);
        in_peer(&[ip_s, "link", "set", "v1.10", "up"]);
        must(&ip, &["addr", "add", "192.0.2.1/24", "dev", "v0.10"]);
        must(&ip, &["link", "set", "v0", "up"]);
        must(&ip, &["link", "set", "v0.10", "up"]);
        must(&busybox, &["ping", "-c", "1", "-W", "10", "192.0.2.2"]);
        // Nothing untagged carries it: v0 itself has no address.
        let v0 = must(&ip, &["-o", "addr", "show", "dev", "v0"]);
        assert!(!v0.contains("192.0.2."), "{v0}");
    });
}

/// A loop device detached on drop.
struct LoopDev {
    losetup: PathBuf,
    dev: String,
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = run(&self.losetup, &["-d", &self.dev]);
    }
}

/// A mount point unmounted on drop (lazily if it is busy).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        if nix::mount::umount(&self.0).is_err() {
            let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
}

/// Size of the file system mounted at `dir`, in bytes.
fn fs_size(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).expect("statvfs");
    st.blocks() * st.fragment_size()
}

#[test]
fn an_ext4_file_system_on_a_loop_device_grows_online() {
    const T: &str = "an_ext4_file_system_on_a_loop_device_grows_online";
    const MIB: u64 = 1 << 20;
    if !is_root(T) {
        return;
    }
    if !has_cap(CAP_SYS_RESOURCE) {
        skip(
            T,
            "host gap ext4-online-grow: no CAP_SYS_RESOURCE: growing a mounted ext4 (EXT4_IOC_RESIZE_FS) needs it, and this host withholds it",
        );
        return;
    }
    let (Some(mkfs), Some(resize2fs), Some(losetup)) =
        (tool("mkfs.ext4"), tool("resize2fs"), tool("losetup"))
    else {
        skip(
            T,
            "needs mkfs.ext4 and resize2fs (e2fsprogs) and losetup (util-linux)",
        );
        return;
    };
    in_own_thread(move || {
        // A mount namespace of this thread's own: the mount can never outlive it.
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make / private");

        let dir = tempfile::Builder::new()
            .prefix("vectl-ext4-")
            .tempdir()
            .expect("tempdir");
        let img = dir.path().join("fs.img");
        let f = fs::File::create(&img).unwrap();
        f.set_len(64 * MIB).unwrap();
        must(&mkfs, &["-q", "-F", img.to_str().unwrap()]);
        let dev = must(&losetup, &["--find", "--show", img.to_str().unwrap()])
            .trim()
            .to_string();
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        let lo = LoopDev {
            losetup: losetup.clone(),
            dev,
        };
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some(lo.dev.as_str()),
            &mnt,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mount {} on {}: {e}", lo.dev, mnt.display()));
        let mounted = Mounted(mnt.clone());
        fs::write(mnt.join("before"), b"kept across the resize").unwrap();
        let before = fs_size(&mnt);

        // Grow the backing file, tell the loop device, grow the mounted file system.
        f.set_len(128 * MIB).unwrap();
        drop(f);
        must(&losetup, &["--set-capacity", &lo.dev]);
        must(&resize2fs, &[&lo.dev]);

        let after = fs_size(&mnt);
        assert!(
            after >= before + 56 * MIB,
            "ext4 did not grow online: {before} -> {after} bytes"
        );
        assert_eq!(
            fs::read(mnt.join("before")).unwrap(),
            b"kept across the resize"
        );
        fs::write(mnt.join("after"), vec![7u8; (80 * MIB) as usize])
            .expect("write more than the old size into the grown file system");
        drop(mounted);
        drop(lo);
    });
}
