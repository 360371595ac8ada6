//! What vectl is shipped with: `vectl completion bash|zsh|fish` (scripts each
//! shell accepts, offering vectl's visible commands), `vectl man DIR` (a
//! section-8 page per visible command), their one-line refusals, and the
//! Debian package of `scripts/build-deb.sh`: its control fields and maintainer
//! scripts, and every file in it, extracted and compared with what it was made
//! from. The package is built from the suite's own vectl binary
//! (`VECTL_DEB_BIN`). One test installs it on this host for real, as a user
//! would (`dpkg -i`, `apt-get -f install`), uses it and purges it, leaving no
//! trace; that one needs root, the rest does not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use integration::{Run, repo_dir, skip, vectl_bin};

const SHELLS: [&str; 3] = ["bash", "zsh", "fish"];

/// `vectl ARGS` outside any root, stdin null.
fn vectl(args: &[&str]) -> Run {
    Command::new(vectl_bin())
        .args(args)
        .env_remove("VECTL_ROOT")
        .stdin(Stdio::null())
        .output()
        .unwrap()
        .into()
}

/// Whether `prog` is a program on PATH.
fn installed(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a program to its end; panics naming it if it cannot be started.
fn run(cmd: &mut Command) -> Run {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
        .into()
}

/// Asserts that `r` is a refusal: exit `code`, nothing on stdout, one line on
/// stderr starting with `vectl: ` and naming each of `names`.
#[track_caller]
fn assert_refused(r: &Run, code: i32, names: &[&str]) {
    assert_eq!(r.code, code, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert_eq!(r.stderr.lines().count(), 1, "{r:?}");
    assert!(r.stderr.starts_with("vectl: "), "{r:?}");
    for n in names {
        assert!(r.stderr.contains(n), "does not name {n}: {r:?}");
    }
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

/// The visible commands of `vectl` as its `--help` lists them, nested ones
/// too (`["template", "import"]`), without `help`.
fn visible_commands() -> Vec<Vec<String>> {
    fn below(path: &[String], out: &mut Vec<Vec<String>>) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let r = vectl(&args);
        assert_eq!(r.code, 0, "vectl {args:?}: {r:?}");
        let Some((_, list)) = r.stdout.split_once("\nCommands:\n") else {
            return;
        };
        // "  NAME  about", wrapped lines indented further; a blank line ends it.
        for line in list.lines().take_while(|l| !l.trim().is_empty()) {
            let Some(rest) = line.strip_prefix("  ") else {
                continue;
            };
            if rest.starts_with(' ') {
                continue;
            }
            let name = rest.split_whitespace().next().unwrap();
            if name == "help" {
                continue;
            }
            let mut sub = path.to_vec();
            sub.push(name.to_string());
            out.push(sub.clone());
            below(&sub, out);
        }
    }
    let mut out = Vec::new();
    below(&[], &mut out);
    out
}

/// `vectl man` into a new directory below `dir`; the pages by file name.
fn man_pages(dir: &Path) -> BTreeMap<String, String> {
    let to = dir.join("new/man8");
    let r = vectl(&["man", to.to_str().unwrap()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.is_empty() && r.stderr.is_empty(), "{r:?}");
    fs::read_dir(&to)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, fs::read_to_string(e.path()).unwrap())
        })
        .collect()
}

