//! `vectl stats`: resource use per VE, once or refreshed like `top`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;

use super::Ctx;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// VEs (default: all).
    #[arg(value_name = "VE")]
    ves: Vec<String>,
    /// Refresh every SECS seconds like `top` (CPU % over each interval).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
}

/// `vectl stats`; with --watch it runs until interrupted.
pub fn run(ctx: &Ctx, a: StatsArgs) -> Result<ExitCode> {
    let host = ctx.open()?;
    let out = &ctx.out;
    let ves = &a.ves;
    match a.watch {
        None => out.stats(&host.ves().stats(ves)?, None),
        Some(secs) => {
            if secs.is_nan() || secs < 0.1 {
                bail!("--watch {secs}: give an interval of at least 0.1 seconds");
            }
            let mut before = host.ves().stats(ves)?;
            let mut at = Instant::now();
            loop {
                std::thread::sleep(Duration::from_secs_f64(secs));
                let mut now = host.ves().stats(ves)?;
                let dt = at.elapsed().as_secs_f64();
                at = Instant::now();
                for s in &mut now {
                    s.cpu_percent = before
                        .iter()
                        .find(|b| b.name == s.name && b.status == s.status)
                        .map_or(0.0, |b| s.cpu_percent_since(b, dt));
                }
                out.stats(&now, Some(secs));
                before = now;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
