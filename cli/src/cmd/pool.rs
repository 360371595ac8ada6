//! `vectl pool ...` and `vectl snapshot ...`: the storage pool and snapshots
//! of a VE's own files.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use ve_runtime::Size;

use super::Ctx;
use crate::parse::{self, Checked};
use crate::view::{PoolSpaceView, SnapshotView};

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Size, use and free space; each VE's and template's use.
    Info,
    /// Grow the pool online (an image pool to SIZE; a device pool to its device).
    Grow {
        #[arg(long, value_name = "SIZE", value_parser = parse::text::<Size>)]
        size: Option<Checked<Size>>,
    },
    /// Find what a crash left behind (volumes without VEs, VEs without volumes,
    /// stale quota groups); --repair fixes it.
    Check {
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a VE's files (a running VE is frozen for the moment it takes).
    Create {
        #[arg(value_name = "VE")]
        ve: String,
        /// Snapshot name (default: the time, like 20261126-104512).
        #[arg(value_name = "NAME")]
        name: Option<String>,
    },
    /// A VE's snapshots.
    List {
        #[arg(value_name = "VE")]
        ve: String,
    },
    /// Delete a snapshot.
    Rm {
        #[arg(value_name = "VE")]
        ve: String,
        #[arg(value_name = "NAME")]
        name: String,
    },
    /// Put a stopped VE's files back to a snapshot (the snapshot stays).
    Restore {
        #[arg(value_name = "VE")]
        ve: String,
        #[arg(value_name = "NAME")]
        name: String,
    },
}

/// `vectl pool ...`: `check` exits 1 while problems are left.
pub fn pool(ctx: &Ctx, cmd: PoolCommand) -> Result<ExitCode> {
    let out = &ctx.out;
    match cmd {
        PoolCommand::Info => out.pool_info(&ctx.open()?.storage().info()?),
        PoolCommand::Grow { size } => {
            let size = parse::opt(&size, "", "size")?.map(|s| s.0);
            let s = ctx.open()?.storage().grow(size)?;
            out.pool_grown(&PoolSpaceView {
                size_bytes: s.size_bytes,
                used_bytes: s.used_bytes,
                free_bytes: s.free_bytes,
            });
        }
        PoolCommand::Check { repair } => {
            let problems = ctx.open()?.storage().check(repair)?;
            out.pool_check(&problems, repair);
            if problems.iter().any(|p| !p.repaired && !p.is_note()) {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `vectl snapshot ...`.
pub fn snapshot(ctx: &Ctx, cmd: SnapshotCommand) -> Result<ExitCode> {
    let out = &ctx.out;
    match cmd {
        SnapshotCommand::Create { ve, name } => {
            let name = name.unwrap_or_else(|| {
                humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string()
                    .replace(['-', ':'], "")
                    .replace('T', "-")
                    .trim_end_matches('Z')
                    .to_string()
            });
            out.snapshot_made(&ctx.open()?.snapshots().create(&ve, &name)?);
        }
        SnapshotCommand::List { ve } => {
            let (ve, list) = ctx.open()?.snapshots().list(&ve)?;
            let list: Vec<SnapshotView> = list
                .iter()
                .map(|s| SnapshotView {
                    name: s.name.clone(),
                    created_unix: s.created_unix,
                    exclusive_bytes: s.exclusive_bytes,
                })
                .collect();
            out.snapshots(&ve, &list);
        }
        SnapshotCommand::Rm { ve, name } => {
            let ve = ctx.open()?.snapshots().remove(&ve, &name)?;
            out.done(&format!("VE {ve}: removed snapshot {name}"));
        }
        SnapshotCommand::Restore { ve, name } => {
            let ve = ctx.open()?.snapshots().restore(&ve, &name)?;
            out.done(&format!("VE {ve}: files restored from snapshot {name}"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