/// The workspace's version, as `[workspace.package]` of Cargo.toml says.
fn workspace_version() -> String {
    let text = fs::read_to_string(repo_dir().join("Cargo.toml")).unwrap();
    let section = text.split("[workspace.package]").nth(1).unwrap();
    let line = section.lines().find(|l| l.starts_with("version")).unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

#[test]
fn completion_scripts_pass_their_shells_checks_and_offer_the_visible_commands() {
    let test = "completion_scripts_pass_their_shells_checks_and_offer_the_visible_commands";
    let dir = tempfile::tempdir().unwrap();
    for shell in SHELLS {
        let r = vectl(&["completion", shell]);
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        assert!(r.stderr.is_empty(), "{shell}: {r:?}");
        let script = &r.stdout;
        // Every visible command is in it, no hidden one.
        for word in ["import-host", "template", "completion", "snapshot"] {
            assert!(script.contains(word), "{shell}: no {word}");
        }
        for hidden in ["migrate-receive", "replica-receive"] {
            assert!(!script.contains(hidden), "{shell}: offers {hidden}");
        }
        let file = dir.path().join(format!("vectl.{shell}"));
        fs::write(&file, script).unwrap();
        if !installed(shell) {
            // Not a skip: the script is still checked, by what it must say.
            let marker = match shell {
                "zsh" => "#compdef vectl\n",
                "fish" => "complete -c vectl ",
                _ => "complete -F _vectl ",
            };
            assert!(script.contains(marker), "{shell}: no {marker:?}");
            eprintln!("{test}: {shell} is not installed: checked its script's {marker:?} only");
            continue;
        }
        let check = match shell {
            "fish" => run(Command::new("fish").arg("--no-execute").arg(&file)),
            _ => run(Command::new(shell).arg("-n").arg(&file)),
        };
        assert_eq!(check.code, 0, "{shell} refuses the script: {check:?}");
        assert!(check.stderr.is_empty(), "{shell}: {check:?}");
    }

    // Loaded, the scripts complete: bash always (the test suite runs on it).
    let complete = |words: &str, cword: usize| -> Vec<String> {
        let line = format!(
            "source {f}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             _vectl vectl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            f = dir.path().join("vectl.bash").display()
        );
        let r = run(Command::new("bash").args(["-c", &line]));
        assert_eq!(r.code, 0, "{words}: {r:?}");
        r.stdout.lines().map(str::to_string).collect()
    };
    assert_eq!(complete("vectl templ", 1), ["template"]);
    assert_eq!(complete("vectl template imp", 2), ["import"]);
    assert_eq!(complete("vectl m", 1), ["migrate"]);
    let shells = complete("vectl completion ''", 2);
    for shell in SHELLS {
        assert!(shells.iter().any(|s| s == shell), "{shells:?}");
    }
    assert!(complete("vectl create --te", 2).contains(&"--template".to_string()));
    if installed("fish") {
        let line = format!(
            "source {}; complete -C 'vectl templ'",
            dir.path().join("vectl.fish").display()
        );
        let r = run(Command::new("fish").args(["-c", &line]));
        assert!(r.stdout.starts_with("template\t"), "{r:?}");
    }
}

#[test]
fn man_pages_cover_every_visible_command() {
    let dir = tempfile::tempdir().unwrap();
    let pages = man_pages(dir.path());
    let commands = visible_commands();
    assert!(commands.len() > 40, "{commands:?}");
    assert!(
        !commands
            .iter()
            .any(|c| c[0] == "man" || c[0].ends_with("-receive"))
    );
    assert!(commands.contains(&vec!["template".to_string(), "import".to_string()]));
    let mut want: BTreeSet<String> = commands
        .iter()
        .map(|c| format!("vectl-{}.8", c.join("-")))
        .collect();
    want.insert("vectl.8".into());
    let have: BTreeSet<String> = pages.keys().cloned().collect();
    assert_eq!(have, want, "pages written / visible commands");

    let groff = installed("groff");
    let mut all = vec![vec![]];
    all.extend(commands);
    for command in &all {
        let words: Vec<&str> = std::iter::once("vectl")
            .chain(command.iter().map(String::as_str))
            .collect();
        let title = words.join("-");
        let file = format!("{title}.8");
        let text = &pages[&file];
        // man(7): the title line comes first (groff's string definitions for
        // quotes may go before it).
        let first = text
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
            .unwrap_or_default();
        assert!(
            first.starts_with(&format!(".TH {title} 8 ")),
            "{file}: {first}"
        );
        for section in [".SH NAME", ".SH SYNOPSIS", ".SH OPTIONS"] {
            assert!(text.lines().any(|l| l == section), "{file}: no {section}");
        }
        // The synopsis is the command as typed, in bold (roff escapes `-`).
        let typed = words.join(" ").replace('-', "\\-");
        let synopsis = text.split(".SH SYNOPSIS\n").nth(1).unwrap();
        assert!(
            synopsis.starts_with(&format!("\\fB{typed}\\fR ")),
            "{file}: {}",
            synopsis.lines().next().unwrap_or_default()
        );
        if groff {
            let r = run(Command::new("groff")
                .args(["-man", "-Tutf8", "-ww", "-z"])
                .arg(dir.path().join("new/man8").join(&file)));
            assert!(r.code == 0 && r.stderr.is_empty(), "groff on {file}: {r:?}");
        }
    }
    // The top page lists the commands' pages; a command's page has its options.
    assert!(pages["vectl.8"].contains("vectl\\-create(8)"));
    assert!(pages["vectl-create.8"].contains("\\-\\-template"));
    assert!(pages["vectl-template-import.8"].contains("\\-\\-from\\-dir"));
}

#[test]
fn completion_and_man_refuse_bad_input_in_one_line() {
    // An unknown shell: bad usage, one line (not clap's several).
    let r = vectl(&["completion", "tcsh"]);
    assert_refused(&r, 2, &["tcsh"]);
    let r = vectl(&["completion", "bash", "zsh"]);
    assert_eq!(r.code, 2, "{r:?}");

    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // DIR is a file, or below one.
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    let r = vectl(&["man", file.to_str().unwrap()]);
    assert_refused(&r, 1, &[file.to_str().unwrap(), "not a directory"]);
    let below = file.join("man8");
    let r = vectl(&["man", below.to_str().unwrap()]);
    assert_refused(&r, 1, &[below.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(&file).unwrap(), "x");

    // DIR cannot be written: a read-only directory, for a user who is not
    // root (as root, vectl runs as nobody: root writes anywhere).
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let mut cmd = Command::new(vectl_bin());
    if nix::unistd::geteuid().is_root() {
        // Where nobody cannot reach the suite's binary, a copy it can run.
        let probe = run(Command::new(vectl_bin())
            .arg("--version")
            .uid(65534)
            .gid(65534));
        if probe.code != 0 {
            let copy = dir.path().join("vectl");
            fs::copy(vectl_bin(), &copy).unwrap();
            cmd = Command::new(copy);
        }
        cmd.uid(65534).gid(65534);
    }
    let r = run(cmd.arg("man").arg(&ro).env_remove("VECTL_ROOT"));
    assert_refused(&r, 1, &[ro.to_str().unwrap(), "Permission denied"]);
    assert_eq!(fs::read_dir(&ro).unwrap().count(), 0);
}

/// The files of `dpkg-deb -c`: path (`./usr/bin/vectl`) → (mode, owner).
fn deb_contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let r = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].to_string(), (f[0].to_string(), f[1].to_string()))
        })
        .collect()
}

