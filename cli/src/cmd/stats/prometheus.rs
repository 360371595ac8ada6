//! `vectl stats --format prometheus`: the Prometheus text exposition format
//! (version 0.0.4), as node_exporter's textfile collector and a scrape read it.
//!
//! Names are stable: `vectl_ve_*` per VE with the labels `ve`, `id` and
//! `template` (and `nic`, `net` on traffic), counters end in `_total`, sizes are
//! bytes and times seconds. A limit or guarantee a VE does not have is left
//! out rather than written as 0 (0 would read as "nothing allowed").

use std::fmt::Write as _;

use ve_runtime::{NicStats, Status, VeStats};

/// The content type a scrape answer carries.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

enum Kind {
    Gauge,
    Counter,
}

/// One metric of a VE: its name, help, type and value (`None`: not written).
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&VeStats) -> Option<f64>,
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counters beyond 2^53 lose only low digits"
)]
fn f(v: u64) -> f64 {
    v as f64
}

const FAMILIES: &[Family] = &[
    Family {
        name: "vectl_ve_up",
        help: "1 if the VE runs, else 0.",
        kind: Kind::Gauge,
        value: |s| Some(if s.status.is_running() { 1.0 } else { 0.0 }),
    },
    Family {
        name: "vectl_ve_uptime_seconds",
        help: "Seconds since the VE started (running VEs only).",
        kind: Kind::Gauge,
        value: |s| s.uptime_seconds.map(f),
    },
    Family {
        name: "vectl_ve_cpu_seconds_total",
        help: "CPU time its processes used since it started.",
        kind: Kind::Counter,
        value: |s| Some(f(s.cpu_usage_ns) / 1e9),
    },
    Family {
        name: "vectl_ve_cpu_limit_cpus",
        help: "Its CPU cap in CPUs (1.5 = one and a half).",
        kind: Kind::Gauge,
        value: |s| s.cpu_limit_percent.map(|p| p / 100.0),
    },
    Family {
        name: "vectl_ve_cpu_guarantee_ratio",
        help: "Its guaranteed share of the whole host's CPU time under contention (0..1).",
        kind: Kind::Gauge,
        value: |s| s.cpu_guarantee_percent.map(|p| p / 100.0),
    },
    Family {
        name: "vectl_ve_memory_bytes",
        help: "Memory its cgroup is charged (RAM, without swap).",
        kind: Kind::Gauge,
        value: |s| Some(f(s.ram_bytes)),
    },
    Family {
        name: "vectl_ve_memory_limit_bytes",
        help: "Its RAM limit.",
        kind: Kind::Gauge,
        value: |s| s.ram_limit_bytes.map(f),
    },
    Family {
        name: "vectl_ve_memory_guarantee_bytes",
        help: "Its RAM protected from reclaim by others.",
        kind: Kind::Gauge,
        value: |s| s.ram_guarantee_bytes.map(f),
    },
    Family {
        name: "vectl_ve_swap_bytes",
        help: "Swap it uses.",
        kind: Kind::Gauge,
        value: |s| Some(f(s.swap_bytes)),
    },
    Family {
        name: "vectl_ve_swap_limit_bytes",
        help: "Swap it may use on top of its RAM.",
        kind: Kind::Gauge,
        value: |s| s.swap_limit_bytes.map(f),
    },
    Family {
        name: "vectl_ve_oom_kills_total",
        help: "Processes the kernel killed at its memory limit since it started.",
        kind: Kind::Counter,
        value: |s| Some(f(s.oom_kills)),
    },
    Family {
        name: "vectl_ve_pids",
        help: "Processes and threads in it.",
        kind: Kind::Gauge,
        value: |s| Some(f(s.pids)),
    },
    Family {
        name: "vectl_ve_pids_limit",
        help: "Its limit of processes and threads.",
        kind: Kind::Gauge,
        value: |s| s.pids_limit.map(f),
    },
    Family {
        name: "vectl_ve_io_read_bytes_total",
        help: "Bytes it read from block devices since it started.",
        kind: Kind::Counter,
        value: |s| Some(f(s.io_read_bytes)),
    },
    Family {
        name: "vectl_ve_io_write_bytes_total",
        help: "Bytes it wrote to block devices since it started.",
        kind: Kind::Counter,
        value: |s| Some(f(s.io_write_bytes)),
    },
    Family {
        name: "vectl_ve_io_read_ops_total",
        help: "Read operations on block devices since it started.",
        kind: Kind::Counter,
        value: |s| Some(f(s.io_read_ops)),
    },
    Family {
        name: "vectl_ve_io_write_ops_total",
        help: "Write operations on block devices since it started.",
        kind: Kind::Counter,
        value: |s| Some(f(s.io_write_ops)),
    },
    Family {
        name: "vectl_ve_disk_used_bytes",
        help: "Disk its own files use (btrfs and xfs pools).",
        kind: Kind::Gauge,
        value: |s| s.disk_bytes.map(f),
    },
    Family {
        name: "vectl_ve_disk_limit_bytes",
        help: "Its disk limit (btrfs and xfs pools).",
        kind: Kind::Gauge,
        value: |s| s.disk_limit_bytes.map(f),
    },
];

/// A traffic metric: name, help, and its counter of a NIC.
type NicFamily = (&'static str, &'static str, fn(&NicStats) -> u64);

