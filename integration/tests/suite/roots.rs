//! Two state roots on one host (one network namespace, one registry of roots):
//! each owns the host objects it makes, named from its identity, and neither
//! sees nor touches the other's — VEs of the same names and ids included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use integration::{TestHost, sh};
use netns::model::Names;

use crate::common::qos_knobs;
use crate::network::{http, ip_of, links, wait_http};

/// The ruleset of one nft table (`ip` family), or "" if there is none.
fn table(name: &str) -> String {
    sh(&["nft", "list", "table", "ip", name]).unwrap_or_default()
}

/// The `vectl.toml` setting `key` of a root, as text.
fn setting(h: &TestHost, key: &str) -> String {
    let text = std::fs::read_to_string(h.root().join("vectl.toml")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn two_roots_on_one_host_own_their_objects_and_never_touch_each_others() {
    let test = "two_roots";
    let Some(a) = TestHost::new(test) else {
        return;
    };
    let Some(b) = a.beside(test) else {
        return;
    };
    let (na, nb) = (a.names().clone(), b.names().clone());
    assert_ne!(na.identity(), nb.identity());
    assert!(na.identity().is_some() && nb.identity().is_some());
    // Each root knows the other.
    let info = b.json(&["host", "info"]);
    assert_eq!(info["other_roots"][0], a.root().to_str().unwrap(), "{info}");
    assert_eq!(info["host_names"]["nft_tables"], nb.table(), "{info}");

    sh(&["ip", "link", "set", "lo", "up"]).unwrap();
    // The same VE name and id in both roots.
    a.start_ve("web1", &["--publish", "18080:80", "--ram", "256M"]);
    b.start_ve("web1", &["--ram", "128M"]);
    assert_eq!(
        a.json(&["show", "web1"])["id"],
        b.json(&["show", "web1"])["id"]
    );
    assert_ne!(a.init_pid("web1"), b.init_pid("web1"));
    let (ipa, ipb) = (ip_of(&a, "web1"), ip_of(&b, "web1"));
    assert_ne!(ipa, ipb);
    assert_eq!(wait_http(&ipa), "hello from web1\n");
    assert_eq!(wait_http(&ipb), "hello from web1\n");
    assert_eq!(http("127.0.0.1:18080").unwrap(), "hello from web1\n");
    // Disjoint default subnets, own bridges and tables.
    let sa = a.json(&["net", "show", "default"])["subnet"].clone();
    let sb = b.json(&["net", "show", "default"])["subnet"].clone();
    assert_ne!(sa, sb);
    assert_eq!(links(&na.bridge(1)), vec![na.bridge(1)]);
    assert_eq!(links(&nb.bridge(1)), vec![nb.bridge(1)]);
    assert!(table(&na.table()).contains(&format!(". {ipa}")));
    assert!(!table(&na.table()).contains(&format!(". {ipb}")));
    assert!(table(&nb.table()).contains(&format!(". {ipb}")));

    // What one root cannot take from the other: the subnet, the host port, the
    // cgroup parent, the identity.
    let e = b.fails(&[
        "net",
        "create",
        "x",
        "--mode",
        "nat",
        "--subnet",
        sa.as_str().unwrap(),
    ]);
    assert!(
        e.contains(&format!("of root {}", a.root().display())),
        "{e}"
    );
    let e = b.fails(&["set", "web1", "--publish", "18080:80"]);
    assert!(
        e.contains("host port 18080/tcp") && e.contains(&a.root().display().to_string()),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    // Root b's changes leave root a's VE as it was.
    b.ok(&["init"]);
    b.ok(&["set", "web1", "--ram", "200M"]);
    assert_eq!(qos_knobs(&a, "web1").memory_max, Some(256 << 20));
    assert_eq!(qos_knobs(&b, "web1").memory_max, Some(200 << 20));
    let r = b.exec("web1", &["cat", "/proc/1/cgroup"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(http("127.0.0.1:18080").unwrap(), "hello from web1\n");
    assert!(
        table(&na.table()).contains("18080 : "),
        "{}",
        table(&na.table())
    );
    b.ok(&["stop", "--fast", "web1"]);
    b.ok(&["destroy", "--force", "web1"]);
    b.ok(&["net", "rm", "default"]);
    assert!(links(&nb.prefix()).is_empty(), "{:?}", links(&nb.prefix()));
    assert_eq!(a.json(&["show", "web1"])["status"], "running");
    assert_eq!(wait_http(&ipa), "hello from web1\n");
    assert!(table(&na.table()).contains(&format!(". {ipa}")));

    // Root b's teardown takes its own objects and none of root a's.
    b.ok(&["net", "create", "n2", "--mode", "nat"]);
    b.start_ve("web2", &["--net", "n2"]);
    let torn = b.json(&["host", "teardown", "--fast"]);
    assert_eq!(torn["stopped"][0], "web2", "{torn}");
    assert!(links(&nb.prefix()).is_empty(), "{:?}", links(&nb.prefix()));
    assert_eq!(table(&nb.table()), "");
    for dir in b.cgroup_parents() {
        assert!(!dir.exists(), "{} is left", dir.display());
    }
    assert!(
        std::fs::read_link(b.registry().join(nb.identity().unwrap())).is_err(),
        "b still registered"
    );
    assert_eq!(wait_http(&ipa), "hello from web1\n");
    assert_eq!(http("127.0.0.1:18080").unwrap(), "hello from web1\n");
    // ... and the next command on it makes what it needs again.
    b.ok(&["start", "web2"]);
    assert_eq!(b.json(&["show", "web2"])["status"], "running");
    assert!(std::fs::read_link(b.registry().join(nb.identity().unwrap())).is_ok());
    drop(b);
    assert_eq!(wait_http(&ipa), "hello from web1\n");
}

#[test]
fn a_root_from_before_identities_keeps_its_names_beside_a_new_one() {
    let test = "legacy_root";
    let Some(old) = TestHost::bare_with(test, &["--backend", "dir", "--no-net"]) else {
        return;
    };
    // A root made by a vectl without identities: its settings have none.
    let path = old.root().join("vectl.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let id = setting(&old, "identity");
    assert!(!id.is_empty(), "{text}");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("identity = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    old.import_busybox().unwrap();
    old.ok(&["net", "create", "default", "--mode", "nat"]);
    old.start_ve("w", &[]);
    let legacy = Names::new(None);
    assert_eq!(links(&legacy.bridge(1)), vec!["vn1b".to_string()]);
    let ip = ip_of(&old, "w");
    assert!(
        table("vectl").contains(&format!(". {ip}")),
        "{}",
        table("vectl")
    );
    assert_eq!(
        old.json(&["host", "info"])["identity"],
        serde_json::Value::Null
    );

    let Some(new) = old.beside(test) else {
        return;
    };
    let n = new.names().clone();
    assert!(n.identity().is_some());
    new.start_ve("w", &[]);
    assert_eq!(links(&n.bridge(1)), vec![n.bridge(1)]);
    assert_eq!(wait_http(&ip_of(&new, "w")), "hello from w\n");
    assert!(!table("vectl").contains(&ip_of(&new, "w")));
    new.ok(&["host", "teardown", "--fast"]);
    drop(new);
    assert_eq!(links("vn1b"), vec!["vn1b".to_string()]);
    assert_eq!(wait_http(&ip), "hello from w\n");
    assert!(table("vectl").contains(&format!(". {ip}")));
}

#[test]
fn a_teardown_unmounts_the_pool_and_the_next_command_mounts_it_again() {
    let test = "teardown_btrfs";
    let Some(h) = TestHost::with_btrfs(test, "1G") else {
        return;
    };
    h.start_ve("t", &[]);
    h.ok(&["exec", "t", "--", "sh", "-c", "echo kept > /root/file"]);
    let pool = h.root().join("pool");
    let image = h.root().join("pool.img");
    let loops = || sh(&["losetup", "-n", "-O", "NAME", "-j", image.to_str().unwrap()]).unwrap();
    assert!(!loops().trim().is_empty());
    let torn = h.json(&["host", "teardown", "--fast"]);
    assert_eq!(torn["stopped"][0], "t", "{torn}");
    assert_eq!(torn["unmounted"], pool.to_str().unwrap(), "{torn}");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == pool.to_str());
    assert!(!mounted, "the pool is still mounted");
    // The loop device goes once the kernel lets go of the file system.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !loops().trim().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "loop device left: {}",
            loops()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(links(&h.names().prefix()).is_empty());
    // The next command mounts the pool again; the VE's files are all there.
    h.ok(&["start", "t"]);
    assert_eq!(h.exec("t", &["cat", "/root/file"]).stdout, "kept\n");
}
