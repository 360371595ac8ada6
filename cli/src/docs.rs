//! What vectl says about its own command line: `vectl completion SHELL` (a
//! shell's completion script) and the hidden `vectl man DIR` (the manual
//! pages, section 8), both generated from the one parser of `main.rs`, which
//! the caller hands over as a `clap::Command`. The Debian package
//! (`scripts/build-deb.sh`) installs what these print.

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::str::FromStr;

use anyhow::{Result, anyhow};
use clap::Args;
use clap::builder::{PossibleValue, TypedValueParser};

use crate::parse;

#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh or fish.
    #[arg(value_name = "SHELL", value_parser = ShellName)]
    shell: String,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write the pages (made if missing; pages there are replaced).
    #[arg(value_name = "DIR")]
    dir: PathBuf,
}

/// The shells `completion` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    const ALL: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

    fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
        }
    }

    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }
}

impl fmt::Display for Shell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Shell {
    type Err = String;

    fn from_str(s: &str) -> Result<Shell, String> {
        Shell::ALL
            .into_iter()
            .find(|sh| sh.name() == s)
            .ok_or_else(|| format!("unknown shell {s:?}: bash, zsh or fish"))
    }
}

/// The `SHELL` argument: offers the shells' names to completion and `--help`
/// but takes any text, so that `completion` itself refuses an unknown one in
/// one line (exit 2) instead of clap's several.
#[derive(Debug, Clone, Copy)]
struct ShellName;

impl TypedValueParser for ShellName {
    type Value = String;

    fn parse_ref(
        &self,
        _cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        Ok(value.to_string_lossy().into_owned())
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            Shell::ALL.into_iter().map(|s| PossibleValue::new(s.name())),
        ))
    }
}

/// `vectl completion SHELL`: the shell's completion script for `cli`, on stdout.
pub fn completion(cli: clap::Command, a: CompletionArgs) -> Result<ExitCode> {
    let shell: Shell = a
        .shell
        .parse()
        .map_err(|e: String| parse::usage(format!("completion: {e}")))?;
    // Made whole first: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell.generator(), &mut visible(&cli), "vectl", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(|e| anyhow!("completion {shell}: standard output: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// `cli` without its hidden subcommands (`man`, the receiving ends of
/// `migrate` and `replicate`), which clap_complete would offer: clap cannot
/// remove a subcommand, so the top is made anew from `cli`'s own options and
/// its visible subcommands, each whole. (No subcommand below the top is hidden.)
fn visible(cli: &clap::Command) -> clap::Command {
    clap::Command::new("vectl")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(cli.is_subcommand_required_set())
        .args(cli.get_arguments().cloned())
        .subcommands(cli.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// `vectl man DIR`: `vectl.8` for `cli` and a page per visible subcommand,
/// nested ones too (`vectl-create.8`, `vectl-template-import.8`).
pub fn man(cli: clap::Command, a: ManArgs) -> Result<ExitCode> {
    if fs::metadata(&a.dir).is_ok_and(|m| !m.is_dir()) {
        anyhow::bail!("{}: not a directory", a.dir.display());
    }
    fs::create_dir_all(&a.dir).map_err(|e| anyhow!("{}: {e}", a.dir.display()))?;
    // Built, so that subcommands know their full names (`vectl-template-import`)
    // and show the global options; `help` is no command of its own here.
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let source = format!("vectl {}", env!("CARGO_PKG_VERSION"));
    write_pages(&cli, &a.dir, &source)?;
    // `vectl oci` hands its arguments to the OCI runtime's own parser: its
    // pages (vectl-oci.8 over the stub's, vectl-oci-create.8, ...) come from
    // that parser, typed as `vectl oci ...`.
    let mut oci = crate::oci::command()
        .bin_name("vectl oci")
        .disable_help_subcommand(true);
    oci.build();
    write_pages(&oci, &a.dir, &source)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the page of `cmd` and of each of its visible subcommands into `dir`.
fn write_pages(cmd: &clap::Command, dir: &Path, source: &str) -> Result<()> {
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .source(source)
        .manual("vectl");
    let path = dir.join(page.get_filename());
    let mut text = Vec::new();
    page.render(&mut text)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    fs::write(&path, text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, dir, source)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shells_are_named_as_their_programs() {
        for sh in Shell::ALL {
            assert_eq!(sh.name().parse::<Shell>(), Ok(sh));
            assert_eq!(sh.generator().to_string(), sh.name());
        }
        let err = "tcsh".parse::<Shell>().unwrap_err();
        assert!(err.contains("tcsh") && !err.contains('\n'), "{err}");
    }
}