/// The control fields of a .deb (`dpkg-deb -f`): name → value, continuation
/// lines joined with newlines.
fn deb_fields(deb: &Path) -> BTreeMap<String, String> {
    let r = run(Command::new("dpkg-deb").arg("-f").arg(deb));
    assert_eq!(r.code, 0, "{r:?}");
    let mut fields: BTreeMap<String, String> = BTreeMap::new();
    let mut last = String::new();
    for line in r.stdout.lines() {
        if line.starts_with(' ') {
            let v = fields.get_mut(&last).unwrap();
            v.push('\n');
            v.push_str(line);
        } else {
            let (k, v) = line.split_once(':').unwrap();
            last = k.to_string();
            fields.insert(last.clone(), v.trim().to_string());
        }
    }
    fields
}

#[test]
fn the_debian_package_holds_vectl_its_units_completions_and_man_pages() {
    let test = "the_debian_package_holds_vectl_its_units_completions_and_man_pages";
    if !installed("dpkg-deb") {
        skip(test, "dpkg-deb is not installed (no Debian package tools)");
        return;
    }
    let repo = repo_dir();
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let build = |bin: &Path, out: &Path| {
        run(Command::new(repo.join("scripts/build-deb.sh"))
            .arg(out)
            .env("VECTL_DEB_BIN", bin)
            // xz takes ~10 s on the unoptimized binary; the format is the same.
            .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip"))
    };

    // A binary that is not there: refused, naming it, no package.
    let missing = work.path().join("no-such-vectl");
    let r = build(&missing, &out);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains(missing.to_str().unwrap()), "{r:?}");
    assert!(!out.exists() || fs::read_dir(&out).unwrap().count() == 0);

    let r = build(&vectl_bin(), &out);
    assert_eq!(r.code, 0, "{r:?}");
    let version = workspace_version();
    let arch = run(Command::new("dpkg").arg("--print-architecture"))
        .stdout
        .trim()
        .to_string();
    let deb = out.join(format!("vectl_{version}_{arch}.deb"));
    assert_eq!(r.stdout.trim(), deb.to_str().unwrap(), "{r:?}");
    assert!(deb.is_file());
    // Nothing else left in OUTDIR (the staging tree is gone).
    assert_eq!(fs::read_dir(&out).unwrap().count(), 1);

    // Control fields.
    let fields = deb_fields(&deb);
    assert_eq!(fields["Package"], "vectl");
    assert_eq!(fields["Version"], version);
    assert_eq!(fields["Architecture"], arch);
    assert!(fields["Maintainer"].contains('<') && fields["Maintainer"].ends_with('>'));
    assert!(fields["Description"].lines().count() > 2, "{fields:?}");
    assert!(fields["Installed-Size"].parse::<u64>().unwrap() > 0);
    let depends: Vec<&str> = fields["Depends"].split(", ").collect();
    for need in ["libc6", "btrfs-progs", "nftables"] {
        assert!(
            depends.iter().any(|d| d.split(' ').next() == Some(need)),
            "Depends: {depends:?} lacks {need}"
        );
    }
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert_eq!(info.code, 0, "{info:?}");
    for script in ["postinst", "prerm", "postrm", "md5sums", "control"] {
        assert!(info.stdout.contains(script), "{}", info.stdout);
    }

    // The files, owned by root.
    let units: Vec<String> = fs::read_dir(repo.join("scripts/systemd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| {
            [".service", ".socket", ".timer"]
                .iter()
                .any(|s| n.ends_with(s))
        })
        .collect();
    assert!(
        units.contains(&"vectl-supervisor.service".to_string()),
        "{units:?}"
    );
    let pages = man_pages(work.path());
    let contents = deb_contents(&deb);
    let mut want: Vec<(String, &str)> = vec![
        ("usr/bin/vectl".into(), "-rwxr-xr-x"),
        (
            "usr/share/bash-completion/completions/vectl".into(),
            "-rw-r--r--",
        ),
        (
            "usr/share/zsh/vendor-completions/_vectl".into(),
            "-rw-r--r--",
        ),
        (
            "usr/share/fish/vendor_completions.d/vectl.fish".into(),
            "-rw-r--r--",
        ),
        ("usr/share/doc/vectl/README.md".into(), "-rw-r--r--"),
        ("usr/share/doc/vectl/copyright".into(), "-rw-r--r--"),
        ("usr/share/vectl/busybox-rootfs.sh".into(), "-rwxr-xr-x"),
        (
            "lib/systemd/system/lxcfs.service.d/vectl.conf".into(),
            "-rw-r--r--",
        ),
    ];
    want.extend(
        units
            .iter()
            .map(|u| (format!("lib/systemd/system/{u}"), "-rw-r--r--")),
    );
    want.extend(
        pages
            .keys()
            .map(|p| (format!("usr/share/man/man8/{p}.gz"), "-rw-r--r--")),
    );
    for (path, mode) in &want {
        let got = contents.get(&format!("./{path}"));
        assert_eq!(got.map(|g| g.0.as_str()), Some(*mode), "{path}: {got:?}");
    }
    let files = contents
        .values()
        .filter(|(m, _)| m.starts_with('-'))
        .count();
    assert_eq!(files, want.len(), "files in the package: {contents:#?}");
    for (path, (_, owner)) in &contents {
        assert_eq!(owner, "root/root", "{path}");
    }

    // Unpacked (not installed): each file is what it was made from.
    let x = work.path().join("x");
    let r = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
    assert_eq!(r.code, 0, "{r:?}");
    let r = run(Command::new(x.join("usr/bin/vectl")).arg("--version"));
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, format!("vectl {version}").as_str())
    );
    for u in &units {
        let text = fs::read_to_string(x.join("lib/systemd/system").join(u)).unwrap();
        let orig = fs::read_to_string(repo.join("scripts/systemd").join(u)).unwrap();
        assert_eq!(text, orig.replace("/usr/local/bin/vectl", "/usr/bin/vectl"));
        for exec in text.lines().filter(|l| l.starts_with("Exec")) {
            assert!(!exec.contains("/usr/local/"), "{u}: {exec}");
        }
    }
    let dropin =
        fs::read_to_string(x.join("lib/systemd/system/lxcfs.service.d/vectl.conf")).unwrap();
    let orig = fs::read_to_string(repo.join("scripts/systemd/lxcfs-vectl.conf")).unwrap();
    assert_eq!(
        dropin,
        orig.replace("/usr/local/bin/vectl", "/usr/bin/vectl")
    );
    let shipped = [
        ("bash", "usr/share/bash-completion/completions/vectl"),
        ("zsh", "usr/share/zsh/vendor-completions/_vectl"),
        ("fish", "usr/share/fish/vendor_completions.d/vectl.fish"),
    ];
    for (shell, path) in shipped {
        let r = vectl(&["completion", shell]);
        assert_eq!(
            fs::read_to_string(x.join(path)).unwrap(),
            r.stdout,
            "{path}"
        );
    }
    for (page, text) in &pages {
        let gz = x.join("usr/share/man/man8").join(format!("{page}.gz"));
        let r = run(Command::new("gzip").arg("-dc").arg(&gz));
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(&r.stdout, text, "{page}");
    }
    for (from, to) in [
        ("README.md", "usr/share/doc/vectl/README.md"),
        (
            "integration/rootfs/busybox-rootfs.sh",
            "usr/share/vectl/busybox-rootfs.sh",
        ),
    ] {
        assert_eq!(
            fs::read(repo.join(from)).unwrap(),
            fs::read(x.join(to)).unwrap(),
            "{to}"
        );
    }
    let copyright = fs::read_to_string(x.join("usr/share/doc/vectl/copyright")).unwrap();
    assert!(copyright.contains("License: Apache-2.0"), "{copyright}");

    // The maintainer scripts: sh accepts them, with the package's units named.
    let control = work.path().join("control");
    let r = run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(r.code, 0, "{r:?}");
    for script in ["postinst", "prerm", "postrm"] {
        let path: PathBuf = control.join(script);
        let r = run(Command::new("sh").arg("-n").arg(&path));
        assert_eq!(r.code, 0, "{script}: {r:?}");
        let text = fs::read_to_string(&path).unwrap();
        assert!(!text.contains("@UNITS@"), "{script}");
        assert!(text.contains("/run/systemd/system"), "{script}");
        if script != "postinst" {
            for u in &units {
                assert!(text.contains(u.as_str()), "{script} does not name {u}");
            }
        }
    }
    maintainer_scripts_act_as_units_sh_and_stop_no_ve(test, &control, &units);
    let md5 = run(Command::new("md5sum")
        .arg("-c")
        .arg("--quiet")
        .arg(control.join("md5sums"))
        .current_dir(&x));
    assert_eq!(md5.code, 0, "{md5:?}");
}

