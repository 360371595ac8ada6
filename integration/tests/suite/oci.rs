//! Templates from OCI image layouts: `template import|update NAME --oci-layout DIR`
//! applies the image's layers with their whiteouts, a VE runs from the result, and a
//! corrupt layout is refused in one line naming the file, leaving no version and no
//! staging leftovers behind.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use serde_json::{Value, json};

/// Runs a shell command line on the host, asserts it worked, returns stdout.
#[track_caller]
fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Stores `data` as a blob of the layout at `dir`; its descriptor.
fn blob(dir: &Path, media_type: &str, data: &[u8]) -> Value {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let tmp = dir.join("blob.tmp");
    fs::write(&tmp, data).unwrap();
    let sum = sh(&format!("sha256sum {}", tmp.display()));
    let hex = sum.split_whitespace().next().unwrap().to_string();
    fs::rename(&tmp, blobs.join(&hex)).unwrap();
    json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": data.len()})
}

fn blob_path(dir: &Path, desc: &Value) -> PathBuf {
    let hex = desc["digest"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap();
    dir.join("blobs/sha256").join(hex)
}

/// A tar layer of (path, mode, content) files and directories (content `None`),
/// owned by root.
fn layer(entries: &[(&str, u32, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, mode, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let data = data.unwrap_or("");
        h.set_entry_type(if data.is_empty() && path.ends_with('/') {
            tar::EntryType::Directory
        } else {
            tar::EntryType::Regular
        });
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

/// What a template's directory holds, hidden entries included.
fn entries(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

const RCS: &str =
    "#!/bin/sh\necho \"hello from $(hostname)\" > /var/www/index.html\ntouch /run/oci-rcs\n";

#[test]
fn import_an_oci_layout_with_whiteouts_and_run_a_ve_on_it() {
    let Some(h) = TestHost::new("oci_import") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Layer 1: the busybox tree and an extra init script, as tar.gz.
    let tree = w.join("rootfs");
    integration::copy_busybox_rootfs(&tree).unwrap();
    fs::write(tree.join("etc/init.d/old-script"), "#!/bin/sh\n").unwrap();
    sh(&format!(
        "tar -C {} -czf {}/layer1.tar.gz .",
        tree.display(),
        w.display()
    ));
    // Layer 2: a new file, a whiteout of an existing one, an opaque /etc/init.d
    // with a new rcS (which marks that it ran).
    let l2 = layer(&[
        ("etc/oci-added", 0o644, Some("added\n")),
        ("etc/.wh.os-release", 0o644, None),
        ("etc/init.d/", 0o755, None),
        ("etc/init.d/.wh..wh..opq", 0o644, None),
        ("etc/init.d/rcS", 0o755, Some(RCS)),
    ]);
    let layout = w.join("layout");
    fs::create_dir(&layout).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let layers = vec![
        blob(
            &layout,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &fs::read(w.join("layer1.tar.gz")).unwrap(),
        ),
        blob(&layout, "application/vnd.oci.image.layer.v1.tar", &l2),
    ];
    let config = blob(
        &layout,
        "application/vnd.oci.image.config.v1+json",
        br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config,
        "layers": layers,
    });
    let mut mdesc = blob(
        &layout,
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    mdesc["annotations"] = json!({"org.opencontainers.image.ref.name": "bb-oci"});
    let index = json!({"schemaVersion": 2, "manifests": [mdesc.clone()]});
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let dir = layout.to_str().unwrap();

    let out = h.ok(&["template", "import", "oci", "--oci-layout", dir]);
    assert!(out.contains("oci@1"), "{out}");

    // The version is the busybox tree with layer 2 applied, and no markers.
    fs::remove_file(tree.join("etc/os-release")).unwrap();
    fs::remove_file(tree.join("etc/init.d/old-script")).unwrap();
    fs::write(tree.join("etc/init.d/rcS"), RCS).unwrap();
    fs::write(tree.join("etc/oci-added"), "added\n").unwrap();
    fs::set_permissions(
        tree.join("etc/oci-added"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let tdir = h.root().join("pool/templates/oci/1");
    let got = snapshot(&tdir, false, &|_| false);
    assert_eq!(diff(&snapshot(&tree, false, &|_| false), &got), "");
    let markers: Vec<_> = got
        .keys()
        .filter(|p| p.to_string_lossy().contains(".wh."))
        .collect();
    assert!(markers.is_empty(), "{markers:?}");
    let list = h.json(&["template", "list"]);
    let oci = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "oci")
        .unwrap();
    let source = oci["source"].as_str().unwrap();
    assert_eq!(
        source,
        format!("oci:{dir}@{}", mdesc["digest"].as_str().unwrap())
    );

    // A VE runs from it: the new rcS ran, the whited-out file is gone.
    h.ok(&["create", "from-oci", "--template", "oci"]);
    h.ok(&["start", "from-oci"]);
    assert_eq!(wait_http(&h, "from-oci"), "hello from from-oci");
    assert_eq!(h.exec("from-oci", &["test", "-e", "/run/oci-rcs"]).code, 0);
    assert_eq!(
        h.exec("from-oci", &["cat", "/etc/oci-added"]).stdout,
        "added\n"
    );
    assert_ne!(
        h.exec("from-oci", &["test", "-e", "/etc/os-release"]).code,
        0
    );
    h.ok(&["stop", "--fast", "from-oci"]);

    // `template update` with DIR:REF publishes the next version.
    let named = format!("{dir}:bb-oci");
    let out = h.ok(&["template", "update", "oci", "--oci-layout", &named]);
    assert!(out.contains("oci@2"), "{out}");
    assert_eq!(template_versions(&h), ["bb@1", "oci@1", "oci@2"]);

    // Corrupt layouts: one line naming the file, no new version, no leftovers.
    let bad = w.join("bad");
    let reset = || {
        let _ = fs::remove_dir_all(&bad);
        sh(&format!("cp -a {} {}", layout.display(), bad.display()));
    };
    let l2_blob = blob_path(&bad, &layers[1]);
    let index_file = bad.join("index.json");
    let l1_blob = blob_path(&bad, &layers[0]);
    // (what, how to corrupt the copy, the file the error names, why)
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, String, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "a layer whose content does not match its digest",
            Box::new(|| {
                let mut data = fs::read(&l2_blob).unwrap();
                data[520] ^= 0x20;
                fs::write(&l2_blob, data).unwrap();
            }),
            l2_blob.display().to_string(),
            "digest mismatch",
        ),
        (
            "index.json that is not JSON",
            Box::new(|| fs::write(&index_file, "{\"schemaVersion\": 2,").unwrap()),
            index_file.display().to_string(),
            "not a valid image index",
        ),
        (
            "a missing layer",
            Box::new(|| fs::remove_file(&l1_blob).unwrap()),
            l1_blob.display().to_string(),
            "missing blob sha256:",
        ),
    ];
    let before = template_versions(&h);
    for (what, corrupt, file, reason) in &cases {
        reset();
        corrupt();
        let path = bad.to_str().unwrap();
        for args in [
            ["template", "update", "oci", "--oci-layout", path],
            ["template", "import", "fresh", "--oci-layout", path],
        ] {
            let e = h.fails(&args);
            assert!(
                e.contains(file.as_str()) && e.contains(reason),
                "{what}: {args:?}: {e}"
            );
        }
        assert_eq!(template_versions(&h), before, "{what}");
        assert_eq!(
            entries(&h.root().join("pool/templates/oci")),
            [".highest", "1", "1.toml", "2", "2.toml"],
            "{what}"
        );
        assert!(!h.root().join("pool/templates/fresh").exists(), "{what}");
    }
}
