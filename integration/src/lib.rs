//! Shared fixture of vectl's end-to-end tests and benchmarks.
//!
//! A [`TestHost`] is one isolated vectl host for one test:
//! - its own state directory (`--root`, a temporary directory),
//! - VE cgroups below the test process's own cgroup (`--cgroup-parent ./NAME`, or
//!   below `$VECTL_TEST_CGROUP_BASE` where a cgroup with processes cannot delegate,
//!   as on cgroup v2),
//! - its own network namespace: the test's thread moves into a new one, so vectl and
//!   everything it starts from that thread sees only loopback,
//! - a drop guard that kills and destroys every VE, removes the cgroups, restores
//!   the thread's network namespace and deletes the state directory, pass or fail.
//!
//! Tests that need something this machine lacks call [`skip`], which prints
//! `SKIP: <test>: <reason>` and records it for the suite's summary.
// The unit-test build links the dev-dependencies, which only the suite uses.
#![cfg_attr(test, allow(unused_crate_dependencies))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use nix::sched::{CloneFlags, setns, unshare};

/// The `vectl` binary under test, found once per process:
/// - `$VECTL_BIN` if set (the VM suite sets it: no cargo in the guest),
/// - else, under `cargo test` (`$CARGO` set), the binary of this checkout built now
///   with that cargo for this executable's profile (`cargo build -p vectl --bin
///   vectl [--release]`): a test never drives a stale `vectl`,
/// - else the `vectl` beside this executable (`target/<profile>/vectl`, e.g. for
///   `target/release/vectl-bench`).
pub fn vectl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(find_vectl_bin).clone()
}

fn find_vectl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VECTL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("vectl");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut build = Command::new(&cargo);
        build
            .arg("build")
            .arg("--quiet")
            .arg("--manifest-path")
            .arg(repo_dir().join("Cargo.toml"))
            .args(["-p", "vectl", "--bin", "vectl"]);
        if dir.ends_with("release") {
            build.arg("--release");
        }
        // The binary lands where this executable's build put its own (the same
        // target directory): `dir` names it, whatever CARGO_TARGET_DIR says.
        if let Some(target) = dir.parent() {
            build.env("CARGO_TARGET_DIR", target);
        }
        let st = build
            .status()
            .unwrap_or_else(|e| panic!("cannot run {:?} to build vectl for the tests: {e}", cargo));
        assert!(
            st.success(),
            "building vectl for the tests failed ({:?} build -p vectl --bin vectl: {st}); \
             fix the build or set VECTL_BIN",
            cargo
        );
    }
    assert!(
        bin.is_file(),
        "{} is missing: build it first (cargo build --workspace --bins) or set VECTL_BIN",
        bin.display()
    );
    bin
}

/// The repository's top directory.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Records a skipped test: prints `SKIP: <test>: <reason>` and appends it to
/// `$VECTL_SKIP_LOG` (default `target/vectl-skips.log`) for the summary. A skip
/// for a known gap of the development host, the only skips a CI run of test.sh
/// accepts, starts its reason with its tag: `host gap 802.1q: ` (no 802.1Q VLANs)
/// or `host gap ext4-online-grow: ` (no online ext4 growth).
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP: {test}: {reason}");
    let log = std::env::var_os("VECTL_SKIP_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("target/vectl-skips.log"));
    if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(log) {
        // One write(2) per line: tests skip in parallel, and O_APPEND keeps whole
        // writes apart.
        let _ = f.write_all(format!("SKIP: {test}: {reason}\n").as_bytes());
    }
}

/// Whether we run as root; records a skip if not.
pub fn is_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        true
    } else {
        skip(test, "needs root");
        false
    }
}

struct Rootfs {
    dir: tempfile::TempDir,
}

static ROOTFS: OnceLock<Result<Rootfs, String>> = OnceLock::new();

extern "C" fn remove_rootfs() {
    if let Some(Ok(r)) = ROOTFS.get() {
        let _ = fs::remove_dir_all(r.dir.path());
    }
}

