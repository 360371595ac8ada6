//! Real-kernel tests of `netns::tc`: HTB on IFB devices, fed by clsact redirects on veth
//! ports. They need root (CAP_NET_ADMIN and CAP_SYS_ADMIN for namespaces) and a kernel
//! with HTB, clsact, u32, mirred and IFB; without root they print `SKIP: ...` and pass.
//!
//! Each test builds its own "host" network namespace (ports and IFBs live there) and one
//! namespace per VE, joined by veth pairs: VE `i` is 10.77.i.2/24, its port `vpi` on the
//! host side 10.77.i.1/24. Namespaces exist only as open fds, so everything in them
//! disappears when the test's `Lab` is dropped, whatever happens; nothing touches the
//! namespace the test process runs in. Tests run one at a time (throughput figures would
//! suffer from sharing 2 CPUs).
// A test target links all of the package's dependencies; it uses few.
#![allow(unused_crate_dependencies)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::tc::{TcAttribute, TcHandle};
use netns::tc::{self, ClassRate};
use nix::sched::{CloneFlags, setns, unshare};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

const IFB_UP: &str = "ifbup0";
const IFB_DOWN: &str = "ifbdn0";
const MBIT: u64 = 1_000_000;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A network namespace of our own, alive while this value holds its fd.
struct Netns {
    fd: OwnedFd,
}

impl Netns {
    fn new() -> Result<Self, String> {
        std::thread::spawn(|| -> Result<OwnedFd, String> {
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
            let f = File::open("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
            Ok(OwnedFd::from(f))
        })
        .join()
        .map_err(|_| "namespace thread panicked".to_string())?
        .map(|fd| Netns { fd })
    }

    /// Runs `f` on a thread that has joined this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// Runs async netlink work with a connection opened inside this namespace.
    fn nl<T, F, Fut>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = T>,
    {
        self.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                let (conn, handle, _) = rtnetlink::new_connection().expect("netlink");
                let task = tokio::spawn(conn);
                let out = f(handle).await;
                task.abort();
                out
            })
        })
    }
}

/// The host namespace and the VEs' namespaces, wired with veth pairs.
struct Lab {
    host: Netns,
    ves: Vec<Netns>,
}

fn port(i: usize) -> String {
    format!("vp{i}")
}

fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, u8::try_from(i).unwrap(), 1)
}

fn ve_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, u8::try_from(i).unwrap(), 2)
}

async fn index_of(h: &Handle, name: &str) -> Option<u32> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => link.map(|l| l.header.index),
        Err(_) => None,
    }
}

async fn up_with_address(h: &Handle, name: &str, ip: Ipv4Addr) {
    let index = index_of(h, name).await.expect(name);
    h.address()
        .add(index, IpAddr::V4(ip), 24)
        .execute()
        .await
        .expect("add address");
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .expect("link up");
    let lo = index_of(h, "lo").await.expect("lo");
    h.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .expect("lo up");
}

/// Builds a lab with `n` VEs, or returns why it cannot (printed as SKIP by the caller).
fn lab(n: usize) -> Result<Lab, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces, tc)".into());
    }
    let host = Netns::new()?;
    let mut ves = Vec::new();
    for i in 0..n {
        let ve = Netns::new()?;
        let ve_fd = ve.fd.as_raw_fd();
        host.nl(|h| async move {
            h.link()
                .add(LinkVeth::new(&port(i), &format!("ve{i}")).build())
                .execute()
                .await
                .expect("add veth");
            let peer = index_of(&h, &format!("ve{i}")).await.expect("veth peer");
            h.link()
                .set(LinkUnspec::new_with_index(peer).setns_by_fd(ve_fd).build())
                .execute()
                .await
                .expect("move veth peer");
            up_with_address(&h, &port(i), host_ip(i)).await;
        });
        ve.nl(|h| async move { up_with_address(&h, &format!("ve{i}"), ve_ip(i)).await });
        ves.push(ve);
    }
    Ok(Lab { host, ves })
}

macro_rules! lab_or_skip {
    ($n:expr) => {
        match lab($n) {
            Ok(lab) => lab,
            Err(reason) => {
                println!("SKIP: {reason}");
                return;
            }
        }
    };
}

/// One TCP transfer: `from` connects to `addr` inside `to` and sends as fast as it can.
struct Flow<'a> {
    from: &'a Netns,
    to: &'a Netns,
    addr: Ipv4Addr,
}