/// Runs the package's maintainer scripts (in `control`) as dpkg would, each in
/// a mount namespace of its own whose /run says whether systemd runs, with
/// systemctl, deb-systemd-helper and deb-systemd-invoke replaced by stand-ins
/// that record their calls; checks those calls. Needs root (the namespace).
fn maintainer_scripts_act_as_units_sh_and_stop_no_ve(test: &str, control: &Path, units: &[String]) {
    if !integration::is_root(test) {
        return;
    }
    let fake = tempfile::tempdir().unwrap();
    for tool in ["systemctl", "deb-systemd-helper", "deb-systemd-invoke"] {
        let path = fake.path().join(tool);
        fs::write(
            &path,
            "#!/bin/sh\necho \"${0##*/} $*\" >>\"$VECTL_FAKE_LOG\"\n",
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let log = fake.path().join("log");
    let calls = |script: &str, args: &[&str], systemd: bool| -> Vec<String> {
        fs::write(&log, "").unwrap();
        let mut setup = "mount -t tmpfs vectl-test /run".to_string();
        if systemd {
            setup.push_str(" && mkdir -p /run/systemd/system");
        }
        let path = format!(
            "{}:{}",
            fake.path().display(),
            std::env::var("PATH").unwrap()
        );
        let r = run(Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!("{setup} && exec sh \"$0\" \"$@\""))
            .arg(control.join(script))
            .args(args)
            .env("PATH", path)
            .env("VECTL_FAKE_LOG", &log)
            .env_remove("DPKG_ROOT"));
        assert_eq!(r.code, 0, "{script} {args:?}: {r:?}");
        fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let enable = [
        "deb-systemd-helper --quiet was-enabled vectl-supervisor.service",
        "deb-systemd-helper enable vectl-supervisor.service",
        "deb-systemd-helper --quiet was-enabled vectl.service",
        "deb-systemd-helper enable vectl.service",
    ];
    // A first install: what units.sh does (enable and start the supervisor
    // and the boot unit; the metrics units are installed, not enabled).
    let mut want = vec!["systemctl daemon-reload"];
    want.extend(enable);
    want.extend([
        "deb-systemd-invoke start vectl-supervisor.service",
        "deb-systemd-invoke start vectl.service",
    ]);
    assert_eq!(calls("postinst", &["configure", ""], true), lines(&want));
    // An upgrade starts and restarts nothing.
    let mut want = vec!["systemctl daemon-reload"];
    want.extend(enable);
    assert_eq!(
        calls("postinst", &["configure", "0.0.1"], true),
        lines(&want)
    );
    // Without systemd: enabled for the next boot, nothing run.
    assert_eq!(calls("postinst", &["configure", ""], false), lines(&enable));

    // Removal stops the units but vectl.service (its stop stops every VE);
    // an upgrade stops nothing.
    assert_eq!(calls("prerm", &["upgrade", "9.9.9"], true), lines(&[]));
    let stopped: BTreeSet<String> = calls("prerm", &["remove"], true).into_iter().collect();
    let want: BTreeSet<String> = units
        .iter()
        .filter(|u| *u != "vectl.service" && !u.contains("@."))
        .map(|u| format!("deb-systemd-invoke stop {u}"))
        .collect();
    assert!(stopped.contains("deb-systemd-invoke stop vectl-supervisor.service"));
    assert_eq!(stopped, want);
    assert_eq!(calls("prerm", &["remove"], false), lines(&[]));

    assert_eq!(
        calls("postrm", &["remove"], true),
        lines(&["systemctl daemon-reload"])
    );
    let purged = calls("postrm", &["purge"], true);
    let mut want = vec!["systemctl daemon-reload".to_string()];
    want.extend(
        units
            .iter()
            .map(|u| format!("deb-systemd-helper purge {u}")),
    );
    assert_eq!(
        purged.iter().collect::<BTreeSet<_>>(),
        want.iter().collect::<BTreeSet<_>>()
    );
}

/// The standard PATH of a root shell: dpkg wants ldconfig and
/// start-stop-daemon on it.
const ROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `dpkg-query`'s status of vectl's package (`install ok installed`), `None`
/// while dpkg does not know it.
fn vectl_package_status() -> Option<String> {
    let r = run(Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "vectl"])
        .env("LC_ALL", "C"));
    (r.code == 0 && !r.stdout.ends_with(" not-installed")).then(|| r.stdout.trim().to_string())
}

