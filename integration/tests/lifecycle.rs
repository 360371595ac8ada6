//! The VE lifecycle on the real kernel: create, start, exec, stop, destroy.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use integration::TestHost;

#[test]
fn a_ve_runs_its_init_as_pid_1_and_serves_http() {
    let Some(h) = TestHost::new("a_ve_runs_its_init_as_pid_1_and_serves_http") else {
        return;
    };
    h.start_ve(
        "web1",
        &["--ram", "256M", "--cpu-limit", "50%", "--pids", "200"],
    );
    let ps = h.exec("web1", &["ps", "-o", "pid,comm"]);
    assert_eq!(ps.code, 0, "{}", ps.stderr);
    let first = ps.stdout.lines().nth(1).unwrap();
    assert_eq!(
        first.split_whitespace().collect::<Vec<_>>(),
        ["1", "init"],
        "{}",
        ps.stdout
    );
    let page = h.exec("web1", &["wget", "-qO-", "http://127.0.0.1/"]);
    assert_eq!(page.stdout.trim(), "hello from web1");
    h.ok(&["stop", "--fast", "web1"]);
    h.ok(&["destroy", "web1"]);
    assert!(h.json(&["list"]).as_array().unwrap().is_empty());
}