/// Runs all flows at once and returns each one's goodput in Mbit/s, counted at the
/// receiver over `window` after a `warmup`.
fn throughput(flows: &[Flow<'_>], warmup: Duration, window: Duration) -> Vec<f64> {
    std::thread::scope(|s| {
        let mut receivers = Vec::new();
        for flow in flows {
            let (port_tx, port_rx) = mpsc::channel::<u16>();
            receivers.push(
                s.spawn(move || flow.to.run(|| receive(flow.addr, &port_tx, warmup, window))),
            );
            s.spawn(move || {
                flow.from.run(move || {
                    let port = port_rx.recv().expect("receiver port");
                    send(SocketAddrV4::new(flow.addr, port), warmup + window);
                })
            });
        }
        receivers
            .into_iter()
            .map(|r| r.join().expect("receiver"))
            .collect()
    })
}

fn receive(addr: Ipv4Addr, port_tx: &mpsc::Sender<u16>, warmup: Duration, window: Duration) -> f64 {
    let listener = TcpListener::bind(SocketAddrV4::new(addr, 0)).expect("bind");
    port_tx
        .send(listener.local_addr().expect("local addr").port())
        .expect("send port");
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut buf = vec![0u8; 1 << 16];
    let first = stream.read(&mut buf).expect("first read");
    assert!(first > 0, "sender closed at once");
    let begin = Instant::now() + warmup;
    let end = begin + window;
    let mut counted = 0u64;
    let mut started: Option<Instant> = None;
    loop {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "sender stopped early");
        let now = Instant::now();
        match started {
            None if now >= begin => started = Some(now),
            Some(_) => counted += n as u64,
            None => {}
        }
        if now >= end {
            let secs = now.duration_since(started.unwrap_or(begin)).as_secs_f64();
            return counted as f64 * 8.0 / secs / 1e6;
        }
    }
}

fn send(to: SocketAddrV4, length: Duration) {
    let mut stream =
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let chunk = vec![0x5au8; 1 << 16];
    let stop = Instant::now() + length + Duration::from_secs(5);
    // The receiver closing the connection ends the transfer.
    while Instant::now() < stop && stream.write_all(&chunk).is_ok() {}
}

fn rate(rate_mbit: u64, ceil_mbit: u64) -> ClassRate {
    ClassRate {
        rate: rate_mbit * MBIT,
        ceil: ceil_mbit * MBIT,
    }
}

/// The kind of the qdisc at `parent` on `dev`, if any.
async fn qdisc_kind(h: &Handle, dev: &str, parent: TcHandle) -> Option<String> {
    let index = index_of(h, dev).await?;
    let mut qdiscs = h.qdisc().get().index(index.cast_signed()).execute();
    while let Ok(Some(q)) = qdiscs.try_next().await {
        if q.header.index == index.cast_signed() && q.header.parent == parent {
            return q.attributes.iter().find_map(|a| match a {
                TcAttribute::Kind(k) => Some(k.clone()),
                _ => None,
            });
        }
    }
    None
}

/// How many filters `dev` has below its root qdisc.
async fn filter_count(h: &Handle, dev: &str) -> usize {
    let index = index_of(h, dev).await.expect(dev);
    let filters: Vec<_> = h
        .traffic_filter(index.cast_signed())
        .get()
        .execute()
        .try_collect()
        .await
        .expect("filter dump");
    filters.len()
}

#[test]
fn ensure_shaper_is_idempotent() {
    let _serial = serial();
    let lab = lab_or_skip!(0);
    lab.host.nl(|h| async move {
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 100 * MBIT)
            .await
            .unwrap();
        let filters = filter_count(&h, IFB_UP).await;
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 200 * MBIT)
            .await
            .unwrap();
        assert_eq!(
            filter_count(&h, IFB_UP).await,
            filters,
            "filters duplicated"
        );
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(200, 200))]
        );
        for dev in [IFB_UP, IFB_DOWN] {
            assert_eq!(
                qdisc_kind(&h, dev, TcHandle::ROOT).await.as_deref(),
                Some("htb")
            );
        }
        // 100 Gbit/s needs the 64-bit rate attributes.
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 100_000 * MBIT)
            .await
            .unwrap();
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(100_000, 100_000))]
        );
        // A name taken by something else is refused, naming the device.
        let e = tc::ensure_shaper(&h, "lo", IFB_DOWN, 10 * MBIT)
            .await
            .unwrap_err();
        println!("expected error: {e}");
        assert!(e.to_string().contains("lo"), "{e}");
    });
}

