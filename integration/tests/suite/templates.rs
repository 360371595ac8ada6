//! Templates: import from a directory and from tar, tar.gz and tar.zst archives;
//! versions (`bb@1`, `bb@2`) and VEs pinned to theirs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn rootfs() -> &'static Path {
    integration::busybox_rootfs().unwrap()
}

/// Runs a shell command line on the host and asserts it worked.
#[track_caller]
fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(prog: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {prog}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_fixture_import_from_a_directory_is_bb_1() {
    let Some(h) = TestHost::new("the_fixture_import_from_a_directory_is_bb_1") else {
        return;
    };
    let list = h.json(&["template", "list"]);
    assert_eq!(template_versions(&h), ["bb@1"]);
    let t = &list[0];
    assert!(t["files"].as_u64().unwrap() > 100, "{t}");
    assert!(t["size_bytes"].as_u64().unwrap() > 500_000, "{t}");
    // The version directory holds the tree as imported.
    let tdir = h.root().join("pool/templates/bb/1");
    let ours = snapshot(&tdir, false, &|_| false);
    let theirs = snapshot(rootfs(), false, &|_| false);
    assert_eq!(
        diff(&theirs, &ours),
        "",
        "the imported tree differs from the source"
    );
}

#[test]
fn import_from_tar_gz_and_zst_archives() {
    let test = "import_from_tar_gz_and_zst_archives";
    let Some(h) = TestHost::new(test) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let src = rootfs().display().to_string();
    let w = work.path().display().to_string();
    sh(&format!("tar -C {src} -cf {w}/rootfs.tar ."));
    sh(&format!("tar -C {src} -czf {w}/rootfs.tar.gz ."));
    let mut archives = vec![("plain", "rootfs.tar"), ("gz", "rootfs.tar.gz")];
    if have("zstd") {
        sh(&format!(
            "tar -C {src} -cf - . | zstd -q -o {w}/rootfs.tar.zst"
        ));
        archives.push(("zst", "rootfs.tar.zst"));
    } else {
        integration::skip(test, "no zstd command: the .tar.zst import is not tested");
    }
    let reference = snapshot(&h.root().join("pool/templates/bb/1"), false, &|_| false);
    for (name, file) in &archives {
        let path: PathBuf = work.path().join(file);
        let out = h.ok(&[
            "template",
            "import",
            name,
            "--from-tar",
            path.to_str().unwrap(),
        ]);
        assert!(out.contains(&format!("{name}@1")), "{out}");
        let tdir = h.root().join("pool/templates").join(name).join("1");
        let got = snapshot(&tdir, false, &|_| false);
        assert_eq!(
            diff(&reference, &got),
            "",
            "{file}: the imported tree differs from the directory import"
        );
        // A VE runs from it.
        let ve = format!("from-{name}");
        h.ok(&["create", &ve, "--template", name]);
        h.ok(&["start", &ve]);
        assert_eq!(wait_http(&h, &ve), format!("hello from {ve}"));
        assert_eq!(
            h.exec(&ve, &["readlink", "/bin/ls"]).stdout.trim(),
            "/bin/busybox"
        );
        assert_eq!(
            h.json(&["show", &ve])["template"],
            format!("{name}@1").as_str()
        );
        h.ok(&["stop", "--fast", &ve]);
    }
    let mut want: Vec<String> = archives.iter().map(|(n, _)| format!("{n}@1")).collect();
    want.push("bb@1".into());
    want.sort();
    let mut got = template_versions(&h);
    got.sort();
    assert_eq!(got, want);
}

#[test]
fn a_second_import_is_the_next_version_and_ves_stay_pinned() {
    let Some(h) = TestHost::new("a_second_import_is_the_next_version_and_ves_stay_pinned") else {
        return;
    };
    // Version 2 differs from version 1 by one file.
    let work = tempfile::tempdir().unwrap();
    let v2 = work.path().join("rootfs");
    sh(&format!("cp -a {} {}", rootfs().display(), v2.display()));
    fs::write(v2.join("etc/release"), "two\n").unwrap();
    let out = h.ok(&[
        "template",
        "import",
        "bb",
        "--from-dir",
        v2.to_str().unwrap(),
    ]);
    assert!(out.contains("bb@2"), "{out}");
    assert_eq!(template_versions(&h), ["bb@1", "bb@2"]);

    h.ok(&["create", "pinned", "--template", "bb@1"]);
    h.ok(&["create", "latest", "--template", "bb"]);
    assert!(config_text(&h, "pinned").contains("\"bb@1\""));
    assert!(config_text(&h, "latest").contains("\"bb@2\""));
    h.ok(&["start", "pinned"]);
    h.ok(&["start", "latest"]);
    assert_ne!(h.exec("pinned", &["test", "-e", "/etc/release"]).code, 0);
    assert_eq!(h.exec("latest", &["cat", "/etc/release"]).stdout, "two\n");

    // A third version does not move either of them.
    let out = h.ok(&[
        "template",
        "import",
        "bb",
        "--from-dir",
        rootfs().to_str().unwrap(),
    ]);
    assert!(out.contains("bb@3"), "{out}");
    h.ok(&["restart", "--fast", "pinned", "latest"]);
    assert_eq!(h.json(&["show", "pinned"])["template"], "bb@1");
    assert_eq!(h.json(&["show", "latest"])["template"], "bb@2");
    assert_ne!(h.exec("pinned", &["test", "-e", "/etc/release"]).code, 0);
    assert_eq!(h.exec("latest", &["cat", "/etc/release"]).stdout, "two\n");
    let show = h.json(&["show", "pinned"]);
    assert!(
        show["template_dir"]
            .as_str()
            .unwrap()
            .ends_with("templates/bb/1"),
        "{show}"
    );
}

#[test]
fn update_usage_log_rm_and_gc_keep_the_versions_ves_use() {
    let Some(h) = TestHost::new("template_update_rm_gc") else {
        return;
    };
    // bb@2 by `template update`: one file more.
    let work = tempfile::tempdir().unwrap();
    let v2 = work.path().join("rootfs");
    sh(&format!("cp -a {} {}", rootfs().display(), v2.display()));
    fs::write(v2.join("etc/release"), "two\n").unwrap();
    h.start_ve("old", &[]);
    let out = h.ok(&[
        "template",
        "update",
        "bb",
        "--from-dir",
        v2.to_str().unwrap(),
        "-m",
        "adds /etc/release",
    ]);
    assert!(out.contains("bb@2"), "{out}");
    h.start_ve("new", &[]);
    // The running VE did not move; a restart does not move it either.
    h.ok(&["stop", "--fast", "old"]);
    h.ok(&["start", "old"]);
    assert_ne!(h.exec("old", &["test", "-e", "/etc/release"]).code, 0);
    assert_eq!(h.exec("new", &["cat", "/etc/release"]).stdout, "two\n");

    let log = h.json(&["template", "log", "bb"]);
    assert_eq!(log[0]["version"], 1);
    assert_eq!(log[0]["ves"], serde_json::json!(["old"]));
    assert_eq!(log[0]["latest"], false);
    assert_eq!(log[1]["version"], 2);
    assert_eq!(log[1]["ves"], serde_json::json!(["new"]));
    assert_eq!(log[1]["latest"], true);
    assert_eq!(log[1]["message"], "adds /etc/release");
    assert_eq!(h.json(&["template", "usage"]).as_array().unwrap().len(), 2);
    let show = h.json(&["template", "show", "bb"]);
    assert_eq!(
        (show["version"].clone(), show["latest"].clone()),
        (2.into(), true.into())
    );
    assert!(show["path"].as_str().unwrap().ends_with("templates/bb/2"));
    assert_eq!(h.json(&["template", "show", "bb@1"])["ves"][0], "old");

    // Versions in use stay.
    let e = h.fails(&["template", "rm", "bb@1"]);
    assert!(e.contains("template bb@1: in use by VE old"), "{e}");
    let e = h.fails(&["template", "rm", "bb"]);
    assert!(e.contains("in use by VE"), "{e}");
    assert!(
        h.ok(&["template", "gc"])
            .contains("no template version removed")
    );
    assert_eq!(template_versions(&h), ["bb@1", "bb@2"]);
    // Unused and not the latest: gc takes it.
    h.ok(&["destroy", "--force", "old"]);
    assert!(h.ok(&["template", "gc"]).contains("removed bb@1"));
    assert_eq!(template_versions(&h), ["bb@2"]);
    assert!(!h.root().join("pool/templates/bb/1").exists());
    assert!(!h.root().join("pool/templates/bb/1.toml").exists());
    // The latest stays through gc; `rm` takes it once no VE uses it.
    assert!(
        h.ok(&["template", "gc"])
            .contains("no template version removed")
    );
    // Numbers are not reused: with bb@3 gone, the next version is bb@4.
    h.ok(&[
        "template",
        "update",
        "bb",
        "--from-dir",
        v2.to_str().unwrap(),
    ]);
    h.ok(&["template", "rm", "bb@3"]);
    let out = h.ok(&[
        "template",
        "update",
        "bb",
        "--from-dir",
        v2.to_str().unwrap(),
    ]);
    assert!(out.contains("bb@4"), "{out}");
    h.ok(&["template", "rm", "bb@4"]);
    h.ok(&["destroy", "--force", "new"]);
    h.ok(&["template", "rm", "bb@2"]);
    assert!(template_versions(&h).is_empty());
    assert!(!h.root().join("pool/templates/bb").exists());

    // Bad input: one line each, nothing changed.
    for (args, want) in [
        (
            vec![
                "template",
                "update",
                "nosuch",
                "--from-dir",
                v2.to_str().unwrap(),
            ],
            "no such template",
        ),
        (vec!["template", "rm", "bb@9"], "no such template"),
        (
            vec!["template", "show", "bb@x"],
            "invalid template reference",
        ),
        (vec!["template", "log", "nosuch"], "no such template"),
    ] {
        let e = h.fails(&args);
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(!h.root().join("pool/templates/nosuch").exists());
}

#[test]
fn template_versions_on_the_btrfs_pool_are_removed_with_their_subvolumes() {
    let Some(h) = TestHost::with_btrfs("template_rm_btrfs", "1G") else {
        return;
    };
    h.ok(&[
        "template",
        "update",
        "bb",
        "--from-dir",
        rootfs().to_str().unwrap(),
    ]);
    h.ok(&["create", "v", "--template", "bb@2"]);
    // bb@1: a read-only subvolume nobody uses.
    assert!(h.ok(&["template", "gc"]).contains("removed bb@1"));
    assert_eq!(template_versions(&h), ["bb@2"]);
    assert!(!h.root().join("pool/templates/bb/1").exists());
    h.ok(&["start", "v"]);
    assert_eq!(h.exec("v", &["test", "-x", "/bin/busybox"]).code, 0);
}

/// A tar header for a member of `data` named `name` as it is, byte for byte
/// (the tar crate's own path setters refuse `..` and absolute names).
fn raw_header(name: &str, kind: tar::EntryType, data: &[u8]) -> tar::Header {
    let mut hd = tar::Header::new_ustar();
    let raw = &mut hd.as_old_mut().name;
    raw[..name.len()].copy_from_slice(name.as_bytes());
    hd.set_entry_type(kind);
    hd.set_mode(0o644);
    hd.set_uid(0);
    hd.set_gid(0);
    hd.set_mtime(0);
    hd.set_size(data.len() as u64);
    hd
}

/// A member of a test archive: name (raw), kind, content, link target.
type RawMember<'a> = (&'a str, tar::EntryType, &'a [u8], Option<&'a Path>);

/// Writes a tar archive of raw members (device nodes get major 8, minor 0).
fn write_raw_tar(path: &Path, members: &[RawMember<'_>]) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for &(name, kind, data, link) in members {
        let mut hd = raw_header(name, kind, data);
        if let Some(l) = link {
            hd.set_link_name(l).unwrap();
        }
        if kind.is_block_special() || kind.is_character_special() {
            hd.set_device_major(8).unwrap();
            hd.set_device_minor(0).unwrap();
        }
        hd.set_cksum();
        b.append(&hd, data).unwrap();
    }
    b.finish().unwrap();
}

#[test]
fn hostile_tar_members_never_land_outside_the_template() {
    let Some(h) = TestHost::new("template_hostile_tar") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let tar = work.path().join("evil.tar");
    let tag = integration::unique("evil");
    // ../ paths, an absolute path, a symlink to a directory outside followed by a
    // file through it, device nodes; plus one ordinary file. Names are written
    // into the headers raw: the tar crate's own path setters refuse such names.
    let up = format!("../../{tag}-up");
    let abs = format!("/{tag}-abs");
    let through = format!("link/{tag}-through");
    write_raw_tar(
        &tar,
        &[
            ("bin/ok", tar::EntryType::Regular, b"fine\n", None),
            (&up, tar::EntryType::Regular, b"x", None),
            (&abs, tar::EntryType::Regular, b"x", None),
            ("link", tar::EntryType::Symlink, b"", Some(&outside)),
            (&through, tar::EntryType::Regular, b"x", None),
            ("dev/sda", tar::EntryType::Block, b"", None),
            ("dev/mem", tar::EntryType::Char, b"", None),
        ],
    );
    let import = |tar: &Path| {
        h.run(&[
            "template",
            "import",
            "evil",
            "--from-tar",
            tar.to_str().unwrap(),
        ])
    };
    let r = import(&tar);
    // Nothing outside the template changed.
    let leaked: Vec<String> = [
        h.root().join(format!("pool/templates/{tag}-up")),
        h.root().join(format!("pool/{tag}-up")),
        PathBuf::from(format!("/{tag}-abs")),
        outside.join(format!("{tag}-through")),
    ]
    .iter()
    .filter(|p| p.symlink_metadata().is_ok())
    .map(|p| p.display().to_string())
    .collect();
    assert!(
        leaked.is_empty(),
        "written outside the template: {leaked:?}"
    );
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    // The member written through the symlink refuses the whole archive, in one
    // line naming it, and leaves no version behind.
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("cannot unpack link/{tag}-through: refused"))
            && r.stderr.contains("outside the template"),
        "{}",
        r.stderr
    );
    assert!(!h.root().join("pool/templates/evil").exists());

    // Without it the archive imports: the ../ member is skipped, the absolute
    // one lands inside, device nodes are skipped, all said in a warning.
    let tar2 = work.path().join("evil2.tar");
    write_raw_tar(
        &tar2,
        &[
            ("bin/ok", tar::EntryType::Regular, b"fine\n", None),
            (&up, tar::EntryType::Regular, b"x", None),
            (&abs, tar::EntryType::Regular, b"x", None),
            ("dev/sda", tar::EntryType::Block, b"", None),
        ],
    );
    let r = import(&tar2);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let t = h.root().join("pool/templates/evil/1");
    assert_eq!(fs::read_to_string(t.join("bin/ok")).unwrap(), "fine\n");
    assert!(t.join(format!("{tag}-abs")).is_file());
    assert!(!t.join("dev/sda").exists());
    assert!(r.stderr.contains("device node"), "{}", r.stderr);
    assert!(
        !h.root().join(format!("pool/templates/{tag}-up")).exists()
            && !h.root().join(format!("pool/{tag}-up")).exists()
            && !PathBuf::from(format!("/{tag}-abs")).exists()
    );
}

