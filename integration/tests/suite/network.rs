//! Virtual networks on the real kernel: each test's host is its own network
//! namespace (TestHost), and a second namespace plays the LAN or the internet
//! (`Lan`) where a mode needs one. Addresses come from the documentation ranges
//! and private ranges inside those namespaces only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use integration::{Lan, TestHost, sh};

/// The address of a VE's first NIC.
pub(crate) fn ip_of(h: &TestHost, ve: &str) -> String {
    h.json(&["show", ve])["nics"][0]["ip"]
        .as_str()
        .expect("an address")
        .to_string()
}

/// HTTP GET from the host's namespace (the test thread's), with a short timeout.
pub(crate) fn http(addr: &str) -> Result<String, String> {
    let url = format!("http://{addr}/");
    sh(&["curl", "-sS", "-m", "3", &url])
}

/// HTTP GET from inside a VE.
fn http_from(h: &TestHost, ve: &str, addr: &str) -> Result<String, String> {
    let url = format!("http://{addr}/");
    let r = h.exec(ve, &["timeout", "4", "wget", "-q", "-O", "-", &url]);
    if r.code == 0 {
        Ok(r.stdout)
    } else {
        Err(format!("exit {}: {}", r.code, r.stderr))
    }
}

/// Waits until a VE answers HTTP from the host (its init starts httpd).
pub(crate) fn wait_http(addr: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http(addr) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("{addr} never answered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// HTTP GET from the LAN, retried until the VE's init has its httpd up.
fn lan_http(net: &Lan, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match net.ok(&["curl", "-sS", "-m", "3", url]) {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("{url} never answered from the LAN: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The links of the test's namespace whose names start with `prefix`.
pub(crate) fn links(prefix: &str) -> Vec<String> {
    sh(&["ip", "-o", "link", "show"])
        .unwrap()
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Waits until no link's name starts with `prefix`: the kernel removes a VE's
/// port with its network namespace, a moment after the VE's last process.
fn wait_gone(prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !links(prefix).is_empty() {
        assert!(
            Instant::now() < deadline,
            "links outlived their VE: {:?}",
            links(prefix)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ruleset() -> String {
    sh(&["nft", "list", "ruleset"]).unwrap()
}

/// A LAN for a test, or SKIP.
fn lan(test: &str, host_if: &str, host_cidr: Option<&str>, lan_cidr: &str) -> Option<Lan> {
    match Lan::new(host_if, host_cidr, lan_cidr) {
        Ok(l) => Some(l),
        Err(e) => {
            integration::skip(test, &format!("cannot make a LAN namespace: {e}"));
            None
        }
    }
}

#[test]
fn nat_network_ves_talk_to_each_other_the_host_and_the_outside() {
    let Some(h) = TestHost::new("nat_network") else {
        return;
    };
    // The default network vectl init made.
    let nets = h.json(&["net", "list"]);
    assert_eq!(nets[0]["name"], "default");
    assert_eq!(nets[0]["mode"], "nat");
    let gw = nets[0]["gateway"].as_str().unwrap().to_string();

    // The "internet": 192.0.2.1 behind the host's uplink 192.0.2.2.
    let Some(net) = lan("nat_network", "up0", Some("192.0.2.2/24"), "192.0.2.1/24") else {
        return;
    };
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
    sh(&["ip", "route", "add", "default", "via", "192.0.2.1"]).unwrap();

    h.start_ve("a", &[]);
    h.start_ve("b", &[]);
    let (a, b) = (ip_of(&h, "a"), ip_of(&h, "b"));
    assert_ne!(a, b);
    assert_eq!(wait_http(&a), "hello from a\n", "host -> VE");
    assert_eq!(wait_http(&b), "hello from b\n");
    assert_eq!(
        http_from(&h, "a", &b).unwrap(),
        "hello from b\n",
        "VE -> VE"
    );
    assert!(http_from(&h, "a", &gw).is_err(), "the host serves nothing");
    // Out through masquerade: the LAN has no route back to the VEs' subnet, so
    // an answer proves the source address was rewritten.
    assert_eq!(
        http_from(&h, "a", "192.0.2.1").unwrap(),
        "outside\n",
        "VE -> outside"
    );
    // Inside: eth0 with its address, a default route, /etc/hosts.
    let r = h.exec("a", &["ip", "-4", "route"]);
    assert!(
        r.stdout.contains(&format!("default via {gw}")),
        "{}",
        r.stdout
    );
    let hosts = h.exec("a", &["cat", "/etc/hosts"]).stdout;
    assert!(hosts.contains(&format!("{a}\ta")), "{hosts}");

    // Published port, from the LAN to the host's address and from the host itself.
    h.ok(&["set", "a", "--publish", "8080:80"]);
    assert_eq!(
        net.ok(&["curl", "-sS", "-m", "3", "http://192.0.2.2:8080/"])
            .unwrap(),
        "hello from a\n",
        "LAN -> published port"
    );
    sh(&["ip", "link", "set", "lo", "up"]).unwrap();
    assert_eq!(http("127.0.0.1:8080").unwrap(), "hello from a\n");
    assert_eq!(http("192.0.2.2:8080").unwrap(), "hello from a\n");
    // The same host port for another VE is refused; withdrawing frees it.
    let e = h.fails(&["set", "b", "--publish", "8080:80"]);
    assert!(e.contains("published by VE a"), "{e}");
    h.ok(&["set", "a", "--unpublish", "8080"]);
    assert!(http("127.0.0.1:8080").is_err());
    h.ok(&["set", "b", "--publish", "8080:80/tcp"]);
    assert_eq!(http("127.0.0.1:8080").unwrap(), "hello from b\n");
    assert_eq!(h.json(&["show", "b"])["publish"][0], "8080:80/tcp");
}

#[test]
fn host_only_and_separate_networks_are_isolated() {
    let Some(h) = TestHost::new("isolation_net") else {
        return;
    };
    let Some(_net) = lan("isolation_net", "up0", Some("192.0.2.2/24"), "192.0.2.1/24") else {
        return;
    };
    sh(&["ip", "route", "add", "default", "via", "192.0.2.1"]).unwrap();
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
        "other",
        "--mode",
        "nat",
        "--subnet",
        "10.72.0.0/24",
    ]);
    h.start_ve("h1", &["--net", "ho"]);
    h.start_ve("h2", &["--net", "ho", "--ip", "10.71.0.50"]);
    h.start_ve("n1", &[]);
    h.start_ve("o1", &["--net", "other"]);
    assert_eq!(ip_of(&h, "h2"), "10.71.0.50");
    let (h1, h2, n1, o1) = (
        ip_of(&h, "h1"),
        ip_of(&h, "h2"),
        ip_of(&h, "n1"),
        ip_of(&h, "o1"),
    );
    assert_eq!(wait_http(&h1), "hello from h1\n", "host -> host-only VE");
    wait_http(&n1);
    wait_http(&o1);
    wait_http(&h2);
    assert_eq!(http_from(&h, "h1", &h2).unwrap(), "hello from h2\n");
    // host-only: no way beyond the host, no default route.
    assert!(
        http_from(&h, "h1", "192.0.2.1").is_err(),
        "host-only -> outside"
    );
    assert!(!h.exec("h1", &["ip", "route"]).stdout.contains("default"));
    // Networks do not reach each other, in either direction.
    assert!(http_from(&h, "n1", &o1).is_err(), "nat -> other nat");
    assert!(http_from(&h, "o1", &n1).is_err(), "other nat -> nat");
    assert!(http_from(&h, "n1", &h1).is_err(), "nat -> host-only");
    // Nor through a published port: a host-only VE reaches the host, no further.
    h.ok(&["set", "n1", "--publish", "8080:80"]);
    assert_eq!(
        http_from(&h, "o1", "192.0.2.2:8080").unwrap(),
        "hello from n1\n",
        "another nat network uses published ports like the outside does"
    );
    assert!(
        http_from(&h, "h1", "10.71.0.1:8080").is_err(),
        "host-only -> published port of a nat VE"
    );
    // ... while each still reaches the outside.
    let r = h.exec("o1", &["ping", "-c", "1", "-W", "2", "192.0.2.1"]);
    assert_eq!(r.code, 0, "other nat -> outside: {}", r.stderr);
}

#[test]
fn a_ve_cannot_send_from_an_address_or_mac_not_its_own() {
    let Some(h) = TestHost::new("antispoof") else {
        return;
    };
    h.start_ve("s", &[]);
    h.start_ve("t", &[]);
    let t = ip_of(&h, "t");
    wait_http(&t);
    let ping = |from: Option<&str>| {
        let mut cmd = vec!["ping", "-c", "1", "-W", "2"];
        if let Some(f) = from {
            cmd.extend(["-I", f]);
        }
        cmd.push(&t);
        h.exec("s", &cmd).code
    };
    assert_eq!(ping(None), 0, "its own address works");
    // VE root adds another address of the subnet and sends from it.
    let spoofed = "10.200.15.250";
    let r = h.exec(
        "s",
        &["ip", "addr", "add", &format!("{spoofed}/20"), "dev", "eth0"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(
        ping(Some(spoofed)),
        0,
        "a spoofed source address got through"
    );
    assert_eq!(ping(None), 0);
    // Another MAC.
    let r = h.exec(
        "s",
        &["ip", "link", "set", "eth0", "address", "02:66:66:66:66:66"],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_ne!(ping(None), 0, "a spoofed MAC got through");
}

#[test]
fn routed_ves_are_reachable_from_the_lan_through_proxy_arp() {
    let Some(h) = TestHost::new("routed_net") else {
        return;
    };
    // The LAN is 192.0.2.0/24; the host is .2 on it, VEs get .64-.95 routed.
    let Some(net) = lan("routed_net", "up0", Some("192.0.2.2/24"), "192.0.2.1/24") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "pub",
        "--mode",
        "routed",
        "--subnet",
        "192.0.2.64/27",
        "--uplink",
        "up0",
    ]);
    h.start_ve("r1", &["--net", "pub", "--ip", "192.0.2.70"]);
    h.start_ve("r2", &["--net", "pub"]);
    assert_eq!(ip_of(&h, "r2"), "192.0.2.65");
    let r = h.exec("r1", &["ip", "-4", "addr", "show", "eth0"]);
    assert!(r.stdout.contains("192.0.2.70/32"), "{}", r.stdout);
    assert_eq!(
        wait_http("192.0.2.70"),
        "hello from r1\n",
        "host -> routed VE"
    );
    wait_http("192.0.2.65");
    assert_eq!(
        net.ok(&["curl", "-sS", "-m", "3", "http://192.0.2.70/"])
            .unwrap(),
        "hello from r1\n",
        "LAN -> routed VE"
    );
    assert_eq!(
        http_from(&h, "r1", "192.0.2.65").unwrap(),
        "hello from r2\n"
    );
    let neigh = sh(&["ip", "neigh", "show", "proxy"]).unwrap();
    assert!(neigh.contains("192.0.2.70 dev up0"), "{neigh}");
    // A routed VE may not send from another address either: the LAN counts
    // what arrives from each source (no answer could come back to .80 anyway).
    net.ok(&["nft", "add table ip count; add chain ip count in { type filter hook input priority 0; }; add rule ip count in ip saddr 192.0.2.80 counter; add rule ip count in ip saddr 192.0.2.70 counter"])
        .unwrap();
    h.exec("r1", &["ip", "addr", "add", "192.0.2.80/32", "dev", "eth0"]);
    h.exec(
        "r1",
        &[
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "192.0.2.80",
            "192.0.2.1",
        ],
    );
    let r = h.exec("r1", &["ping", "-c", "1", "-W", "2", "192.0.2.1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let counters = net
        .ok(&["nft", "list", "chain", "ip", "count", "in"])
        .unwrap();
    assert!(
        counters.contains("ip saddr 192.0.2.80 counter packets 0 ")
            && !counters.contains("ip saddr 192.0.2.70 counter packets 0 "),
        "a routed VE spoofed its source:\n{counters}"
    );
    // Stopping takes the route and the proxy-ARP entry away.
    h.ok(&["stop", "--fast", "r1"]);
    assert!(
        !sh(&["ip", "neigh", "show", "proxy"])
            .unwrap()
            .contains("192.0.2.70")
    );
    assert!(!sh(&["ip", "route"]).unwrap().contains("192.0.2.70"));
}

#[test]
fn bridged_ves_are_on_the_lan_with_their_own_macs() {
    let Some(h) = TestHost::new("bridged_net") else {
        return;
    };
    // The uplink carries no host address: it goes into vectl's bridge.
    let Some(net) = lan("bridged_net", "up0", None, "192.0.2.1/24") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "lan",
        "--mode",
        "bridged",
        "--subnet",
        "192.0.2.0/24",
        "--uplink",
        "up0",
        "--gateway",
        "192.0.2.1",
    ]);
    h.start_ve("b1", &["--net", "lan", "--ip", "192.0.2.10/24"]);
    net.ok(&["busybox", "ping", "-c", "1", "-W", "5", "192.0.2.10"])
        .unwrap();
    assert_eq!(lan_http(&net, "http://192.0.2.10/"), "hello from b1\n");
    let mac = h.json(&["show", "b1"])["nics"][0]["mac"]
        .as_str()
        .unwrap()
        .to_string();
    let neigh = net.ok(&["ip", "neigh", "show", "192.0.2.10"]).unwrap();
    assert!(neigh.contains(&mac), "the LAN sees {neigh}, not {mac}");
    // One bridged network per uplink.
    let e = h.fails(&[
        "net",
        "create",
        "lan2",
        "--mode",
        "bridged",
        "--subnet",
        "192.0.3.0/24",
        "--uplink",
        "up0",
    ]);
    assert!(e.contains("is network lan's already"), "{e}");
    // An uplink that holds the host's address is refused (it would cut the host off).
    sh(&[
        "ip", "link", "add", "hostnic", "type", "veth", "peer", "name", "hostnic1",
    ])
    .unwrap();
    sh(&["ip", "addr", "add", "198.51.100.2/24", "dev", "hostnic"]).unwrap();
    let e = h.fails(&[
        "net",
        "create",
        "bad",
        "--mode",
        "bridged",
        "--subnet",
        "198.51.100.0/24",
        "--uplink",
        "hostnic",
    ]);
    assert!(e.contains("holds the host's address 198.51.100.2"), "{e}");
}

#[test]
fn vlan_uplinks_tag_the_lan_traffic() {
    let Some(h) = TestHost::new("vlan_net") else {
        return;
    };
    let Some(net) = lan("vlan_net", "up0", None, "192.0.2.1/24") else {
        return;
    };
    // The kernel makes VLAN links only with 802.1Q (CONFIG_VLAN_8021Q).
    if let Err(e) = sh(&[
        "ip", "link", "add", "link", "up0", "name", "probe.5", "type", "vlan", "id", "5",
    ]) {
        integration::skip(
            "vlan_net",
            &format!(
                "host gap 802.1q: this kernel has no 802.1Q VLANs (CONFIG_VLAN_8021Q): {}",
                e.trim()
            ),
        );
        return;
    }
    sh(&["ip", "link", "del", "probe.5"]).unwrap();
    // The LAN side speaks VLAN 42 only.
    net.ok(&["ip", "addr", "flush", "dev", "lan0"]).unwrap();
    net.ok(&[
        "ip", "link", "add", "link", "lan0", "name", "lan0.42", "type", "vlan", "id", "42",
    ])
    .unwrap();
    net.ok(&["ip", "addr", "add", "192.0.2.1/24", "dev", "lan0.42"])
        .unwrap();
    net.ok(&["ip", "link", "set", "lan0.42", "up"]).unwrap();
    h.ok(&[
        "net",
        "create",
        "v42",
        "--mode",
        "bridged",
        "--subnet",
        "192.0.2.0/24",
        "--uplink",
        "up0",
        "--vlan",
        "42",
    ]);
    h.start_ve("v1", &["--net", "v42", "--ip", "192.0.2.20"]);
    assert_eq!(lan_http(&net, "http://192.0.2.20/"), "hello from v1\n");
    let id = h.json(&["net", "show", "v42"])["id"].as_u64().unwrap();
    let vlan = h.names().vlan(u32::try_from(id).unwrap());
    assert_eq!(links(&vlan), vec![vlan.clone()]);
}

#[test]
fn addresses_are_unique_under_concurrent_creates_and_return_on_destroy() {
    let Some(h) = TestHost::new("ipam") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "small",
        "--mode",
        "nat",
        "--subnet",
        "10.73.0.0/27",
    ]);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let h = &h;
                s.spawn(move || h.run(&["create", &format!("c{i}"), "-T", "bb", "--net", "small"]))
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for r in &results {
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let mut ips: Vec<String> = (0..20).map(|i| ip_of(&h, &format!("c{i}"))).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 20, "duplicate addresses: {ips:?}");
    let freed = ip_of(&h, "c7");
    h.ok(&["destroy", "c7"]);
    h.ok(&["create", "again", "-T", "bb", "--net", "small"]);
    assert_eq!(
        ip_of(&h, "again"),
        freed,
        "the lowest free address comes back"
    );
    // An address in use, or outside the subnet, is refused, and nothing is left.
    let taken = ip_of(&h, "c0");
    let e = h.fails(&[
        "create", "dup", "-T", "bb", "--net", "small", "--ip", &taken,
    ]);
    assert!(e.contains("in use"), "{e}");
    let e = h.fails(&[
        "create", "dup", "-T", "bb", "--net", "small", "--ip", "10.9.9.9",
    ]);
    assert!(e.contains("not a host address"), "{e}");
    let e = h.fails(&[
        "create",
        "dup",
        "-T",
        "bb",
        "--net",
        "small",
        "--ip",
        "10.73.0.5/24",
    ]);
    assert!(e.contains("prefix /27"), "{e}");
    assert!(h.run(&["show", "dup"]).code != 0);
    // 30 host addresses, gateway one: 29 VEs fit, the 30th does not.
    for i in 20..29 {
        h.ok(&["create", &format!("c{i}"), "-T", "bb", "--net", "small"]);
    }
    let e = h.fails(&["create", "full", "-T", "bb", "--net", "small"]);
    assert!(e.contains("no free address"), "{e}");
    // Each --ip belongs to the --net before it.
    h.ok(&[
        "net",
        "create",
        "second",
        "--mode",
        "nat",
        "--subnet",
        "10.74.1.0/24",
    ]);
    h.ok(&[
        "create",
        "two",
        "-T",
        "bb",
        "--net",
        "default",
        "--net",
        "second",
        "--ip",
        "10.74.1.9",
    ]);
    let nics = h.json(&["show", "two"])["nics"].clone();
    assert_eq!(nics[0]["net"], "default");
    assert_eq!(nics[1]["ip"], "10.74.1.9", "{nics}");
}

#[test]
fn links_rules_and_routes_go_with_stop_destroy_and_net_rm() {
    let Some(h) = TestHost::new("net_cleanup") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "tmp",
        "--mode",
        "nat",
        "--subnet",
        "10.74.0.0/24",
    ]);
    h.start_ve("c", &["--net", "tmp", "--publish", "9090:80"]);
    let id = h.json(&["show", "c"])["id"].as_u64().unwrap();
    let n = h.names();
    let id = u32::try_from(id).unwrap();
    let port = n.ports(2, id)[0].clone();
    let net2 = n.bridge(2).trim_end_matches('b').to_string();
    assert_eq!(links(&port), vec![port.clone()]);
    assert!(ruleset().contains(&format!("\"{port}\" . 10.74.0.2")));
    assert!(ruleset().contains("9090 : 10.74.0.2 . 80"));
    let e = h.fails(&["net", "rm", "tmp"]);
    assert!(e.contains("in use by VE c"), "{e}");
    h.ok(&["stop", "--fast", "c"]);
    wait_gone(&port);
    h.ok(&["start", "c"]);
    assert_eq!(links(&port), vec![port.clone()], "a restart wires it again");
    // A start right after a stop does not wait for the old port to go: it takes
    // the other name while the kernel removes the first.
    h.ok(&["stop", "--fast", "c"]);
    h.ok(&["start", "c"]);
    let now = h.json(&["show", "c"])["nics"][0]["port"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        links(&now).contains(&now),
        "{now} not in {:?}",
        links(&net2)
    );
    h.ok(&["set", "c", "--net-limit", "5mbit"]);
    let filters = sh(&["tc", "filter", "show", "dev", &now, "ingress"]).unwrap();
    assert!(
        filters.contains(&n.ifbs(2).0),
        "the live limit went to {now}: {filters}"
    );
    assert_eq!(wait_http("10.74.0.2"), "hello from c\n");
    h.ok(&["destroy", "--force", "c"]);
    wait_gone(&port);
    assert!(!ruleset().contains(&port), "{}", ruleset());
    assert!(!ruleset().contains("9090"));
    h.ok(&["net", "rm", "tmp"]);
    wait_gone(&net2);
    assert!(!ruleset().contains(&net2));
    h.ok(&["net", "rm", "default"]);
    wait_gone(&n.prefix());
    assert!(!ruleset().contains("vectl"), "{}", ruleset());
    // A VE created with no network has loopback only.
    h.start_ve("lonely", &["--net", "none"]);
    let r = h.exec("lonely", &["ip", "-o", "link"]);
    assert_eq!(r.stdout.lines().count(), 1, "{}", r.stdout);
}

#[test]
fn bad_network_input_is_refused_with_one_clear_line() {
    let Some(h) = TestHost::new("net_bad_input") else {
        return;
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "nat",
                "--subnet",
                "10.200.0.0/24",
            ],
            "overlaps network default",
        ),
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "nat",
                "--subnet",
                "10.0.0.300/24",
            ],
            "invalid subnet",
        ),
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "nat",
                "--subnet",
                "10.75.0.1/24",
            ],
            "host bits are set",
        ),
        (
            &["net", "create", "x", "--mode", "mesh"],
            "unknown network mode",
        ),
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "bridged",
                "--subnet",
                "10.75.0.0/24",
                "--uplink",
                "nosuch0",
            ],
            "no such interface",
        ),
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "bridged",
                "--subnet",
                "10.75.0.0/24",
            ],
            "needs --uplink",
        ),
        (
            &["net", "create", "x", "--mode", "nat", "--uplink", "lo"],
            "--uplink is for bridged and routed",
        ),
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "nat",
                "--subnet",
                "10.75.0.0/24",
                "--gateway",
                "10.76.0.1",
            ],
            "not a host address",
        ),
        (
            &["net", "create", "x", "--mode", "nat", "--bandwidth", "fast"],
            "invalid rate",
        ),
        (
            &["net", "create", "default", "--mode", "nat"],
            "already exists",
        ),
        (
            &["net", "create", "Bad_Name", "--mode", "nat"],
            "invalid network name",
        ),
        (&["net", "rm", "nosuch"], "no such network"),
        (
            &[
                "net",
                "create",
                "x",
                "--mode",
                "routed",
                "--subnet",
                "10.75.0.0/24",
                "--uplink",
                "lo",
                "--vlan",
                "5",
            ],
            "--vlan is for bridged networks",
        ),
        (
            &[
                "create",
                "v",
                "-T",
                "bb",
                "--publish",
                "80:80",
                "--publish",
                "80:81",
            ],
            "given twice",
        ),
        (
            &[
                "create",
                "v",
                "-T",
                "bb",
                "--ip",
                "10.200.0.9",
                "--net",
                "default",
            ],
            "comes before any --net",
        ),
        (
            &["create", "v", "-T", "bb", "--net", "nosuch"],
            "no such network",
        ),
        (
            &["create", "v", "-T", "bb", "--ip", "banana"],
            "--ip banana: not an IPv4 address",
        ),
        (
            &["create", "v", "-T", "bb", "--publish", "80"],
            "HOSTPORT:VEPORT",
        ),
        (
            &["create", "v", "-T", "bb", "--net-guarantee", "10%"],
            "no --bandwidth",
        ),
        (
            &["create", "v", "-T", "bb", "--net-limit", "lots"],
            "invalid rate",
        ),
    ];
    // Malformed values are bad usage (exit 2), with the same one line.
    let usage = [
        "invalid subnet",
        "host bits are set",
        "unknown network mode",
        "invalid rate",
        "HOSTPORT:VEPORT",
        "--ip banana: not an IPv4 address",
    ];
    for (args, want) in cases {
        let e = if usage.contains(want) {
            h.fails_usage(args)
        } else {
            h.fails(args)
        };
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert_eq!(h.json(&["net", "list"]).as_array().unwrap().len(), 1);
    assert!(h.json(&["list"]).as_array().unwrap().is_empty());
}

