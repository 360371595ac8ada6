//! `vectl stats`: resource use per VE, once or refreshed like `top`; as a table,
//! JSON or the Prometheus text format, to stdout, to a file (node_exporter's
//! textfile collector) or as the answer to one HTTP request on stdin/stdout
//! (`vectl-metrics.socket`, inetd style).

mod prometheus;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use super::Ctx;
use crate::parse::{self, Checked, usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Prometheus,
}

fn parse_format(s: &str) -> std::result::Result<Format, String> {
    match s {
        "table" => Ok(Format::Table),
        "json" => Ok(Format::Json),
        "prometheus" => Ok(Format::Prometheus),
        _ => Err(format!("{s}: give table, json or prometheus")),
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// VEs (default: all).
    #[arg(value_name = "VE")]
    ves: Vec<String>,
    /// Refresh every SECS seconds like `top` (CPU % over each interval).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<f64>,
    /// Output format: table (the default), json (as --json) or prometheus
    /// (the Prometheus text exposition format 0.0.4).
    #[arg(long, value_name = "FORMAT", value_parser = parse::with(parse_format))]
    format: Option<Checked<Format>>,
    /// Write to FILE instead of stdout, replacing it whole (a reader never
    /// sees half a file): for node_exporter's textfile collector.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["watch", "http"])]
    output: Option<PathBuf>,
    /// Answer one HTTP request read from stdin on stdout with the Prometheus
    /// format (run by vectl-metrics.socket for each connection).
    #[arg(long, conflicts_with = "watch")]
    http: bool,
}

/// `vectl stats`; with --watch it runs until interrupted.
pub fn run(ctx: &Ctx, a: StatsArgs) -> Result<ExitCode> {
    let asked = a.format.as_ref().map(|f| f.get("", "format")).transpose()?;
    let format = match (asked, ctx.json) {
        (Some(Format::Json), _) | (None, true) => Format::Json,
        (Some(f), false) => f,
        (Some(f), true) if f != Format::Table => f,
        (Some(_), true) => return Err(usage("--format table and --json: choose one")),
        (None, false) => Format::Table,
    };
    if a.http {
        if asked.is_some_and(|f| f != Format::Prometheus) {
            return Err(usage(
                "--http answers in the Prometheus format only: leave out --format",
            ));
        }
        return serve_http(ctx, &a.ves);
    }
    if let Some(file) = &a.output {
        let text = match format {
            Format::Prometheus => scrape(ctx, &a.ves)?,
            Format::Json => {
                let stats = ctx.open()?.ves().stats(&a.ves)?;
                serde_json::to_string_pretty(&stats)? + "\n"
            }
            Format::Table => return Err(usage("--output writes --format prometheus or json")),
        };
        write_whole(file, text.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    if format == Format::Prometheus {
        if a.watch.is_some() {
            return Err(usage(
                "--watch shows a table or JSON: Prometheus scrapes at its own pace",
            ));
        }
        print!("{}", scrape(ctx, &a.ves)?);
        return Ok(ExitCode::SUCCESS);
    }
    let host = ctx.open()?;
    let out = &ctx.out;
    let ves = &a.ves;
    let out = if format == Format::Json && !ctx.json {
        &crate::output::Out::new(true)
    } else {
        out
    };
    match a.watch {
        None => out.stats(&host.ves().stats(ves)?, None),
        Some(secs) => {
            if secs.is_nan() || secs < 0.1 {
                return Err(usage(format!(
                    "--watch {secs}: give an interval of at least 0.1 seconds"
                )));
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

/// The Prometheus exposition of the VEs' figures now.
fn scrape(ctx: &Ctx, ves: &[String]) -> Result<String> {
    let t = Instant::now();
    let stats = ctx.open()?.ves().stats(ves)?;
    Ok(prometheus::render(&stats, t.elapsed().as_secs_f64()))
}

/// Replaces `file` with `data`: written beside it, synced, renamed over it
/// (mode 0644: the collector usually runs as another user).
fn write_whole(file: &Path, data: &[u8]) -> Result<()> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = file
        .file_name()
        .with_context(|| format!("{}: not a file name", file.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .tempfile_in(dir)
        .with_context(|| format!("{}: cannot write beside it", file.display()))?;
    let written = (|| -> std::io::Result<()> {
        tmp.write_all(data)?;
        std::fs::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
        tmp.as_file().sync_all()
    })();
    written.with_context(|| format!("{}: cannot write it", file.display()))?;
    tmp.persist(file)
        .map_err(|e| e.error)
        .with_context(|| format!("{}: cannot replace it", file.display()))?;
    Ok(())
}

/// The longest request head read, and how long a client may take to send it.
const MAX_REQUEST: u64 = 8192;
const REQUEST_TIMEOUT_MS: u16 = 10_000;

/// An HTTP answer: status line, and a body.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

/// Reads one request head from stdin and answers on stdout (HTTP/1.0 style:
/// one request per connection, then close). Exit status 1 if the figures could
/// not be read (the client got a 500 saying why).
fn serve_http(ctx: &Ctx, ves: &[String]) -> Result<ExitCode> {
    let mut failed = false;
    let answer = match read_request() {
        Err(why) => text_answer("400 Bad Request", why),
        Ok((method, path)) => {
            let path = path.split('?').next().unwrap_or_default();
            if method != "GET" && method != "HEAD" {
                text_answer(
                    "405 Method Not Allowed",
                    format!("{method}: only GET and HEAD"),
                )
            } else if path != "/metrics" && path != "/" {
                text_answer(
                    "404 Not Found",
                    format!("{path}: the figures are at /metrics"),
                )
            } else {
                match scrape(ctx, ves) {
                    Ok(body) => Answer {
                        status: "200 OK",
                        content_type: prometheus::CONTENT_TYPE,
                        body,
                        head_only: method == "HEAD",
                    },
                    Err(e) => {
                        failed = true;
                        ctx.out.error(&e);
                        text_answer("500 Internal Server Error", format!("vectl: {e}"))
                    }
                }
            }
        }
    };
    let mut out = std::io::stdout().lock();
    let sent = write!(
        out,
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    )
    .and_then(|()| {
        if answer.head_only {
            Ok(())
        } else {
            out.write_all(answer.body.as_bytes())
        }
    })
    .and_then(|()| out.flush());
    // A client that went away is no failure of ours.
    drop(sent);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn text_answer(status: &'static str, body: impl Into<String>) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.into() + "\n",
        head_only: false,
    }
}

/// The method and path of the request on stdin; its headers are read and
/// ignored. Bounded in size and time: a client that sends nothing is dropped.
fn read_request() -> std::result::Result<(String, String), String> {
    let stdin = std::io::stdin();
    let ready = {
        let fd = stdin.as_fd();
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(REQUEST_TIMEOUT_MS))
    };
    match ready {
        Ok(0) => return Err("no request within 10 s".into()),
        Ok(_) => {}
        Err(e) => return Err(format!("reading the request: {e}")),
    }
    let mut r = BufReader::new(stdin.lock().take(MAX_REQUEST));
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("reading the request: {e}"))?;
    let mut words = line.split_ascii_whitespace();
    let (Some(method), Some(path), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Err("not an HTTP request line".into());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(format!("{version}: not HTTP/1.x"));
    }
    let (method, path) = (method.to_string(), path.to_string());
    // The headers, up to the empty line (some clients wait for us only after
    // sending them all).
    loop {
        let mut h = String::new();
        match r.read_line(&mut h) {
            Ok(0) => break,
            Ok(_) if h.trim_end().is_empty() => break,
            Ok(_) => {}
            Err(e) => return Err(format!("reading the request: {e}")),
        }
    }
    Ok((method, path))
}