#[test]
fn neither_a_ve_nor_the_host_alters_a_published_version() {
    let Some(h) = TestHost::with_btrfs("template_immutable", "1G") else {
        return;
    };
    let tdir = h.root().join("pool/templates/bb/1");
    let before = fs::read(tdir.join("etc/inittab")).unwrap();
    h.start_ve("w", &[]);
    let r = h.exec(
        "w",
        &[
            "sh",
            "-c",
            "echo '# mine' >> /etc/inittab && rm /bin/true && touch /bin/new",
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read(tdir.join("etc/inittab")).unwrap(), before);
    assert!(tdir.join("bin/true").symlink_metadata().is_ok());
    assert!(!tdir.join("bin/new").exists());
    // The version is a read-only subvolume: not even the host's root writes it.
    let e = fs::write(tdir.join("etc/x"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // Another VE on it sees the template as published.
    h.start_ve("v", &[]);
    assert_eq!(h.exec("v", &["test", "-e", "/bin/true"]).code, 0);
}

#[test]
fn template_log_lists_package_changes_of_debian_based_versions() {
    let Some(h) = TestHost::new("template_log_packages") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("rootfs");
    sh(&format!("cp -a {} {}", rootfs().display(), tree.display()));
    let status = |pkgs: &[(&str, &str)]| {
        fs::create_dir_all(tree.join("var/lib/dpkg")).unwrap();
        let text: Vec<String> = pkgs
            .iter()
            .map(|(p, v)| format!("Package: {p}\nStatus: install ok installed\nVersion: {v}\n"))
            .collect();
        fs::write(tree.join("var/lib/dpkg/status"), text.join("\n")).unwrap();
    };
    status(&[("openssl", "3.0.11-1"), ("curl", "7.88")]);
    h.ok(&[
        "template",
        "import",
        "deb",
        "--from-dir",
        tree.to_str().unwrap(),
    ]);
    status(&[("openssl", "3.0.13-1"), ("curl", "7.88"), ("jq", "1.6")]);
    h.ok(&[
        "template",
        "update",
        "deb",
        "--from-dir",
        tree.to_str().unwrap(),
        "-m",
        "patch",
    ]);
    let log = h.json(&["template", "log", "deb"]);
    assert!(log[0].get("packages").is_none(), "{log}");
    assert_eq!(
        log[1]["packages"],
        serde_json::json!([
            {"package": "jq", "from": null, "to": "1.6"},
            {"package": "openssl", "from": "3.0.11-1", "to": "3.0.13-1"}
        ])
    );
    let text = h.ok(&["template", "log", "deb"]);
    assert!(text.contains("openssl 3.0.11-1 -> 3.0.13-1"), "{text}");
    // A tree without a dpkg database has no package list (bb).
    assert!(
        h.json(&["template", "log", "bb"])[0]
            .get("packages")
            .is_none()
    );
}