/// A busybox root file system (built once per test process with
/// `integration/rootfs/busybox-rootfs.sh`, removed at exit). `Err` says why not.
pub fn busybox_rootfs() -> Result<&'static Path, String> {
    let r = ROOTFS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("vectl-bb-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let root = dir.path().join("rootfs");
        let out = Command::new(repo_dir().join("integration/rootfs/busybox-rootfs.sh"))
            .arg(&root)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        // SAFETY: registering a plain extern "C" function with atexit.
        unsafe {
            libc::atexit(remove_rootfs);
        }
        Ok(Rootfs { dir })
    });
    match r {
        Ok(r) => Ok(Box::leak(r.dir.path().join("rootfs").into_boxed_path())),
        Err(e) => Err(e.clone()),
    }
}

/// A copy of the busybox root file system at `dest` (which must not exist), to
/// change and import as another template version.
pub fn copy_busybox_rootfs(dest: &Path) -> Result<(), String> {
    let st = Command::new("cp")
        .arg("-a")
        .arg(busybox_rootfs()?)
        .arg(dest)
        .status()
        .map_err(|e| format!("cp: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("cp -a to {} failed", dest.display()))
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for a test resource: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// One isolated vectl host (see the module documentation).
pub struct TestHost {
    pub name: String,
    root: tempfile::TempDir,
    cgroup_dirs: Vec<PathBuf>,
    /// The thread's network namespace before this host's (restored on drop).
    old_netns: Option<OwnedFd>,
    /// This host's network namespace (kept alive, and entered to clean up).
    own_netns: Option<OwnedFd>,
    /// The registry of roots its vectl uses (`VECTL_REGISTRY`): the host's own,
    /// or shared with the host it was made beside ([`TestHost::beside`]).
    registry: Arc<tempfile::TempDir>,
    /// How its root names what it makes on the host.
    names: netns::model::Names,
    /// Its vectl enters its network namespace itself (a host made
    /// [`TestHost::elsewhere`]); otherwise it runs in the thread's.
    enter_own_netns: bool,
}

/// What a finished vectl run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    /// A process killed by a signal gets code -1 and says which on stderr.
    fn from(o: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        let mut stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        if let Some(sig) = o.status.signal() {
            let name = nix::sys::signal::Signal::try_from(sig)
                .map_or_else(|_| sig.to_string(), |s| s.as_str().to_string());
            stderr.push_str(&format!("(killed by {name})\n"));
        }
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr,
        }
    }
}

impl TestHost {
    /// A fresh host with the busybox template imported as `bb`. `None` (after
    /// printing SKIP) when the machine cannot run VEs.
    /// Its pool is the `dir` backend (fast, nothing mounted); the btrfs pool has
    /// its own fixture, [`TestHost::with_btrfs`].
    pub fn new(test: &str) -> Option<TestHost> {
        TestHost::with_template(TestHost::bare(test)?, test)
    }

    /// A fresh host on a btrfs pool: a sparse image of `pool_size` (`1G`) in the
    /// test's root, loop-mounted at ROOT/pool and unmounted again on drop, with the
    /// busybox template as `bb`. `None` (after SKIP) without mkfs.btrfs or loop
    /// devices.
    pub fn with_btrfs(test: &str, pool_size: &str) -> Option<TestHost> {
        if !is_root(test) {
            return None;
        }
        if let Some(why) = btrfs_missing() {
            skip(test, &why);
            return None;
        }
        let h = TestHost::bare_with(test, &["--pool-size", pool_size])?;
        TestHost::with_template(h, test)
    }

    fn with_template(h: TestHost, test: &str) -> Option<TestHost> {
        if let Err(e) = h.import_busybox() {
            skip(test, &format!("no busybox template: {e}"));
            return None;
        }
        Some(h)
    }

    /// Imports the busybox template as `bb`; `Err` says why there is none.
    pub fn import_busybox(&self) -> Result<(), String> {
        let rootfs = busybox_rootfs()?;
        self.ok(&[
            "template",
            "import",
            "bb",
            "--from-dir",
            rootfs.to_str().unwrap(),
        ]);
        Ok(())
    }

    /// A fresh, initialised host without templates (`dir` pool).
    pub fn bare(test: &str) -> Option<TestHost> {
        TestHost::bare_with(test, &["--backend", "dir"])
    }

    /// A fresh host initialised with `init_args` beside its cgroup parent.
    pub fn bare_with(test: &str, init_args: &[&str]) -> Option<TestHost> {
        TestHost::make(test, init_args, None)
    }

    /// A second root in this host's network namespace and registry, with the
    /// busybox template as `bb`: two roots on one host. Drop it before `self`.
    pub fn beside(&self, test: &str) -> Option<TestHost> {
        TestHost::with_template(
            TestHost::make(test, &["--backend", "dir"], Some(self))?,
            test,
        )
    }

    /// A second root in this host's network namespace and registry,
    /// initialised with `init_args`, without templates. Drop it before `self`.
    pub fn beside_bare_with(&self, test: &str, init_args: &[&str]) -> Option<TestHost> {
        TestHost::make(test, init_args, Some(self))
    }

    /// Another machine: a root with a network namespace and a registry of
    /// its own, initialised with `init_args`, without templates. Its vectl
    /// runs in its namespace; the thread stays in `self`'s. Drop it before
    /// `self`.
    pub fn elsewhere(&self, test: &str, init_args: &[&str]) -> Option<TestHost> {
        let mut h = TestHost::make(test, init_args, None)?;
        if let Some(back) = h.old_netns.take() {
            setns(back, CloneFlags::CLONE_NEWNET).expect("back to the first host's netns");
        }
        h.enter_own_netns = true;
        Some(h)
    }

    fn make(test: &str, init_args: &[&str], beside: Option<&TestHost>) -> Option<TestHost> {
        if !is_root(test) {
            return None;
        }
        let name = unique("vt");
        let here = || {
            fs::File::open("/proc/thread-self/ns/net")
                .ok()
                .map(OwnedFd::from)
        };
        let (old_netns, registry) = match beside {
            Some(other) => (None, other.registry.clone()),
            None => {
                let old = here();
                if let Err(e) = unshare(CloneFlags::CLONE_NEWNET) {
                    skip(test, &format!("cannot create a network namespace: {e}"));
                    return None;
                }
                let registry = tempfile::Builder::new()
                    .prefix("vectl-registry-")
                    .tempdir()
                    .expect("tempdir");
                (old, Arc::new(registry))
            }
        };
        let own_netns = here();
        let root = tempfile::Builder::new()
            .prefix("vectl-test-")
            .tempdir()
            .expect("tempdir");
        let parent = match std::env::var("VECTL_TEST_CGROUP_BASE") {
            Ok(base) => format!("{}/{name}", base.trim_end_matches('/')),
            Err(_) => format!("./{name}"),
        };
        let mut h = TestHost {
            name,
            root,
            cgroup_dirs: Vec::new(),
            old_netns,
            own_netns,
            registry,
            names: netns::model::Names::default(),
            enter_own_netns: false,
        };
        let mut init = vec!["init", "--cgroup-parent", &parent];
        init.extend_from_slice(init_args);
        h.ok(&init);
        let info: serde_json::Value =
            serde_json::from_str(&h.ok(&["--json", "host", "info"])).expect("host info json");
        h.cgroup_dirs = info["cgroup_paths"]
            .as_array()
            .expect("cgroup_paths")
            .iter()
            .map(|p| PathBuf::from(p.as_str().unwrap()))
            .collect();
        h.names = netns::model::Names::new(info["identity"].as_str());
        Some(h)
    }

    /// How this host's root names what it makes on the host (from its
    /// identity): its nft tables, bridges, ports and IFBs.
    pub fn names(&self) -> &netns::model::Names {
        &self.names
    }

    /// The registry of roots its vectl uses.
    pub fn registry(&self) -> &Path {
        self.registry.path()
    }

    /// Removes the state directory and (unless a host beside it still uses it)
    /// the registry: what drop does with them, for a host that is never dropped
    /// (the benchmarks', after [`TestHost::release`]).
    pub fn remove_files(&self) {
        let _ = fs::remove_dir_all(self.root.path());
        if Arc::strong_count(&self.registry) == 1 {
            let _ = fs::remove_dir_all(self.registry.path());
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The parent cgroup directories of this host's VEs, one per hierarchy.
    pub fn cgroup_parents(&self) -> &[PathBuf] {
        &self.cgroup_dirs
    }

    /// A `vectl --root ROOT` command to add arguments to.
    /// The network namespace the test started in (the host's), as a path
    /// another process can open, while this host lives.
    pub fn host_netns(&self) -> Option<String> {
        use std::os::fd::AsRawFd;
        self.old_netns
            .as_ref()
            .map(|fd| format!("/proc/{}/fd/{}", std::process::id(), fd.as_raw_fd()))
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(vectl_bin());
        c.arg("--root").arg(self.root.path());
        c.env_remove("VECTL_ROOT").env_remove("VECTL_FAILPOINT");
        c.env("VECTL_REGISTRY", self.registry.path());
        if self.enter_own_netns {
            self.in_netns(&mut c);
        }
        c
    }

    /// Makes `cmd` run in this host's network namespace (whatever the
    /// calling thread's is).
    pub fn in_netns(&self, cmd: &mut Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let Some(own) = &self.own_netns else {
            return;
        };
        let fd = own.as_raw_fd();
        let enter = move || {
            // SAFETY: setns(2) on a descriptor this host keeps open for its
            // whole life; it touches no memory.
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook only calls setns(2), async-signal-safe, between
        // fork and exec.
        unsafe {
            cmd.pre_exec(enter);
        }
    }

    /// This host's network namespace, for a thread to enter (`setns`).
    pub fn netns(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.own_netns.as_ref().map(|f| f.as_fd())
    }

    /// Runs vectl with `args` and returns what happened.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run vectl")
            .into()
    }

    /// Runs vectl, asserts success, returns stdout.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.code == 0,
            "vectl {args:?} failed with {}:\n{}{}",
            r.code,
            r.stderr,
            r.stdout
        );
        r.stdout
    }

    /// Runs vectl, asserts it fails with exit 1 and exactly one line on stderr
    /// starting with `vectl: `, returns that line.
    #[track_caller]
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 1,
            "vectl {args:?}: expected exit 1, got {}: {}{}",
            r.code, r.stderr, r.stdout
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "vectl {args:?}: expected one line on stderr, got {:?}",
            r.stderr
        );
        assert!(lines[0].starts_with("vectl: "), "{:?}", lines[0]);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        lines[0].to_string()
    }

    /// Runs vectl, asserts it fails as bad usage (exit 2: a malformed option
    /// value, nothing to do) with exactly one line on stderr; returns the line.
    #[track_caller]
    pub fn fails_usage(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 2,
            "vectl {args:?}: expected exit 2, got {}: {}{}",
            r.code, r.stderr, r.stdout
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "vectl {args:?}: expected one line on stderr, got {:?}",
            r.stderr
        );
        assert!(lines[0].starts_with("vectl: "), "{:?}", lines[0]);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        lines[0].to_string()
    }

    /// `vectl --json ARGS`, parsed.
    #[track_caller]
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    /// Runs a command in a VE and returns (exit code, stdout).
    pub fn exec(&self, ve: &str, cmd: &[&str]) -> Run {
        let mut args = vec!["exec", ve, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// Creates and starts a VE from `bb` with extra create arguments.
    #[track_caller]
    pub fn start_ve(&self, ve: &str, create_args: &[&str]) {
        let mut args = vec!["create", ve, "--template", "bb"];
        args.extend_from_slice(create_args);
        self.ok(&args);
        self.ok(&["start", ve]);
    }

    /// The VE's limits cgroup directory in the hierarchy holding `knob_dir_hint`
    /// (a controller name such as "memory"; on v2 there is one directory).
    pub fn cgroup_dir(&self, controller: &str, ve: &str) -> PathBuf {
        let parent = self
            .cgroup_dirs
            .iter()
            .find(|p| {
                p.components().any(|c| {
                    c.as_os_str()
                        .to_str()
                        .is_some_and(|s| s.split(',').any(|x| x == controller))
                })
            })
            .or_else(|| self.cgroup_dirs.first())
            .expect("a cgroup parent");
        parent.join(ve)
    }

    /// The pid of a running VE's init.
    pub fn init_pid(&self, ve: &str) -> i32 {
        self.json(&["show", ve])["pid"].as_i64().expect("pid") as i32
    }

    /// Whether the running VE's init is in a user namespace of its own (the
    /// kernel's view, not the config's).
    pub fn in_own_userns(&self, ve: &str) -> bool {
        let ns = |p: String| fs::read_link(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        ns(format!("/proc/{}/ns/user", self.init_pid(ve))) != ns("/proc/self/ns/user".into())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.release();
        if let Some(fd) = self.old_netns.take() {
            let _ = setns(fd, CloneFlags::CLONE_NEWNET);
        }
    }
}

impl TestHost {
    /// Destroys every VE of this host, empties and removes its cgroups and
    /// unmounts its pool: what drop does, for a program whose panics abort (the
    /// benchmark calls it from its panic hook).
    pub fn release(&self) {
        // In the host's own network namespace (a host made beside another may
        // be dropped after it, which took the thread back out).
        let back = match &self.own_netns {
            Some(own) if !same_netns(own) => {
                let back = fs::File::open("/proc/thread-self/ns/net")
                    .ok()
                    .map(OwnedFd::from);
                let _ = setns(own, CloneFlags::CLONE_NEWNET);
                back
            }
            _ => None,
        };
        self.release_here();
        if let Some(fd) = back {
            let _ = setns(fd, CloneFlags::CLONE_NEWNET);
        }
    }

    fn release_here(&self) {
        // Every VE this host knows, killed and destroyed.
        if let Ok(out) = self.command().args(["--json", "list"]).output()
            && let Ok(list) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        {
            for ve in list.as_array().into_iter().flatten() {
                if let Some(name) = ve["name"].as_str() {
                    let _ = self.command().args(["destroy", "--force", name]).output();
                }
            }
        }
        // Whatever is left in our cgroups (a test that broke vectl's state).
        for dir in &self.cgroup_dirs {
            kill_cgroup_tree(dir);
        }
        for dir in &self.cgroup_dirs {
            remove_cgroup_tree(dir);
        }
        // A btrfs or xfs pool vectl mounted: unmounted (its loop device clears
        // itself).
        let pool = self.root.path().join("pool");
        if nix::sys::statfs::statfs(&pool).is_ok_and(|s| {
            let t = s.filesystem_type();
            t == nix::sys::statfs::BTRFS_SUPER_MAGIC || t == nix::sys::statfs::XFS_SUPER_MAGIC
        }) {
            let _ = nix::mount::umount2(&pool, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Whether the thread is in the network namespace `ns`.
fn same_netns(ns: &OwnedFd) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(here) = fs::metadata("/proc/thread-self/ns/net") else {
        return false;
    };
    nix::sys::stat::fstat(ns).is_ok_and(|st| st.st_ino == here.ino() && st.st_dev == here.dev())
}

/// The benchmark programs' fixture: a host on a loop-backed btrfs pool of
/// `pool_size` (the `dir` pool with `dir`, or where btrfs is missing), kept for
/// the whole run. Release builds abort on panic, so no drop would clean up: a
/// panic hook releases the host and removes its files. `None` (after SKIP) when
/// this machine cannot run VEs.
pub fn bench_host(program: &str, pool_size: &str, dir: bool) -> Option<&'static TestHost> {
    let host = if dir || btrfs_missing().is_some() {
        TestHost::new(program)
    } else {
        TestHost::with_btrfs(program, pool_size)
    }?;
    let h: &'static TestHost = Box::leak(Box::new(host));
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        h.release();
        h.remove_files();
    }));
    Some(h)
}

/// The number after option `name` on the command line, or `default`.
pub fn cli_number(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of `v` (sorting it); NaN when empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Why btrfs pools cannot be tested here (`None`: they can).
pub fn btrfs_missing() -> Option<String> {
    let mkfs = [
        "/usr/sbin/mkfs.btrfs",
        "/sbin/mkfs.btrfs",
        "/usr/bin/mkfs.btrfs",
    ];
    if !mkfs.iter().any(|p| Path::new(p).exists()) {
        return Some("no mkfs.btrfs (apt-get install btrfs-progs)".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some("no /dev/loop-control (loop devices)".into());
    }
    let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.trim_end().ends_with("btrfs")) {
        // Loaded on demand by the first mount; only say so if it cannot be.
        let _ = Command::new("modprobe").arg("btrfs").output();
        let fs = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !fs.lines().any(|l| l.trim_end().ends_with("btrfs")) {
            return Some("the kernel has no btrfs".into());
        }
    }
    None
}

fn kill_cgroup_tree(dir: &Path) {
    // Frozen tasks cannot die: thaw the tree first.
    thaw_tree(dir);
    for _ in 0..100 {
        let pids = procs_below(dir);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn thaw_tree(dir: &Path) {
    let _ = fs::write(dir.join("freezer.state"), "THAWED");
    let _ = fs::write(dir.join("cgroup.freeze"), "0");
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                thaw_tree(&e.path());
            }
        }
    }
}

/// All pids in a cgroup directory and below.
pub fn procs_below(dir: &Path) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(s) = fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(procs_below(&e.path()));
            }
        }
    }
    out
}