#[test]
fn shape_port_and_set_class_change_rates() {
    let _serial = serial();
    let lab = lab_or_skip!(1);
    lab.host.nl(|h| async move {
        // Without a shaper, shape_port names the missing device.
        let e = tc::shape_port(&h, &port(0), ve_ip(0), IFB_UP, IFB_DOWN, 0x10, rate(5, 10))
            .await
            .unwrap_err();
        println!("expected error: {e}");
        assert!(e.to_string().contains(IFB_UP), "{e}");

        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 1000 * MBIT)
            .await
            .unwrap();
        tc::shape_port(&h, &port(0), ve_ip(0), IFB_UP, IFB_DOWN, 0x10, rate(5, 10))
            .await
            .unwrap();
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(1000, 1000)), (0x10, rate(5, 10))]
        );
        let filters = filter_count(&h, IFB_UP).await;
        // Shaping again replaces: same class, same number of filters.
        tc::shape_port(&h, &port(0), ve_ip(0), IFB_UP, IFB_DOWN, 0x10, rate(6, 12))
            .await
            .unwrap();
        assert_eq!(
            filter_count(&h, IFB_UP).await,
            filters,
            "filters duplicated"
        );
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(1000, 1000)), (0x10, rate(6, 12))]
        );

        tc::set_class(&h, IFB_UP, IFB_DOWN, 0x10, rate(2, 50))
            .await
            .unwrap();
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(1000, 1000)), (0x10, rate(2, 50))]
        );
        // Beyond 32 bits of bytes per second.
        tc::set_class(&h, IFB_UP, IFB_DOWN, 0x10, rate(40_000, 100_000))
            .await
            .unwrap();
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(1000, 1000)), (0x10, rate(40_000, 100_000))]
        );

        // The kernel's refusal (no such class) comes back naming the class and device.
        let e = tc::set_class(&h, IFB_UP, IFB_DOWN, 0x99, rate(1, 2))
            .await
            .unwrap_err();
        println!("expected error: {e}");
        assert!(e.to_string().contains("1:99 on ifbup0"), "{e}");
        assert!(e.to_string().contains("ENOENT"), "{e}");
        // Our own checks.
        let e = tc::set_class(&h, IFB_UP, IFB_DOWN, 0x10, rate(5, 4))
            .await
            .unwrap_err();
        println!("expected error: {e}");
        let e = tc::set_class(&h, IFB_UP, IFB_DOWN, 1, rate(5, 5))
            .await
            .unwrap_err();
        println!("expected error: {e}");
    });
}

#[test]
fn ceil_caps_both_directions() {
    let _serial = serial();
    let lab = lab_or_skip!(1);
    let (host, ve) = (&lab.host, &lab.ves[0]);
    host.nl(|h| async move {
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 1000 * MBIT)
            .await
            .unwrap();
        tc::shape_port(&h, &port(0), ve_ip(0), IFB_UP, IFB_DOWN, 0x10, rate(1, 10))
            .await
            .unwrap();
    });
    let warmup = Duration::from_millis(300);
    let window = Duration::from_secs(2);
    let up = throughput(
        &[Flow {
            from: ve,
            to: host,
            addr: host_ip(0),
        }],
        warmup,
        window,
    )[0];
    let down = throughput(
        &[Flow {
            from: host,
            to: ve,
            addr: ve_ip(0),
        }],
        warmup,
        window,
    )[0];
    println!("ceil 10 Mbit/s: VE->host {up:.2} Mbit/s, host->VE {down:.2} Mbit/s");
    for (dir, mbit) in [("up", up), ("down", down)] {
        assert!(
            mbit <= 11.0,
            "{dir}: {mbit:.2} Mbit/s exceeds the 10 Mbit/s ceil"
        );
        assert!(mbit >= 7.0, "{dir}: {mbit:.2} Mbit/s, far below the ceil");
    }
}

