//! What of the host a VE reaches, on the real kernel: nothing bound to the host's
//! loopback (the CVE-2020-8558 class: nat bridges have route_localnet on, so that
//! published ports answer on 127.0.0.1), and of the services on the host's own
//! addresses only what its network opens with `--allow-host` (besides ping and
//! replies); published ports and NAT keep working. Also: hostile /etc files in a
//! VE's layer do not hang or swell `start`.
//!
//! Every test is its own host (a network namespace of its own, TestHost); the
//! servers are threads of the test, bound in that namespace; the LAN is a second
//! namespace (`Lan`). Addresses are documentation and private ranges there only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration::{Lan, TestHost, sh};

/// A minimal HTTP server in a thread of the test (so in the test's network
/// namespace), answering every request with `body`. Stops when dropped.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on `addr` (`127.0.0.1:0`, `10.200.0.1:0`, `0.0.0.0:0`...).
    fn new(addr: &str, body: &str) -> Server {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, body) = (stop.clone(), body.to_string());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = write!(
                            conn,
                            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The address of a VE's first NIC.
fn ip_of(h: &TestHost, ve: &str) -> String {
    h.json(&["show", ve])["nics"][0]["ip"]
        .as_str()
        .expect("an address")
        .to_string()
}

/// HTTP GET from inside a VE, with a short timeout (busybox wget's own `-T`
/// crashes on a failed connect here).
fn http_from(h: &TestHost, ve: &str, addr: &str) -> Result<String, String> {
    let url = format!("http://{addr}/");
    let r = h.exec(ve, &["timeout", "5", "wget", "-q", "-O", "-", &url]);
    if r.code == 0 {
        Ok(r.stdout)
    } else {
        Err(format!("exit {}: {}", r.code, r.stderr.trim()))
    }
}

/// Asserts that a VE's HTTP GET of `addr` failed for want of a connection (not
/// because wget or exec broke): refused, unreachable, or timed out.
#[track_caller]
fn assert_blocked(h: &TestHost, ve: &str, addr: &str, what: &str) {
    match http_from(h, ve, addr) {
        Ok(body) => panic!("{what}: {ve} got {body:?} from {addr}"),
        Err(e) => assert!(
            // busybox timeout exits 143 (its child's SIGTERM), coreutils' 124.
            e.starts_with("exit 143")
                || e.starts_with("exit 124")
                || e.contains("can't connect to remote host"),
            "{what}: {ve} -> {addr} failed otherwise: {e}"
        ),
    }
}

/// HTTP GET from the host's namespace (the test thread's).
fn http(addr: &str) -> Result<String, String> {
    sh(&["curl", "-sS", "-m", "3", &format!("http://{addr}/")])
}

/// Waits until a VE's httpd answers from the host.
fn wait_http(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http(addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("{addr} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

fn ping_from(h: &TestHost, ve: &str, addr: &str) -> bool {
    h.exec(ve, &["ping", "-c", "1", "-W", "2", addr]).code == 0
}

/// What an attacker with root in a VE does (CVE-2020-8558): sends to 127.0.0.0/8
/// through its gateway, and accepts the answers from 127.0.0.1 (the VE's own
/// loopback address goes, else its kernel takes them for its own).
fn route_loopback_via(h: &TestHost, ve: &str, gw: &str) {
    let script = format!(
        "ip addr del 127.0.0.1/8 dev lo && ip route replace 127.0.0.0/8 via {gw} dev eth0 && echo 1 > /proc/sys/net/ipv4/conf/eth0/route_localnet && ip route get 127.0.0.1"
    );
    let r = h.exec(ve, &["sh", "-c", &script]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&format!("via {gw}")), "{}", r.stdout);
}

/// Makes vectl write its whole ruleset again (a network made and removed).
fn reapply_firewall(h: &TestHost) {
    h.ok(&[
        "net",
        "create",
        "tmp",
        "--mode",
        "host-only",
        "--subnet",
        "10.79.0.0/24",
    ]);
    h.ok(&["net", "rm", "tmp"]);
}

fn nft(script: &str) {
    sh(&["nft", script]).unwrap();
}

#[test]
fn a_ve_cannot_reach_services_bound_to_the_hosts_loopback() {
    let test = "host_loopback";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    sh(&["ip", "link", "set", "lo", "up"]).unwrap();
    let secret = Server::new("127.0.0.1:0", "loopback only\n");
    let target = format!("127.0.0.1:{}", secret.port);
    assert_eq!(http(&target).unwrap(), "loopback only\n", "the host itself");

    let gw = h.json(&["net", "show", "default"])["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    h.start_ve("a", &[]);
    wait_http(&ip_of(&h, "a"));
    // The bridge's route_localnet (published ports answer on 127.0.0.1) is
    // what the attack rides on.
    let bridge = h.names().bridge(1);
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet"))
            .unwrap()
            .trim(),
        "1"
    );
    let t = h.names().table();
    route_loopback_via(&h, "a", &gw);
    assert_blocked(&h, "a", &target, "the host's 127.0.0.1");

    // Each of the two layers holds on its own: without the loopback drops, the
    // host's input refuses the VE; without that, the loopback drops do.
    nft(&format!(
        "flush chain ip {t} loopback; flush chain bridge {t} loopback"
    ));
    assert_blocked(&h, "a", &target, "the input policy alone");
    reapply_firewall(&h);
    nft(&format!("flush chain ip {t} host_access"));
    assert_blocked(&h, "a", &target, "the loopback drops alone");
    // Without both, the same attempt gets through: it was a real one.
    nft(&format!(
        "flush chain ip {t} loopback; flush chain bridge {t} loopback"
    ));
    assert_eq!(
        http_from(&h, "a", &target).unwrap(),
        "loopback only\n",
        "the attack should work without vectl's rules"
    );
    reapply_firewall(&h);
    assert_blocked(&h, "a", &target, "the rules made again");

    // Published ports still answer on the host's 127.0.0.1 (the replies come
    // back to the gateway and only then are un-NATed to 127.0.0.1).
    h.ok(&["set", "a", "--publish", "8080:80"]);
    assert_eq!(http("127.0.0.1:8080").unwrap(), "hello from a\n");
    assert_eq!(http(&format!("{gw}:8080")).unwrap(), "hello from a\n");
}

#[test]
fn ves_reach_no_host_service_by_default_in_any_mode() {
    let test = "host_services_default";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    sh(&["ip", "link", "set", "lo", "up"]).unwrap();
    // The LAN: 192.0.2.1 beyond the operator's bridge br0, which holds the
    // host's address 192.0.2.2 and is also the bridged network's uplink.
    let net = match Lan::new("up0", None, "192.0.2.1/24") {
        Ok(l) => l,
        Err(e) => {
            integration::skip(test, &format!("cannot make a LAN namespace: {e}"));
            return;
        }
    };
    for cmd in [
        &["ip", "link", "add", "br0", "type", "bridge"][..],
        &["ip", "addr", "add", "192.0.2.2/24", "dev", "br0"],
        &["ip", "link", "set", "br0", "up"],
        &["ip", "link", "set", "up0", "master", "br0"],
        &["ip", "route", "add", "default", "via", "192.0.2.1"],
    ] {
        sh(cmd).unwrap();
    }
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("index.html"), "outside\n").unwrap();
    net.serve(&[
        "busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        www.path().to_str().unwrap(),
    ])
    .unwrap();
    // A service on every address of the host.
    let svc = Server::new("0.0.0.0:0", "host service\n");
    let port = svc.port;
    let on = |addr: &str| format!("{addr}:{port}");

    h.ok(&[
        "net",
        "create",
        "ho",
        "--mode",
        "host-only",
        "--subnet",
        "10.71.0.0/24",
    ]);
    h.ok(&[
        "net",
        "create",
        "rt",
        "--mode",
        "routed",
        "--subnet",
        "198.51.100.64/27",
    ]);
    h.ok(&[
        "net",
        "create",
        "lan",
        "--mode",
        "bridged",
        "--uplink",
        "br0",
        "--subnet",
        "192.0.2.0/24",
        "--gateway",
        "192.0.2.1",
    ]);
    h.start_ve("a", &[]);
    h.start_ve("b", &[]);
    h.start_ve("h1", &["--net", "ho"]);
    h.start_ve("r1", &["--net", "rt"]);
    h.start_ve("l1", &["--net", "lan", "--ip", "192.0.2.10"]);
    let gw = "10.200.0.1";
    // Host -> VE works in every mode (the VEs' replies come back in).
    for ve in ["a", "b", "h1", "r1", "l1"] {
        assert_eq!(
            wait_http(&ip_of(&h, ve)),
            format!("hello from {ve}\n"),
            "host -> {ve}"
        );
    }
    // The LAN still reaches the host's service on br0: the uplink's traffic is
    // the LAN's, not a VE's.
    assert_eq!(
        net.ok(&[
            "curl",
            "-sS",
            "-m",
            "3",
            &format!("http://{}/", on("192.0.2.2"))
        ])
        .unwrap(),
        "host service\n",
        "LAN -> host"
    );
    assert_eq!(http(&on("127.0.0.1")).unwrap(), "host service\n");

    // No VE reaches the service, on any of the host's addresses...
    for (ve, addrs) in [
        ("a", &[gw, "192.0.2.2"][..]),
        ("h1", &["10.71.0.1"]),
        ("r1", &["169.254.0.1", "192.0.2.2"]),
        ("l1", &["192.0.2.2"]),
    ] {
        for addr in addrs {
            assert_blocked(&h, ve, &on(addr), "a host service");
        }
    }
    // ... but pings the host, and the gateway where it has one.
    for (ve, addr) in [
        ("a", gw),
        ("h1", "10.71.0.1"),
        ("r1", "169.254.0.1"),
        ("l1", "192.0.2.2"),
    ] {
        assert!(ping_from(&h, ve, addr), "{ve} cannot ping {addr}");
    }

    // NAT to the outside and published ports work as before: from the host
    // (127.0.0.1 and its address), the LAN, and VEs.
    assert_eq!(http_from(&h, "a", "192.0.2.1").unwrap(), "outside\n");
    assert_eq!(http_from(&h, "l1", "192.0.2.1").unwrap(), "outside\n");
    h.ok(&["set", "a", "--publish", "8080:80"]);
    assert_eq!(http("127.0.0.1:8080").unwrap(), "hello from a\n");
    assert_eq!(http("192.0.2.2:8080").unwrap(), "hello from a\n");
    assert_eq!(
        net.ok(&["curl", "-sS", "-m", "3", "http://192.0.2.2:8080/"])
            .unwrap(),
        "hello from a\n",
        "LAN -> published port"
    );
    assert_eq!(
        http_from(&h, "b", "192.0.2.2:8080").unwrap(),
        "hello from a\n",
        "VE -> published port"
    );
}

#[test]
fn networks_made_by_an_older_vectl_get_the_new_rules_at_the_next_start() {
    let test = "host_rules_upgrade";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.ok(&["create", "u", "--template", "bb"]);
    // What an older vectl left: its marker (the boot id alone) and a ruleset
    // without these chains.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(h.root().join("nets/default.up"), boot.trim()).unwrap();
    let t = h.names().table();
    nft(&format!(
        "delete chain ip {t} host_access; delete chain ip {t} loopback"
    ));
    h.ok(&["start", "u"]);
    let rules = sh(&["nft", "list", "table", "ip", &t]).unwrap();
    let bridge = h.names().bridge(1);
    assert!(
        rules.contains(&format!("iifname \"{bridge}\" jump to_host_1"))
            && rules.contains(&format!("iifname \"{bridge}\" ip daddr 127.0.0.0/8 drop")),
        "{rules}"
    );
}

#[test]
fn an_operator_opens_host_services_per_network() {
    let test = "host_services_allow";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    sh(&["ip", "link", "set", "lo", "up"]).unwrap();
    let gw = "10.200.0.1";
    let open = Server::new(&format!("{gw}:0"), "opened\n");
    let closed = Server::new(&format!("{gw}:0"), "closed\n");
    let local = Server::new(&format!("127.0.0.1:{}", open.port), "loopback only\n");
    h.start_ve("a", &[]);
    wait_http(&ip_of(&h, "a"));
    let (o, c) = (
        format!("{gw}:{}", open.port),
        format!("{gw}:{}", closed.port),
    );
    assert_blocked(&h, "a", &o, "closed by default");

    // Opened on a running network: at once, for its running VEs.
    let allow = format!("tcp:{},udp:53", open.port);
    h.ok(&["net", "set", "default", "--allow-host", &allow]);
    let shown = h.json(&["net", "show", "default"]);
    assert_eq!(
        shown["allow_host"],
        serde_json::json!([format!("tcp:{}", open.port), "udp:53"]),
        "{shown}"
    );
    let text = h.ok(&["net", "show", "default"]);
    assert!(
        text.contains(&format!("tcp:{}, udp:53", open.port)),
        "{text}"
    );
    assert_eq!(http_from(&h, "a", &o).unwrap(), "opened\n");
    assert_blocked(&h, "a", &c, "only the port opened");
    // The same port on the host's loopback stays out of reach.
    route_loopback_via(&h, "a", gw);
    assert_blocked(
        &h,
        "a",
        &format!("127.0.0.1:{}", local.port),
        "an opened port on the host's loopback",
    );
    // Kept across a restart of the VE and a rewrite of the ruleset.
    h.ok(&["restart", "a"]);
    reapply_firewall(&h);
    wait_http(&ip_of(&h, "a"));
    assert_eq!(http_from(&h, "a", &o).unwrap(), "opened\n");
    // Closed again.
    h.ok(&["net", "set", "default", "--allow-host", "none"]);
    assert_blocked(&h, "a", &o, "closed again");
    assert_eq!(
        h.json(&["net", "show", "default"])["allow_host"],
        serde_json::json!([])
    );

    // At create, and in the listing.
    h.ok(&[
        "net",
        "create",
        "ops",
        "--mode",
        "host-only",
        "--subnet",
        "10.78.0.0/24",
        "--allow-host",
        "tcp:22,udp:53,tcp:8000-8100",
    ]);
    let nets = h.json(&["net", "list"]);
    let ops = nets
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "ops")
        .unwrap();
    assert_eq!(
        ops["allow_host"],
        serde_json::json!(["tcp:22", "tcp:8000-8100", "udp:53"])
    );
    for bad in ["tcp:0", "sctp:22", "22", "tcp:9-8"] {
        let e = h.fails_usage(&["net", "set", "ops", "--allow-host", bad]);
        assert!(e.contains("--allow-host"), "{bad}: {e}");
    }
    let e = h.fails(&["net", "set", "nosuch", "--allow-host", "tcp:22"]);
    assert!(e.contains("no such network"), "{e}");
}

#[test]
fn hostile_etc_files_in_a_layer_neither_hang_nor_swell_a_start() {
    let test = "hostile_etc_files";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    h.ok(&["create", "f", "--template", "bb"]);
    let upper = h.root().join("pool/ves/f/upper");
    assert!(upper.is_dir(), "{} is not the VE's layer", upper.display());
    let etc = upper.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let hosts = etc.join("hosts");

    // A huge sparse /etc/hosts: the start is refused with one line naming the
    // file, without reading it (the address-space limit makes a
    // vectl that tries to read it fail instead of swelling).
    std::fs::File::create(&hosts)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg("--as=4294967296")
        .arg("--")
        .arg(integration::vectl_bin())
        .arg("--root")
        .arg(h.root())
        .env("VECTL_REGISTRY", h.registry())
        .args(["start", "f"])
        .stdin(std::process::Stdio::null());
    let r = crate::common::run_limited(cmd, Duration::from_secs(20));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with("vectl: ")
            && r.stderr.contains("/ves/f/upper/etc/hosts")
            && r.stderr.contains("larger than"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::metadata(&hosts).unwrap().len(),
        64 << 30,
        "the VE's file is left as it was"
    );
    assert_eq!(crate::common::status(&h, "f"), "stopped");

    // FIFOs in place of the files vectl reads and writes: replaced, no hang.
    std::fs::remove_file(&hosts).unwrap();
    for f in ["hosts", "hostname", "resolv.conf"] {
        let _ = std::fs::remove_file(etc.join(f));
        nix::unistd::mkfifo(
            &etc.join(f),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
    }
    let r = crate::common::run_guarded(&h, &["start", "f"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let ip = ip_of(&h, "f");
    let inside = h.exec("f", &["cat", "/etc/hosts"]);
    assert!(
        inside.stdout.contains(&format!("{ip}\tf # vectl")),
        "{inside:?}"
    );
    assert!(
        std::fs::symlink_metadata(&hosts).unwrap().is_file(),
        "the FIFO was replaced"
    );
    h.ok(&["stop", "--fast", "f"]);

    // A VE's own big but sane /etc/hosts keeps its lines.
    let mut text = String::from("10.9.9.9\tdb\n");
    for i in 0..20_000 {
        text.push_str(&format!("10.8.{}.{}\thost{i}\n", i / 250, i % 250));
    }
    std::fs::write(&hosts, &text).unwrap();
    h.ok(&["start", "f"]);
    let now = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        now.starts_with(&text) && now.ends_with(&format!("{ip}\tf # vectl\n")),
        "{}",
        &now[now.len().saturating_sub(200)..]
    );
}