/// Issue 18, defect 7: subnets and addresses in special-use ranges (this network,
/// loopback, link-local, which routed VEs use for their gateway, multicast and
/// reserved) are refused with one line naming the subnet or address and the range,
/// in every mode, and nothing is made.
#[test]
fn special_use_subnets_and_addresses_are_refused() {
    let Some(h) = TestHost::new("net_special_use") else {
        return;
    };
    let subnets = [
        ("0.0.0.0/16", "this network"),
        ("255.255.0.0/16", "reserved"),
        ("169.254.0.0/16", "link-local"),
        ("169.254.7.0/24", "link-local"),
        ("224.0.0.0/16", "multicast"),
        ("239.255.0.0/16", "multicast"),
        ("127.0.0.0/16", "loopback"),
        ("240.0.0.0/16", "reserved"),
        ("0.1.0.0/16", "this network"),
    ];
    let mut wrong = Vec::new();
    for (subnet, why) in subnets {
        for mode in [
            &["--mode", "host-only"][..],
            &["--mode", "nat"],
            &["--mode", "routed", "--uplink", "lo"],
        ] {
            let mut args = vec!["net", "create", "sp", "--subnet", subnet];
            args.extend_from_slice(mode);
            let r = h.run(&args);
            let lines: Vec<&str> = r.stderr.lines().collect();
            if r.code == 0
                || lines.len() != 1
                || !lines[0].starts_with("vectl: ")
                || !lines[0].contains(subnet)
                || !lines[0].contains(why)
            {
                wrong.push(format!("vectl {args:?}: exit {} {:?}", r.code, r.stderr));
                if r.code == 0 {
                    h.ok(&["net", "rm", "sp"]);
                }
            }
        }
    }
    for (ip, why) in [
        ("169.254.0.5", "link-local"),
        ("127.0.0.1", "loopback"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "this network"),
        ("255.255.255.255", "reserved"),
    ] {
        let args = ["create", "v", "-T", "bb", "--net", "default", "--ip", ip];
        let r = h.run(&args);
        let lines: Vec<&str> = r.stderr.lines().collect();
        if r.code == 0
            || lines.len() != 1
            || !lines[0].starts_with("vectl: ")
            || !lines[0].contains(ip)
            || !lines[0].contains(why)
        {
            wrong.push(format!("vectl {args:?}: exit {} {:?}", r.code, r.stderr));
            if r.code == 0 {
                h.ok(&["destroy", "v"]);
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "not refused properly:\n{}",
        wrong.join("\n")
    );
    assert_eq!(h.json(&["net", "list"]).as_array().unwrap().len(), 1);
    assert!(h.json(&["list"]).as_array().unwrap().is_empty());
}

/// Opens TCP services of the host to the VEs of network `net` (a VE reaches none
/// by default): the shaping tests time uploads to a receiver on the gateway.
fn allow_uploads_to_the_host(h: &TestHost, net: &str) {
    h.ok(&["net", "set", net, "--allow-host", "tcp:1024-65535"]);
}

/// Mbit/s of `mib` MiB sent from the VE to the host (`host_ip`).
fn upload_rate(h: &TestHost, ve: &str, host_ip: &str, mib: u32) -> f64 {
    integration::receive_rate(host_ip, |port| {
        let r = h.exec(ve, &["sh", "-c", &integration::nc_send(host_ip, port, mib)]);
        assert_eq!(r.code, 0, "{}", r.stderr);
    })
}

/// Mbit/s of `mib` MiB sent from the host to the VE.
fn download_rate(h: &TestHost, ve: &str, ve_ip: &str, mib: u32) -> f64 {
    integration::send_rate(&format!("{ve_ip}:5001"), mib, || {
        h.exec(ve, &["sh", "-c", "nc -l -p 5001 > /dev/null"]);
    })
}

#[test]
fn a_net_limit_caps_each_direction_and_changes_live() {
    let Some(h) = TestHost::new("net_limit") else {
        return;
    };
    allow_uploads_to_the_host(&h, "default");
    h.start_ve("lim", &["--net-limit", "10mbit"]);
    let ip = ip_of(&h, "lim");
    wait_http(&ip);
    let gw = h.json(&["net", "show", "default"])["gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let up = upload_rate(&h, "lim", &gw, 3);
    let down = download_rate(&h, "lim", &ip, 3);
    println!("10mbit limit: up {up:.2} Mbit/s, down {down:.2} Mbit/s");
    assert!(
        up <= 11.0 && up > 5.0,
        "upload {up:.2} Mbit/s under a 10mbit limit"
    );
    assert!(
        down <= 11.0 && down > 5.0,
        "download {down:.2} Mbit/s under a 10mbit limit"
    );
    // Live: raised, then removed.
    h.ok(&["set", "lim", "--net-limit", "40mbit"]);
    let up = upload_rate(&h, "lim", &gw, 8);
    assert!(
        up > 20.0 && up <= 44.0,
        "upload {up:.2} Mbit/s under a 40mbit limit"
    );
    h.ok(&["set", "lim", "--net-limit", "unlimited"]);
    let up = upload_rate(&h, "lim", &gw, 16);
    assert!(up > 60.0, "upload {up:.2} Mbit/s with no limit");
    assert_eq!(
        h.json(&["show", "lim"])["net_limit_bits_per_second"],
        serde_json::Value::Null
    );
}

#[test]
fn a_net_guarantee_holds_under_contention_and_is_admission_controlled() {
    let Some(h) = TestHost::new("net_guarantee") else {
        return;
    };
    h.ok(&[
        "net",
        "create",
        "shared",
        "--mode",
        "nat",
        "--subnet",
        "10.77.0.0/24",
        "--bandwidth",
        "20mbit",
    ]);
    allow_uploads_to_the_host(&h, "shared");
    h.start_ve("gold", &["--net", "shared", "--net-guarantee", "15mbit"]);
    h.start_ve("bulk", &["--net", "shared"]);
    wait_http(&ip_of(&h, "gold"));
    wait_http(&ip_of(&h, "bulk"));
    // Over-commit is refused: 15 of 20 are promised.
    let e = h.fails(&["set", "bulk", "--net-guarantee", "30%"]);
    assert!(
        e.contains("network guarantees on shared would total 21mbit"),
        "{e}"
    );
    h.ok(&["set", "bulk", "--net-guarantee", "25%"]);
    h.ok(&["set", "bulk", "--net-guarantee", "unlimited"]);
    let gw = "10.77.0.1";
    let (gold, bulk) = std::thread::scope(|s| {
        let g = s.spawn(|| upload_rate(&h, "gold", gw, 6));
        let b = s.spawn(|| upload_rate(&h, "bulk", gw, 6));
        (g.join().unwrap(), b.join().unwrap())
    });
    println!("guarantee 15mbit of 20: gold {gold:.2} Mbit/s, bulk {bulk:.2} Mbit/s");
    assert!(gold >= 12.0, "the guaranteed VE got {gold:.2} Mbit/s");
    assert!(
        bulk <= 22.0,
        "the network's 20mbit: bulk got {bulk:.2} Mbit/s"
    );
    // Each VE's traffic classes go with its stop (and come back with its start),
    // on both of the network's IFB devices: only the root classes stay.
    let id = h.json(&["net", "show", "shared"])["id"].as_u64().unwrap();
    let classes = |dev: &str| {
        let out = sh(&["tc", "class", "show", "dev", dev]).unwrap();
        out.lines().filter(|l| l.contains("class htb")).count()
    };
    let (up, down) = h.names().ifbs(u32::try_from(id).unwrap());
    let with_two = (classes(&up), classes(&down));
    h.ok(&["stop", "--fast", "gold", "bulk"]);
    let with_none = (classes(&up), classes(&down));
    assert_eq!(
        (with_two.0 - with_none.0, with_two.1 - with_none.1),
        (2, 2),
        "HTB classes on {up}/{down}: {with_two:?} with two VEs running, {with_none:?} after their stop"
    );
    h.ok(&["start", "gold"]);
    assert_eq!(
        (classes(&up), classes(&down)),
        (with_none.0 + 1, with_none.1 + 1)
    );
}

#[test]
fn networks_are_made_again_after_a_reboot() {
    let Some(h) = TestHost::new("net_reboot") else {
        return;
    };
    h.ok(&["create", "rb", "-T", "bb"]);
    let ip = ip_of(&h, "rb");
    // What a reboot takes: the bridge, the firewall; the marker names an old boot.
    let bridge = h.names().bridge(1);
    sh(&["ip", "link", "del", &bridge]).unwrap();
    sh(&["nft", "flush", "ruleset"]).unwrap();
    std::fs::write(h.root().join("nets/default.up"), "an-earlier-boot").unwrap();
    h.ok(&["start", "rb"]);
    assert_eq!(wait_http(&ip), "hello from rb\n");
    assert_eq!(links(&bridge), vec![bridge.clone()]);
    assert!(ruleset().contains(&format!(". {ip}")), "{}", ruleset());
}

#[test]
fn a_net_guarantee_on_a_network_without_bandwidth_is_a_rate_or_a_share_of_the_limit() {
    let Some(h) = TestHost::new("net_guarantee_nobw") else {
        return;
    };
    // `default` has no --bandwidth: a rate is a guarantee as it is...
    h.start_ve("rate", &["--net-guarantee", "10mbit"]);
    // ... and a share is of the VE's own --net-limit (the README's example).
    h.start_ve("share", &[]);
    h.ok(&[
        "set",
        "share",
        "--net-limit",
        "100mbit",
        "--net-guarantee",
        "10%",
    ]);
    let id = h.json(&["net", "show", "default"])["id"].as_u64().unwrap();
    let down = h.names().ifbs(u32::try_from(id).unwrap()).1;
    let out = sh(&["tc", "class", "show", "dev", &down]).unwrap();
    // Each VE's class: rate = its guarantee (10mbit both), ceil its limit.
    let rates: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("class htb 1:") && !l.contains("class htb 1:1 "))
        .collect();
    assert_eq!(rates.len(), 2, "{out}");
    for l in &rates {
        assert!(l.contains("rate 10Mbit"), "{out}");
    }
    assert!(rates.iter().any(|l| l.contains("ceil 100Mbit")), "{out}");
    // A share with neither a bandwidth nor a limit is refused, naming both.
    let e = h.fails(&["set", "rate", "--net-guarantee", "10%"]);
    assert!(
        e.contains("no --bandwidth and the VE no --net-limit"),
        "{e}"
    );
}

#[test]
fn a_port_published_from_a_nat_nic_beside_a_bridged_one_answers_on_the_hosts_lan_address() {
    let test = "publish_beside_bridged";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    // The LAN: its router 192.0.2.1; the host at 192.0.2.2 on its bridge br0.
    let Some(net) = lan(test, "up0", None, "192.0.2.1/24") else {
        return;
    };
    for cmd in [
        "ip link add br0 type bridge",
        "ip link set up0 master br0",
        "ip addr add 192.0.2.2/24 dev br0",
        "ip link set br0 up",
    ] {
        sh(&cmd.split(' ').collect::<Vec<_>>()).unwrap();
    }
    h.ok(&[
        "net",
        "create",
        "lan",
        "--mode",
        "bridged",
        "--subnet",
        "192.0.2.0/24",
        "--uplink",
        "br0",
        "--gateway",
        "192.0.2.1",
    ]);
    // eth0 on the LAN (its default route: the LAN's router), eth1 on the nat
    // network, which publishes port 80 as the host's 8080.
    h.start_ve(
        "two",
        &[
            "--net",
            "lan",
            "--ip",
            "192.0.2.20",
            "--net",
            "default",
            "--publish",
            "8080:80",
        ],
    );
    assert_eq!(lan_http(&net, "http://192.0.2.20/"), "hello from two\n");
    // The LAN reaches the published port on the host's address: the VE answers
    // from eth1's address through eth1, not through eth0's default route.
    assert_eq!(
        lan_http(&net, "http://192.0.2.2:8080/"),
        "hello from two\n",
        "LAN -> host 192.0.2.2:8080 -> VE's nat NIC"
    );
    let rules = h.exec("two", &["ip", "rule"]).stdout;
    assert!(
        rules.contains(&format!("from {}", ip_of_nic(&h, "two", 1))),
        "{rules}"
    );
    // And the VE's own traffic still leaves by eth0's default route.
    let r = h.exec("two", &["ip", "route", "get", "198.51.100.7"]);
    assert!(r.stdout.contains("via 192.0.2.1 dev eth0"), "{}", r.stdout);
}

/// The address of a VE's NIC number `i`.
fn ip_of_nic(h: &TestHost, ve: &str, i: usize) -> String {
    h.json(&["show", ve])["nics"][i]["ip"]
        .as_str()
        .expect("an address")
        .to_string()
}

/// Where the claim on `key` in `dir` (ids, ips/NET, userns) points.
fn claim(h: &TestHost, dir: &str, key: &str) -> Option<String> {
    std::fs::read_link(h.root().join(dir).join(key))
        .ok()
        .map(|t| t.to_string_lossy().into_owned())
}

/// The keys claimed in `dir`, sorted.
fn claimed(h: &TestHost, dir: &str) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(h.root().join(dir))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

fn range_key(h: &TestHost, ve: &str) -> String {
    let show = h.json(&["show", ve]);
    let u = &show["userns"];
    format!("{}-{}", u["base"], u["count"])
}

#[test]
fn claims_follow_create_rename_set_and_destroy_and_stale_or_edited_ones_do_no_harm() {
    let Some(h) = TestHost::new("claims") else {
        return;
    };
    // 14 host addresses, the gateway one: 13 VEs fit.
    h.ok(&[
        "net",
        "create",
        "tiny",
        "--mode",
        "nat",
        "--subnet",
        "10.75.0.0/28",
    ]);
    let net = |ve: &str| ["create", ve, "-T", "bb", "--net", "tiny"].map(str::to_string);
    let create = |ve: &str, extra: &[&str]| {
        let mut args: Vec<String> = net(ve).to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        h.run(&args)
    };
    for ve in ["a", "b"] {
        let r = create(ve, &[]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    let (ip_a, ip_b) = (ip_of(&h, "a"), ip_of(&h, "b"));
    let id_b = h.json(&["show", "b"])["id"].to_string();
    assert_eq!(claim(&h, "ips/tiny", &ip_a).as_deref(), Some("a"));
    assert_eq!(
        claim(&h, "userns", &range_key(&h, "a")).as_deref(),
        Some("a")
    );
    assert_eq!(claimed(&h, "userns").len(), 2);

    // A rename takes the claims along; a new address gives the old one back.
    h.ok(&["rename", "b", "b2"]);
    assert_eq!(claim(&h, "ips/tiny", &ip_b).as_deref(), Some("b2"));
    assert_eq!(claim(&h, "ids", &id_b).as_deref(), Some("b2"));
    assert_eq!(
        claim(&h, "userns", &range_key(&h, "b2")).as_deref(),
        Some("b2")
    );
    h.ok(&["set", "b2", "--net", "tiny", "--ip", "10.75.0.14"]);
    assert_eq!(claim(&h, "ips/tiny", "10.75.0.14").as_deref(), Some("b2"));
    assert_eq!(claim(&h, "ips/tiny", &ip_b), None);
    h.ok(&["set", "b2", "--userns", "host"]);
    assert_eq!(claimed(&h, "userns").len(), 1);

    // Destroy releases every claim of the VE.
    let (id_a, range_a) = (h.json(&["show", "a"])["id"].to_string(), range_key(&h, "a"));
    h.ok(&["destroy", "a"]);
    assert_eq!(claim(&h, "ips/tiny", &ip_a), None);
    assert_eq!(claim(&h, "ids", &id_a), None);
    assert_eq!(claim(&h, "userns", &range_a), None);

    // A create killed after its claims leaves them stale: its address can be
    // asked for again, and the name used again.
    let r = h
        .command()
        .args(net("k"))
        .args(["--ip", "10.75.0.9"])
        .env("VECTL_FAILPOINT", "create-after-volume")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!r.status.success());
    let r = h
        .command()
        .args(net("k"))
        .args(["--ip", "10.75.0.10"])
        .env("VECTL_FAILPOINT", "create-after-firewall")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!r.status.success());
    assert_eq!(claim(&h, "ips/tiny", "10.75.0.10").as_deref(), Some("k"));
    let r = create("k2", &["--ip", "10.75.0.10"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(claim(&h, "ips/tiny", "10.75.0.10").as_deref(), Some("k2"));
    let r = create("k", &[]);
    assert_eq!(r.code, 0, "{r:?}");

    // Stale claims on every free address (a VE without a config holds them):
    // a create on the full network frees them rather than refuse.
    let all: Vec<String> = (2..=14).map(|i| format!("10.75.0.{i}")).collect();
    for ip in &all {
        if claim(&h, "ips/tiny", ip).is_none() {
            std::os::unix::fs::symlink("ghost", h.root().join("ips/tiny").join(ip)).unwrap();
        }
    }
    let r = create("after-ghosts", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut ips: Vec<String> = ["b2", "k2", "k", "after-ghosts"]
        .iter()
        .map(|ve| ip_of(&h, ve))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 4, "duplicate addresses: {ips:?}");

    // A root without claims (made by a vectl before them) gets them built from
    // its configs: no address or range of a VE is given out again.
    std::fs::remove_dir_all(h.root().join("ips")).unwrap();
    std::fs::remove_dir_all(h.root().join("userns")).unwrap();
    let r = create("fresh", &[]);
    assert_eq!(r.code, 0, "{r:?}");
    let mut ips: Vec<String> = ["b2", "k2", "k", "after-ghosts", "fresh"]
        .iter()
        .map(|ve| ip_of(&h, ve))
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 5, "duplicate addresses: {ips:?}");
    let ranges: std::collections::BTreeSet<String> = ["k2", "k", "after-ghosts", "fresh"]
        .iter()
        .map(|ve| range_key(&h, ve))
        .collect();
    assert_eq!(ranges.len(), 4, "{ranges:?}");
    assert_eq!(claim(&h, "ips/tiny", &ip_of(&h, "k")).as_deref(), Some("k"));

    // A config edited by hand to another VE's address: the first to start
    // keeps it, the other is refused in one line.
    let path = h.root().join("ves/fresh.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let edited = text.replace(&ip_of(&h, "fresh"), &ip_of(&h, "k2"));
    assert_ne!(text, edited);
    std::fs::write(&path, edited).unwrap();
    h.ok(&["start", "k2"]);
    let e = h.fails(&["start", "fresh"]);
    assert!(e.contains("is VE k2's too"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    h.ok(&["stop", "--fast", "k2"]);
    // The net goes with its claims.
    for ve in ["b2", "k2", "k", "after-ghosts", "fresh"] {
        h.ok(&["destroy", ve]);
    }
    h.ok(&["net", "rm", "tiny"]);
    assert!(!h.root().join("ips/tiny").exists());
}