/// Traffic per NIC, from the VE's side.
const NIC_FAMILIES: &[NicFamily] = &[
    (
        "vectl_ve_network_receive_bytes_total",
        "Bytes the VE received on a NIC since it started.",
        |n| n.rx_bytes,
    ),
    (
        "vectl_ve_network_transmit_bytes_total",
        "Bytes the VE sent on a NIC since it started.",
        |n| n.tx_bytes,
    ),
    (
        "vectl_ve_network_receive_packets_total",
        "Packets the VE received on a NIC since it started.",
        |n| n.rx_packets,
    ),
    (
        "vectl_ve_network_transmit_packets_total",
        "Packets the VE sent on a NIC since it started.",
        |n| n.tx_packets,
    ),
];

const STATUSES: [Status; 4] = [
    Status::Running,
    Status::Stopped,
    Status::Crashed,
    Status::Exited,
];

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers without a fraction, others as Rust prints them.
fn number(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition of `stats`, and how long reading them took.
pub fn render(stats: &[VeStats], took_secs: f64) -> String {
    let labels: Vec<String> = stats
        .iter()
        .map(|s| {
            format!(
                "ve=\"{}\",id=\"{}\",template=\"{}\"",
                escape(&s.name),
                s.id,
                escape(&s.template)
            )
        })
        .collect();
    let mut out = String::with_capacity(stats.len() * 2048 + 1024);
    header(
        &mut out,
        "vectl_ve_status",
        "The VE's status: 1 for the one it is in, 0 for the others.",
        "gauge",
    );
    for (s, l) in stats.iter().zip(&labels) {
        for st in STATUSES {
            let on = u8::from(s.status == st);
            let _ = writeln!(out, "vectl_ve_status{{{l},status=\"{st}\"}} {on}");
        }
    }
    for fam in FAMILIES {
        let kind = match fam.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        header(&mut out, fam.name, fam.help, kind);
        for (s, l) in stats.iter().zip(&labels) {
            if let Some(v) = (fam.value)(s) {
                let _ = writeln!(out, "{}{{{l}}} {}", fam.name, number(v));
            }
        }
    }
    for (name, help, value) in NIC_FAMILIES {
        header(&mut out, name, help, "counter");
        for (s, l) in stats.iter().zip(&labels) {
            for n in &s.nics {
                let _ = writeln!(
                    out,
                    "{name}{{{l},nic=\"{}\",net=\"{}\"}} {}",
                    escape(&n.ifname),
                    escape(&n.net),
                    value(n)
                );
            }
        }
    }
    header(
        &mut out,
        "vectl_ves",
        "VEs of this root in each status.",
        "gauge",
    );
    for st in STATUSES {
        let n = stats.iter().filter(|s| s.status == st).count();
        let _ = writeln!(out, "vectl_ves{{status=\"{st}\"}} {n}");
    }
    header(
        &mut out,
        "vectl_scrape_duration_seconds",
        "How long vectl took to read these figures.",
        "gauge",
    );
    let _ = writeln!(out, "vectl_scrape_duration_seconds {took_secs:.6}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ve(name: &str, status: Status) -> VeStats {
        VeStats {
            id: 100,
            name: name.into(),
            status,
            template: "bb@1".into(),
            uptime_seconds: status.is_running().then_some(12),
            cpu_usage_ns: 1_500_000_000,
            cpu_percent: 0.0,
            cpu_limit_percent: Some(50.0),
            cpu_guarantee_percent: None,
            ram_bytes: 4096,
            ram_limit_bytes: Some(64 << 20),
            ram_limit_percent: None,
            ram_guarantee_bytes: None,
            ram_guarantee_percent: None,
            swap_bytes: 0,
            swap_limit_bytes: None,
            pids: 3,
            pids_limit: Some(100),
            io_read_bytes: 0,
            io_write_bytes: 0,
            io_read_ops: 0,
            io_write_ops: 0,
            oom_kills: 0,
            disk_bytes: None,
            disk_limit_bytes: None,
            addresses: vec!["10.200.0.2/24".into()],
            ips: vec![std::net::Ipv4Addr::new(10, 200, 0, 2)],
            nics: vec![NicStats {
                ifname: "eth0".into(),
                net: "default".into(),
                port: "vab01p100".into(),
                rx_bytes: 7000,
                rx_packets: 50,
                tx_bytes: 5000,
                tx_packets: 40,
            }],
        }
    }

    #[test]
    fn every_family_has_help_and_type_once_and_its_samples_together() {
        let text = render(
            &[ve("web1", Status::Running), ve("web2", Status::Crashed)],
            0.002,
        );
        let mut seen = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&name), "{name} declared twice");
                seen.push(name.clone());
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{line} outside its family");
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok(), "{line}");
            }
        }
        assert!(text.contains(
            "vectl_ve_memory_limit_bytes{ve=\"web1\",id=\"100\",template=\"bb@1\"} 67108864\n"
        ));
        assert!(text.contains(
            "vectl_ve_cpu_seconds_total{ve=\"web1\",id=\"100\",template=\"bb@1\"} 1.5\n"
        ));
        assert!(
            text.contains(
                "vectl_ve_cpu_limit_cpus{ve=\"web2\",id=\"100\",template=\"bb@1\"} 0.5\n"
            )
        );
        assert!(text.contains(
            "vectl_ve_status{ve=\"web2\",id=\"100\",template=\"bb@1\",status=\"crashed\"} 1\n"
        ));
        assert!(text.contains(
            "vectl_ve_network_receive_bytes_total{ve=\"web1\",id=\"100\",template=\"bb@1\",nic=\"eth0\",net=\"default\"} 7000\n"
        ));
        assert!(text.contains("vectl_ves{status=\"running\"} 1\n"));
        // No limit: no sample (0 would mean nothing is allowed).
        assert!(!text.contains("vectl_ve_swap_limit_bytes{"));
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.25), "0.25");
    }
}