/// Every path below each of `dirs` (that exists), sorted.
fn paths_below(dirs: &[&str]) -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            out.insert(e.path());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for d in dirs {
        walk(Path::new(d), &mut out);
    }
    out
}

/// Where systemd's enablement of units is recorded: the links
/// (`deb-systemd-helper enable`, `systemctl enable`) and deb-systemd-helper's
/// state. A purge leaves these as they were before the install.
const ENABLEMENT: [&str; 3] = [
    "/etc/systemd/system",
    "/var/lib/systemd/deb-systemd-helper-enabled",
    "/var/lib/systemd/deb-systemd-helper-masked",
];

/// The processes on this host running `exe`.
fn procs_running(exe: &Path) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
                let p = p.to_string_lossy();
                p.strip_suffix(" (deleted)").unwrap_or(&p) == exe.to_string_lossy()
            })
        })
        .collect()
}

/// vectl's package as installed on this host by the test: runs dpkg and apt
/// with a policy-rc.d that records what the maintainer scripts would start
/// and forbids it (Debian's way to install without starting services; it is
/// /usr/sbin/policy-rc.d only in a mount namespace of each command's own, never
/// on the host). Dropped, pass or fail, it purges the package.
struct InstalledPackage {
    policy: tempfile::TempDir,
}

