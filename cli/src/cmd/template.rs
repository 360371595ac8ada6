//! `vectl template ...`: importing, publishing, listing and removing OS
//! template versions.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use ve_runtime::Source;

use super::Ctx;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Import a root file system as the next version of a template.
    Import(ImportArgs),
    /// Publish the next version of an existing template: a command run in a
    /// throwaway build VE on the latest version (--run), or a given tree. VEs stay
    /// pinned to their versions.
    Update(UpdateArgs),
    /// List template versions.
    List,
    /// One version (the latest without @VERSION) and the VEs on it.
    Show {
        #[arg(value_name = "NAME[@VERSION]")]
        template: String,
    },
    /// A template's versions, oldest first: date, source, size, message, VEs.
    Log {
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// The VEs on each version (of NAME, or of every template).
    Usage {
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// Remove a version (or all versions of NAME); refused while a VE uses it.
    Rm {
        #[arg(value_name = "NAME[@VERSION]")]
        template: String,
    },
    /// Remove every version that is neither a template's latest nor used.
    Gc,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true)))]
pub struct ImportArgs {
    #[command(flatten)]
    src: SourceArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true)))]
pub struct UpdateArgs {
    /// Run this command (with /bin/sh -c, no input) in a throwaway build VE on the
    /// latest version and publish what it changed, e.g.
    /// 'apt-get update && apt-get -y upgrade'.
    #[arg(long, group = "source", value_name = "CMD")]
    run: Option<String>,
    #[command(flatten)]
    src: SourceArgs,
}

/// Where a template version comes from.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Template name.
    name: String,
    /// A directory holding the root file system.
    #[arg(long, group = "source", value_name = "DIR")]
    from_dir: Option<PathBuf>,
    /// A tar archive of it (plain, .gz or .zst).
    #[arg(long, group = "source", value_name = "FILE")]
    from_tar: Option<PathBuf>,
    /// Build a Debian/Ubuntu tree of this suite (bookworm, noble...) with debootstrap.
    #[arg(long, group = "source", value_name = "SUITE")]
    debootstrap: Option<String>,
    /// The archive debootstrap installs from (http://, https:// or file:///).
    /// [default: http://deb.debian.org/debian]
    #[arg(long, requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"], value_name = "URL")]
    mirror: Option<String>,
    /// Extra packages for debootstrap, comma-separated.
    #[arg(
        long,
        requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"],
        value_name = "PKG,...",
        value_delimiter = ','
    )]
    include: Vec<String>,
    /// debootstrap's variant: minbase (the smallest tree), buildd, ...
    #[arg(long, requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"], value_name = "VARIANT")]
    variant: Option<String>,
    /// OpenPGP keyring the mirror's Release file is checked against (default: the
    /// Debian archive keyring).
    #[arg(long, requires = "debootstrap",
        conflicts_with_all = ["from_dir", "from_tar", "oci_layout"], value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// A local OCI image layout directory (`skopeo copy IMAGE oci:DIR`, or an
    /// unpacked `docker save`): its image's layers applied in order, digests checked.
    /// DIR:REF picks the image of that ref name; else the only image or the one for
    /// this host's platform.
    #[arg(long, group = "source", value_name = "DIR[:REF]")]
    oci_layout: Option<PathBuf>,
    /// A note recorded with the version.
    #[arg(long, short, default_value = "")]
    message: String,
}

impl SourceArgs {
    fn source(&self) -> anyhow::Result<Source> {
        Ok(if let Some(d) = &self.from_dir {
            Source::Dir(d.clone())
        } else if let Some(t) = &self.from_tar {
            Source::Tar(t.clone())
        } else if let Some(o) = &self.oci_layout {
            Source::OciLayout(o.clone())
        } else if let Some(suite) = &self.debootstrap {
            Source::Debootstrap(ve_runtime::Debootstrap {
                suite: suite.clone(),
                mirror: self
                    .mirror
                    .clone()
                    .unwrap_or_else(|| ve_runtime::DEBIAN_MIRROR.into()),
                include: self.include.clone(),
                variant: self.variant.clone(),
                keyring: self.keyring.clone(),
            })
        } else {
            bail!("give --from-dir, --from-tar, --oci-layout or --debootstrap")
        })
    }
}

/// `vectl template ...`.
pub fn run(ctx: &Ctx, cmd: TemplateCommand) -> Result<ExitCode> {
    let out = &ctx.out;
    match cmd {
        TemplateCommand::Import(ImportArgs { src: a }) => {
            let source = a.source()?;
            // Importing the first template initialises a new root (README: init).
            let host = ctx.open_or_init()?;
            let mut progress = out.progress(&format!("importing {}", a.name));
            let (tv, warnings) =
                host.templates()
                    .import(&a.name, &source, &a.message, &mut progress)?;
            drop(progress);
            for w in warnings {
                out.warn(&format!("template {}: {w}", tv.reference()));
            }
            out.template_imported(&tv, "imported");
        }
        TemplateCommand::Update(UpdateArgs { run, src: a }) => {
            let host = ctx.open()?;
            let mut progress = out.progress(&format!("updating {}", a.name));
            let (tv, warnings) = match &run {
                Some(cmd) => {
                    // The command's output is the operator's to see, on stderr
                    // when stdout carries JSON.
                    let _stdout = ctx.json.then(output::StdoutToStderr::new).transpose()?;
                    host.templates()
                        .build(&a.name, cmd, &a.message, &mut progress)?
                }
                None => {
                    host.templates()
                        .update(&a.name, &a.source()?, &a.message, &mut progress)?
                }
            };
            drop(progress);
            for w in warnings {
                out.warn(&format!("template {}: {w}", tv.reference()));
            }
            out.template_imported(&tv, "published");
        }
        TemplateCommand::List => out.templates(&ctx.open()?.templates().list()?),
        TemplateCommand::Show { template } => {
            let r: ve_runtime::TemplateRef = template
                .parse()
                .map_err(|e: ve_runtime::TemplateError| anyhow::anyhow!("{e}"))?;
            let host = ctx.open()?;
            let all = host.templates().usage(Some(&r.name))?;
            let one = match r.version {
                Some(v) => all.iter().find(|u| u.version.version == v),
                None => all.last(),
            }
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "template {template}: no such version (see `vectl template log {}`)",
                    r.name
                )
            })?;
            out.template_show(one, &host.templates().dir(&one.version));
        }
        TemplateCommand::Log { name } => {
            out.template_log(&ctx.open()?.templates().log(&name)?);
        }
        TemplateCommand::Usage { name } => {
            out.template_usage(&ctx.open()?.templates().usage(name.as_deref())?);
        }
        TemplateCommand::Rm { template } => {
            let removed = ctx.open()?.templates().remove(&template)?;
            out.templates_removed(&removed);
        }
        TemplateCommand::Gc => {
            let removed = ctx.open()?.templates().gc()?;
            out.templates_removed(&removed);
        }
    }
    Ok(ExitCode::SUCCESS)
}