#[test]
fn unshape_port_restores_full_speed() {
    let _serial = serial();
    let lab = lab_or_skip!(1);
    let (host, ve) = (&lab.host, &lab.ves[0]);
    host.nl(|h| async move {
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 1000 * MBIT)
            .await
            .unwrap();
        tc::shape_port(&h, &port(0), ve_ip(0), IFB_UP, IFB_DOWN, 0x10, rate(1, 10))
            .await
            .unwrap();
        let shaped_filters = filter_count(&h, IFB_UP).await;
        tc::unshape_port(&h, Some(&port(0)), ve_ip(0), IFB_UP, IFB_DOWN, 0x10)
            .await
            .unwrap();
        assert_eq!(
            tc::classes(&h, IFB_UP).await.unwrap(),
            vec![(1, rate(1000, 1000))]
        );
        assert_eq!(filter_count(&h, IFB_UP).await, shaped_filters - 1);
        assert_ne!(
            qdisc_kind(&h, &port(0), TcHandle::CLSACT).await.as_deref(),
            Some("clsact")
        );
        // Again, and for a port that is gone: nothing left to remove is fine.
        tc::unshape_port(&h, Some(&port(0)), ve_ip(0), IFB_UP, IFB_DOWN, 0x10)
            .await
            .unwrap();
        tc::unshape_port(&h, Some("vp-gone"), ve_ip(0), IFB_UP, IFB_DOWN, 0x10)
            .await
            .unwrap();
        tc::unshape_port(&h, None, ve_ip(0), IFB_UP, IFB_DOWN, 0x10)
            .await
            .unwrap();
    });
    let warmup = Duration::from_millis(200);
    let window = Duration::from_secs(1);
    let up = throughput(
        &[Flow {
            from: ve,
            to: host,
            addr: host_ip(0),
        }],
        warmup,
        window,
    )[0];
    let down = throughput(
        &[Flow {
            from: host,
            to: ve,
            addr: ve_ip(0),
        }],
        warmup,
        window,
    )[0];
    println!("unshaped: VE->host {up:.0} Mbit/s, host->VE {down:.0} Mbit/s");
    assert!(up > 100.0, "up still shaped: {up:.2} Mbit/s");
    assert!(down > 100.0, "down still shaped: {down:.2} Mbit/s");
}

#[test]
fn remove_shaper_deletes_ifbs() {
    let _serial = serial();
    let lab = lab_or_skip!(0);
    lab.host.nl(|h| async move {
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 100 * MBIT)
            .await
            .unwrap();
        assert!(index_of(&h, IFB_UP).await.is_some());
        tc::remove_shaper(&h, IFB_UP, IFB_DOWN).await.unwrap();
        assert!(index_of(&h, IFB_UP).await.is_none());
        assert!(index_of(&h, IFB_DOWN).await.is_none());
        tc::remove_shaper(&h, IFB_UP, IFB_DOWN).await.unwrap();
        // Refuses to delete what is not an IFB.
        let e = tc::remove_shaper(&h, "lo", IFB_DOWN).await.unwrap_err();
        println!("expected error: {e}");
        assert!(index_of(&h, "lo").await.is_some());
    });
}

#[test]
fn guarantee_holds_under_contention() {
    let _serial = serial();
    let lab = lab_or_skip!(2);
    let host = &lab.host;
    host.nl(|h| async move {
        tc::ensure_shaper(&h, IFB_UP, IFB_DOWN, 20 * MBIT)
            .await
            .unwrap();
        tc::shape_port(&h, &port(0), ve_ip(0), IFB_UP, IFB_DOWN, 0x10, rate(15, 20))
            .await
            .unwrap();
        tc::shape_port(&h, &port(1), ve_ip(1), IFB_UP, IFB_DOWN, 0x11, rate(1, 20))
            .await
            .unwrap();
    });
    let warmup = Duration::from_millis(500);
    let window = Duration::from_secs(2);
    let up = throughput(
        &[
            Flow {
                from: &lab.ves[0],
                to: host,
                addr: host_ip(0),
            },
            Flow {
                from: &lab.ves[1],
                to: host,
                addr: host_ip(1),
            },
        ],
        warmup,
        window,
    );
    let down = throughput(
        &[
            Flow {
                from: host,
                to: &lab.ves[0],
                addr: ve_ip(0),
            },
            Flow {
                from: host,
                to: &lab.ves[1],
                addr: ve_ip(1),
            },
        ],
        warmup,
        window,
    );
    println!(
        "total 20 Mbit/s, A 15/20, B 1/20: up A {:.2} B {:.2}, down A {:.2} B {:.2} Mbit/s",
        up[0], up[1], down[0], down[1]
    );
    for (dir, got) in [("up", &up), ("down", &down)] {
        assert!(got[0] >= 12.0, "{dir}: A got {:.2} Mbit/s", got[0]);
        assert!(
            got[0] + got[1] <= 22.0,
            "{dir}: total {:.2}",
            got[0] + got[1]
        );
        assert!(got[1] >= 0.5, "{dir}: B starved: {:.2}", got[1]);
    }
}