fn remove_cgroup_tree(dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

/// A second network namespace playing the LAN (or the internet) for network
/// tests: a holder process keeps it alive, a veth pair joins it to the calling
/// thread's namespace (the test's host). Everything in it runs through nsenter.
/// Dropping it kills its servers and the holder; the namespace and the pair go.
pub struct Lan {
    holder: Child,
    servers: std::sync::Mutex<Vec<Child>>,
    /// The host side of the veth pair.
    pub host_if: String,
}

impl Lan {
    /// Makes the LAN: `host_if` on the host side (with `host_cidr` if given),
    /// `lan0` inside with `lan_cidr` (and the loopback up).
    pub fn new(host_if: &str, host_cidr: Option<&str>, lan_cidr: &str) -> Result<Lan, String> {
        let mut holder = Command::new("unshare")
            .args(["--net", "sh", "-c", "echo ready; read _"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("unshare: {e}"))?;
        let mut line = String::new();
        if let Some(out) = holder.stdout.take() {
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line);
        }
        let lan = Lan {
            holder,
            servers: std::sync::Mutex::new(Vec::new()),
            host_if: host_if.to_string(),
        };
        if line.trim() != "ready" {
            return Err("the LAN namespace did not start".into());
        }
        let pid = lan.holder.id().to_string();
        sh(&[
            "ip", "link", "add", host_if, "type", "veth", "peer", "name", "lan0", "netns", &pid,
        ])?;
        if let Some(c) = host_cidr {
            sh(&["ip", "addr", "add", c, "dev", host_if])?;
        }
        sh(&["ip", "link", "set", host_if, "up"])?;
        lan.ok(&["ip", "addr", "add", lan_cidr, "dev", "lan0"])?;
        lan.ok(&["ip", "link", "set", "lan0", "up"])?;
        lan.ok(&["ip", "link", "set", "lo", "up"])?;
        Ok(lan)
    }

    fn nsenter(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-n")
            .arg("--")
            .args(cmd);
        c
    }

    /// Runs a command in the LAN; `Err` with its output if it fails.
    pub fn ok(&self, cmd: &[&str]) -> Result<String, String> {
        let out = self
            .nsenter(cmd)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{cmd:?} in the LAN: {}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    /// Starts a long-running command in the LAN (killed on drop).
    pub fn serve(&self, cmd: &[&str]) -> Result<(), String> {
        let child = self
            .nsenter(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.servers
            .lock()
            .map_err(|_| "poisoned".to_string())?
            .push(child);
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Ok(mut servers) = self.servers.lock() {
            for s in servers.iter_mut() {
                let _ = s.kill();
                let _ = s.wait();
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs a command in the calling thread's namespaces; `Err` with its output if
/// it fails.
pub fn sh(cmd: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", cmd[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// Mbit/s of a TCP transfer to a listener on `ip`: `send` gets the port and
/// sends (then closes); the rate is taken from the first byte to EOF.
pub fn receive_rate(ip: &str, send: impl FnOnce(u16) + Send) -> f64 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind(format!("{ip}:0")).expect("listen");
    let port = listener.local_addr().expect("port").port();
    std::thread::scope(|s| {
        let rx = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0usize;
            let mut start = None;
            loop {
                let n = conn.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                start.get_or_insert_with(std::time::Instant::now);
                total += n;
            }
            let secs = start.map_or(1.0, |s| s.elapsed().as_secs_f64());
            total as f64 * 8.0 / secs / 1e6
        });
        send(port);
        rx.join().expect("receiver")
    })
}

/// Mbit/s of `mib` MiB sent over TCP to `addr`, where `serve` (run on a thread
/// of its own) listens and reads to EOF. Timed until `serve` returns: the
/// connection's end is no sign, as a server may close its side early (busybox nc
/// does when its stdin ends).
pub fn send_rate(addr: &str, mib: u32, serve: impl FnOnce() + Send) -> f64 {
    use std::io::{Read, Write};
    std::thread::scope(|s| {
        let server = s.spawn(serve);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut conn = loop {
            match std::net::TcpStream::connect(addr) {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("nothing listens on {addr}: {e}")
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        let chunk = vec![0u8; 1 << 16];
        let start = std::time::Instant::now();
        for _ in 0..mib * 16 {
            conn.write_all(&chunk).expect("send");
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        server.join().expect("server");
        let secs = start.elapsed().as_secs_f64();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        f64::from(mib) * 8.0 * 1.048_576 / secs
    })
}

/// The shell command that sends `mib` MiB of zeros to `ip:port` with busybox nc.
pub fn nc_send(ip: &str, port: u16, mib: u32) -> String {
    format!(
        "dd if=/dev/zero bs=65536 count={} 2>/dev/null | busybox nc {ip} {port}",
        mib * 16
    )
}

/// A static file server over HTTP on 127.0.0.1 of the calling thread's network
/// namespace (a test's own), for tests that fetch from a "remote" archive without
/// leaving the machine. Stops when dropped.
pub struct FileServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileServer {
    /// Serves the files below `dir` (GET and HEAD; 404 for anything else).
    pub fn new(dir: &Path) -> Result<FileServer, String> {
        sh(&["ip", "link", "set", "lo", "up"])?;
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (dir, flag) = (dir.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let dir = dir.clone();
                    std::thread::spawn(move || serve_one(&dir, conn));
                }
            }
        });
        Ok(FileServer {
            port,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/path`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the requests of one connection (keep-alive, as wget uses it).
fn serve_one(dir: &Path, conn: std::net::TcpStream) {
    use std::io::{BufRead, BufReader};
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(conn);
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut header = String::new();
        while reader.read_line(&mut header).unwrap_or(0) > 2 {
            header.clear();
        }
        let mut parts = request.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = percent_decode(target.split('?').next().unwrap_or(""));
        let file = (!path.split('/').any(|c| c == ".."))
            .then(|| dir.join(path.trim_start_matches('/')))
            .filter(|p| p.is_file())
            .and_then(|p| fs::read(p).ok());
        let ok = match (&file, method) {
            (Some(body), "GET" | "HEAD") => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    body.len()
                );
                out.write_all(head.as_bytes()).is_ok()
                    && (method == "HEAD" || out.write_all(body).is_ok())
            }
            _ => out
                .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                .is_ok(),
        };
        if !ok {
            return;
        }
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts (lazily, deepest first) every mount of this process's mount
/// namespace at or below `dir`: what podman's or containerd's storage left
/// in a test's directory.
pub fn unmount_below(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mine: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    mine.reverse();
    for m in mine {
        let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Removes the (empty) cgroup `rel` (below each hierarchy's root) and every
/// cgroup below it, in every hierarchy: cgroups an engine made under a
/// parent a test or benchmark gave it.
pub fn remove_cgroup_everywhere(rel: &str) {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        return;
    }
    let mut bases = vec![PathBuf::from("/sys/fs/cgroup")];
    if let Ok(rd) = fs::read_dir("/sys/fs/cgroup") {
        bases.extend(rd.flatten().map(|e| e.path()));
    }
    for b in bases {
        let top = b.join(rel);
        if top.is_dir() {
            remove_cgroup_tree(&top);
        }
    }
}

/// Sets `dir` up for a podman of its own: `containers.conf` (cgroupfs, file
/// events, and ulimits the sandbox's hard RLIMIT_NOFILE allows) and
/// `DIR/vectl-oci`, a runtime script that runs this checkout's vectl as
/// `vectl-oci --root DIR/oci` (podman 4.3 passes `--runtime-flag`s to `create`
/// but not to `delete`). Returns the script's path.
pub fn podman_dir_setup(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::write(
        dir.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n\
         [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
    )
    .expect("containers.conf");
    let runtime = dir.join("vectl-oci");
    fs::write(
        &runtime,
        format!(
            "#!/bin/bash\nexec -a vectl-oci {} --root {} \"$@\"\n",
            vectl_bin().display(),
            dir.join("oci").display()
        ),
    )
    .expect("runtime script");
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o755)).expect("chmod");
    runtime
}

/// A `podman` command whose storage, run, temporary and network directories
/// are in `dir` (set up by [`podman_dir_setup`]).
pub fn podman_command(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", dir.join("containers.conf"))
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .arg("--tmpdir")
        .arg(dir.join("tmp"))
        .arg("--network-config-dir")
        .arg(dir.join("net"));
    c
}