impl InstalledPackage {
    fn new() -> Self {
        let policy = tempfile::Builder::new()
            .prefix("vectl-policy-")
            .tempdir()
            .unwrap();
        fs::set_permissions(policy.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let log = policy.path().join("log");
        fs::write(&log, "").unwrap();
        let script = policy.path().join("policy-rc.d");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\n# vectl's package test: nothing starts\necho \"$*\" >>'{}'\nexit 101\n",
                log.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        InstalledPackage { policy }
    }

    /// What policy-rc.d was asked (`vectl-supervisor.service start`), one line
    /// each, since the last call.
    fn policy_asked(&self) -> Vec<String> {
        let log = self.policy.path().join("log");
        let text = fs::read_to_string(&log).unwrap();
        fs::write(&log, "").unwrap();
        text.lines().map(str::to_string).collect()
    }

    /// `prog ARGS` as root would type it (C locale, noninteractive), with the
    /// policy-rc.d in place. Where the overlay cannot be mounted it is needed
    /// only if systemd runs (without it, the scripts start nothing).
    fn cmd(&self, prog: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(format!(
                "mount -t overlay vectl-test-policy -o lowerdir='{}':/usr/sbin /usr/sbin \
                 || [ ! -d /run/systemd/system ] || exit 99; exec \"$0\" \"$@\"",
                self.policy.path().display()
            ))
            .arg(prog)
            .args(args)
            .env("PATH", ROOT_PATH)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env_remove("DPKG_ROOT")
            .stdin(Stdio::null());
        cmd
    }
}

impl Drop for InstalledPackage {
    fn drop(&mut self) {
        if let Some(status) = vectl_package_status() {
            eprintln!("removing vectl's package ({status}) after the test");
            match self.cmd("dpkg", &["--purge", "vectl"]).output() {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "dpkg --purge vectl failed: {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("dpkg --purge vectl: {e}"),
            }
        }
    }
}

/// A Depends or Recommends entry: `name`, or `name (OP VERSION)`; the first of
/// alternatives.
fn relation(entry: &str) -> (String, Option<(String, String)>) {
    let first = entry.split('|').next().unwrap().trim();
    match first.split_once('(') {
        None => (first.to_string(), None),
        Some((name, rest)) => {
            let rest = rest.trim_end_matches(')');
            let (op, version) = rest.trim().split_once(' ').unwrap();
            (
                name.trim().to_string(),
                Some((op.to_string(), version.trim().to_string())),
            )
        }
    }
}

/// The packages holding the shared libraries `bin` links (its NEEDED entries,
/// found where the dynamic loader finds them), by `dpkg -S`.
fn library_packages(bin: &Path) -> BTreeSet<String> {
    let dynamic = run(Command::new("readelf").arg("-d").arg(bin));
    assert_eq!(dynamic.code, 0, "{dynamic:?}");
    let needed: Vec<String> = dynamic
        .stdout
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(|l| {
            l.split('[')
                .nth(1)
                .unwrap()
                .trim_end_matches(']')
                .to_string()
        })
        .collect();
    assert!(
        needed.iter().any(|n| n.starts_with("libc.so")),
        "{needed:?}"
    );
    let ldd = run(Command::new("ldd").arg(bin));
    assert_eq!(ldd.code, 0, "{ldd:?}");
    let mut out = BTreeSet::new();
    for soname in &needed {
        let path = ldd
            .stdout
            .lines()
            .find_map(|l| {
                // "libc.so.6 => /lib/.../libc.so.6 (0x...)", or the loader's
                // "/lib64/ld-linux-x86-64.so.2 (0x...)".
                let l = l.trim();
                match l.split_once(" => ") {
                    Some((name, rest)) => {
                        (name == soname).then(|| rest.split(" (").next().unwrap().to_string())
                    }
                    None => {
                        let path = l.split(" (").next().unwrap();
                        path.ends_with(&format!("/{soname}"))
                            .then(|| path.to_string())
                    }
                }
            })
            .unwrap_or_else(|| panic!("ldd does not find {soname}: {ldd:?}"));
        // Merged /usr: dpkg may know the file by its other name.
        let other = match path.strip_prefix("/usr") {
            Some(p) => p.to_string(),
            None => format!("/usr{path}"),
        };
        let owner = [&path, &other]
            .into_iter()
            .map(|p| run(Command::new("dpkg").args(["-S", p]).env("LC_ALL", "C")))
            .find(|r| r.code == 0)
            .unwrap_or_else(|| panic!("no package holds {path}"));
        // "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"
        let pkg = owner
            .stdout
            .lines()
            .next()
            .unwrap()
            .split(':')
            .next()
            .unwrap();
        out.insert(pkg.to_string());
    }
    out
}

/// The Depends of the package on a fresh machine: what it names are exactly
/// the packages of its shared libraries, btrfs-progs and nftables; apt can
/// install each (`apt-cache policy`: a candidate of the version asked); and
/// `dpkg -i` then `apt-get -f install` on a machine without btrfs-progs and
/// nftables installs them and configures vectl, as apt simulates it on this
/// host's package lists with a dpkg status file that lacks them (nothing is
/// downloaded or installed; no `apt-get update`).
fn depends_resolve_on_a_fresh_machine(deb: &Path, work: &Path) {
    let fields = deb_fields(deb);
    let depends: Vec<(String, Option<(String, String)>)> =
        fields["Depends"].split(',').map(relation).collect();
    let names: BTreeSet<String> = depends.iter().map(|d| d.0.clone()).collect();
    let x = work.join("fresh-x");
    let r = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x));
    assert_eq!(r.code, 0, "{r:?}");
    let libs = library_packages(&x.join("usr/bin/vectl"));
    let mut want = libs.clone();
    want.extend(["btrfs-progs".to_string(), "nftables".to_string()]);
    assert_eq!(names, want, "Depends: {}", fields["Depends"]);
    let recommends: BTreeSet<String> = fields["Recommends"]
        .split(',')
        .map(|e| relation(e).0)
        .collect();
    let want: BTreeSet<String> = ["lxcfs", "openssh-client", "rsync"]
        .map(String::from)
        .into();
    assert_eq!(recommends, want);

    let wanted = depends
        .iter()
        .cloned()
        .chain(recommends.iter().map(|n| (n.clone(), None)));
    for (name, version) in wanted {
        let policy = run(Command::new("apt-cache")
            .args(["policy", &name])
            .env("LC_ALL", "C"));
        assert_eq!(policy.code, 0, "{policy:?}");
        let candidate = policy
            .stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Candidate: "))
            .unwrap_or_else(|| panic!("apt knows no {name}: {policy:?}"));
        assert_ne!(candidate, "(none)", "apt cannot install {name}: {policy:?}");
        if let Some((op, v)) = version {
            let ok = run(Command::new("dpkg").args(["--compare-versions", candidate, &op, &v]));
            assert_eq!(ok.code, 0, "{name}: candidate {candidate} is not {op} {v}");
        }
    }

    // This host's dpkg status without the Depends that are no library, and
    // vectl unpacked with its Depends unmet: where `dpkg -i` leaves it on a
    // fresh machine.
    let status = fs::read_to_string("/var/lib/dpkg/status").unwrap();
    let missing: Vec<&String> = names.iter().filter(|n| !libs.contains(*n)).collect();
    let mut fake: Vec<String> = status
        .split("\n\n")
        .filter(|s| {
            let pkg = s.lines().find_map(|l| l.strip_prefix("Package: "));
            !pkg.is_some_and(|p| missing.iter().any(|m| m.as_str() == p.trim()))
        })
        .map(|s| s.trim_matches('\n').to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let control = run(Command::new("dpkg-deb").arg("-f").arg(deb));
    assert_eq!(control.code, 0, "{control:?}");
    let (first, rest) = control.stdout.split_once('\n').unwrap();
    fake.push(format!(
        "{first}\nStatus: install ok unpacked\n{}",
        rest.trim_end()
    ));
    let fake_status = work.join("fresh-status");
    fs::write(&fake_status, fake.join("\n\n") + "\n").unwrap();
    let r = run(Command::new("apt-get")
        .arg("-s")
        .arg(format!("-o=Dir::State::status={}", fake_status.display()))
        .args(["-f", "install"])
        .env("LC_ALL", "C"));
    assert_eq!(r.code, 0, "{r:?}");
    for m in &missing {
        assert!(
            r.stdout
                .lines()
                .any(|l| l.starts_with(&format!("Inst {m} "))),
            "apt-get -f install would not install {m}: {r:?}"
        );
    }
    assert!(
        r.stdout.lines().any(|l| l.starts_with("Conf vectl ")),
        "{r:?}"
    );
    assert!(r.stdout.contains(" 0 to remove"), "{r:?}");
}

#[test]
fn the_debian_package_installs_with_dpkg_and_apt_runs_and_purges_without_a_trace() {
    let test = "the_debian_package_installs_with_dpkg_and_apt_runs_and_purges_without_a_trace";
    for tool in ["dpkg", "dpkg-deb", "apt-get", "apt-cache", "readelf", "ldd"] {
        if !installed(tool) {
            skip(
                test,
                &format!("{tool} is not installed (no Debian package tools)"),
            );
            return;
        }
    }
    if !integration::is_root(test) {
        return;
    }
    // Someone's own install is theirs: the test would remove it.
    if vectl_package_status().is_some() {
        skip(
            test,
            "vectl's Debian package is installed on this host already",
        );
        return;
    }
    let repo = repo_dir();
    let work = tempfile::tempdir().unwrap();
    let r = run(Command::new(repo.join("scripts/build-deb.sh"))
        .arg(work.path().join("out"))
        .env("VECTL_DEB_BIN", vectl_bin())
        .env("DPKG_DEB_COMPRESSOR_TYPE", "gzip"));
    assert_eq!(r.code, 0, "{r:?}");
    let deb = PathBuf::from(r.stdout.trim());
    let version = workspace_version();

    depends_resolve_on_a_fresh_machine(&deb, work.path());

    // Files of the package that are on this host already (a hand install, the
    // quick start's units enabled) would be overwritten, then purged.
    let contents = deb_contents(&deb);
    let of_kind = |kind: char| -> Vec<PathBuf> {
        contents
            .iter()
            .filter(|(_, (mode, _))| mode.starts_with(kind))
            .map(|(p, _)| Path::new("/").join(p.trim_start_matches("./")))
            .collect()
    };
    let files = of_kind('-');
    let dirs = of_kind('d');
    assert!(
        dirs.contains(&PathBuf::from("/usr/share/vectl/")),
        "{dirs:?}"
    );
    let dirs_before: BTreeSet<&PathBuf> = dirs.iter().filter(|d| d.is_dir()).collect();
    let units: Vec<String> = files
        .iter()
        .filter(|p| p.parent() == Some(Path::new("/lib/systemd/system")))
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert!(
        units.contains(&"vectl-supervisor.service".to_string()),
        "{units:?}"
    );
    let enablement_before = paths_below(&ENABLEMENT);
    let ours: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .chain(enablement_before.iter().filter(|p| {
            units.iter().any(|u| {
                p.file_name()
                    .is_some_and(|n| n.to_str() == Some(u.as_str()))
            })
        }))
        .collect();
    if !ours.is_empty() {
        skip(
            test,
            &format!("vectl is installed on this host already, not by its package: {ours:?}"),
        );
        return;
    }

    let pkg = InstalledPackage::new();
    let dpkg = run(&mut pkg.cmd("dpkg", &["-i", deb.to_str().unwrap()]));
    assert_eq!(dpkg.code, 0, "dpkg -i: {dpkg:?}");
    // The maintainer scripts ask to start vectl-supervisor.service and
    // vectl.service (as scripts/units.sh does), only where systemd runs.
    let systemd = Path::new("/run/systemd/system").is_dir();
    let asked = pkg.policy_asked();
    if systemd {
        assert_eq!(
            asked,
            ["vectl-supervisor.service start", "vectl.service start"],
            "{dpkg:?}"
        );
    } else {
        assert!(asked.is_empty(), "{asked:?}");
        assert!(
            dpkg.stdout
                .contains("vectl: no systemd: run `vectl supervise --all-roots`"),
            "{dpkg:?}"
        );
    }

    // The second half of a user's install: nothing to do here, and nothing
    // downloaded (`--no-download` makes sure: no network in tests).
    let apt = run(&mut pkg.cmd(
        "apt-get",
        &[
            "-f",
            "install",
            "-y",
            "--no-download",
            "-o",
            "DPkg::Lock::Timeout=120",
        ],
    ));
    assert_eq!(apt.code, 0, "apt-get -f install: {apt:?}");
    assert!(
        apt.stdout
            .contains("0 upgraded, 0 newly installed, 0 to remove"),
        "{apt:?}"
    );
    assert!(
        !apt.stdout.contains("Need to get") && !apt.stdout.contains("Get:"),
        "{apt:?}"
    );
    assert!(pkg.policy_asked().is_empty());
    assert_eq!(
        vectl_package_status().as_deref(),
        Some("install ok installed")
    );

    let listed = run(Command::new("dpkg").args(["-L", "vectl"]));
    assert_eq!(listed.code, 0, "{listed:?}");
    let listed: Vec<PathBuf> = listed.stdout.lines().map(PathBuf::from).collect();
    for f in &files {
        assert!(listed.contains(f), "dpkg -L does not list {}", f.display());
        assert!(f.is_file(), "{} is not installed", f.display());
    }

    // As a user: the command, its manual, its completion, its units.
    let r = run(Command::new("/usr/bin/vectl")
        .arg("--version")
        .env_remove("VECTL_ROOT"));
    assert_eq!(
        (r.code, r.stdout.trim()),
        (0, format!("vectl {version}").as_str())
    );
    // The OCI runtime, as engines call it: the link, answering as vectl-oci.
    let r = run(Command::new("/usr/bin/vectl-oci").arg("features"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("\"ociVersionMax\""), "{r:?}");
    assert_eq!(
        fs::read_link("/usr/bin/vectl-oci").unwrap(),
        PathBuf::from("vectl")
    );
    // On PATH (where the quick start's /usr/local/bin/vectl is not first).
    if !Path::new("/usr/local/bin/vectl").exists() {
        let r = run(Command::new("sh")
            .args(["-c", "command -v vectl"])
            .env("PATH", ROOT_PATH));
        assert_eq!(r.stdout.trim(), "/usr/bin/vectl", "{r:?}");
    }
    let page = Path::new("/usr/share/man/man8/vectl-template-import.8.gz");
    assert!(page.is_file());
    if installed("man") {
        for (name, file) in [
            ("vectl", "/usr/share/man/man8/vectl.8.gz"),
            ("vectl-template-import", page.to_str().unwrap()),
        ] {
            let r = run(Command::new("man")
                .args(["-w", "8", name])
                .env("PATH", ROOT_PATH)
                .env("LC_ALL", "C"));
            assert_eq!(
                (r.code, r.stdout.trim()),
                (0, file),
                "man -w 8 {name}: {r:?}"
            );
        }
    } else {
        eprintln!("{test}: man is not installed: checked the pages' files only");
    }
    // bash-completion loads /usr/share/bash-completion/completions/vectl when
    // vectl is first completed; without it, the file itself.
    let loader = "/usr/share/bash-completion/bash_completion";
    let line = if Path::new(loader).is_file() {
        format!("source {loader}; __load_completion vectl; complete -p vectl")
    } else {
        "source /usr/share/bash-completion/completions/vectl; complete -p vectl".to_string()
    };
    let r = run(Command::new("bash").args(["-c", &line]));
    // `complete -o bashdefault -o default -F _vectl vectl`, say.
    let spec = r.stdout.trim();
    assert!(
        r.code == 0 && spec.starts_with("complete ") && spec.ends_with(" -F _vectl vectl"),
        "{r:?}"
    );
    for u in &units {
        let text = fs::read_to_string(Path::new("/lib/systemd/system").join(u)).unwrap();
        assert!(!text.contains("/usr/local/"), "{u}");
    }
    // Enabled as units.sh does: the supervisor and the boot unit, not the
    // metrics units (`--root`: systemctl reads the links, not asking systemd).
    if installed("systemctl") {
        for u in &units {
            let r = run(Command::new("systemctl")
                .args(["--root=/", "is-enabled", u])
                .env("LC_ALL", "C"));
            let want = u == "vectl-supervisor.service" || u == "vectl.service";
            assert_eq!(r.stdout.trim() == "enabled", want, "{u}: {r:?}");
        }
    }
    // Nothing runs /usr/bin/vectl: policy-rc.d forbade the starts, and
    // without systemd the scripts start nothing.
    let running = procs_running(Path::new("/usr/bin/vectl"));
    assert!(running.is_empty(), "/usr/bin/vectl runs: {running:?}");
    if systemd {
        for u in ["vectl-supervisor.service", "vectl.service"] {
            let r = run(Command::new("systemctl").args(["is-active", u]));
            assert_ne!(r.stdout.trim(), "active", "{u}: {r:?}");
        }
    }

    // Purged, every file of the package is gone, so are the directories it
    // made, its dpkg records and its units' enablement.
    let r = run(&mut pkg.cmd("dpkg", &["--purge", "vectl"]));
    assert_eq!(r.code, 0, "dpkg --purge: {r:?}");
    assert_eq!(vectl_package_status(), None);
    for p in &listed {
        // The package's directories: those it made are gone (below).
        if dirs.contains(p) {
            continue;
        }
        assert!(p.symlink_metadata().is_err(), "{} is left", p.display());
    }
    for d in &dirs {
        assert_eq!(d.is_dir(), dirs_before.contains(&d), "{}", d.display());
    }
    let left: Vec<PathBuf> = fs::read_dir("/var/lib/dpkg/info")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vectl.") || n.starts_with("vectl:"))
        })
        .collect();
    assert!(left.is_empty(), "dpkg's records are left: {left:?}");
    assert_eq!(
        paths_below(&ENABLEMENT),
        enablement_before,
        "units' enablement"
    );
    // prerm stops what runs but vectl.service (its stop stops every VE).
    let asked: BTreeSet<String> = pkg.policy_asked().into_iter().collect();
    let want: BTreeSet<String> = units
        .iter()
        .filter(|u| systemd && *u != "vectl.service" && !u.contains("@."))
        .map(|u| format!("{u} stop"))
        .collect();
    assert_eq!(asked, want);
    drop(pkg);
}
