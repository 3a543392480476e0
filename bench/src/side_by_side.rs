//! The edge gateway and grpc-gateway (v1, Go, built from the distribution's packages against
//! our protos by `bench/grpc-gateway-peer.sh`) fronting the same order-service process over
//! mTLS, measured in alternating rounds with the same load: throughput, latency, each
//! gateway's own CPU time per request and peak RSS (read from `/proc`), the RSS of 1,000 idle
//! keep-alive connections, and latency under an open-loop load at a fixed rate.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ordermesh_platform::identity::workloads;

use crate::idle::IdleConnections;
use crate::measure::Measured;
use crate::processes::{Mesh, Proc, free_addr};
use crate::wrk::{self, Load};

pub struct Run {
    pub measured: Measured,
    pub cpu_us: f64,
    pub peak_kib: u64,
}

pub struct Contender {
    pub name: &'static str,
    pub rounds: Vec<Run>,
    /// RSS with the idle connections held, and before them, in KiB.
    pub idle_kib: (u64, u64),
    pub open_loop: Measured,
}

pub struct SideBySide {
    pub path: String,
    pub concurrency: usize,
    pub round: Duration,
    pub idle: usize,
    pub rate: u32,
    pub ours: Contender,
    pub peer: Contender,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Contender {
    fn median(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.rounds.iter().map(f).collect())
    }
    fn cpu_us(&self) -> f64 {
        self.median(|r| r.cpu_us)
    }
    fn p99_ms(&self) -> f64 {
        self.median(|r| r.measured.p99_us as f64 / 1000.0)
    }
    fn rps(&self) -> f64 {
        self.median(|r| r.measured.per_second())
    }
    fn peak_mib(&self) -> f64 {
        self.rounds.iter().map(|r| r.peak_kib).max().unwrap_or(0) as f64 / 1024.0
    }
}

/// Starts the peer in front of the mesh's order-service and measures both gateways.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mesh: &Mesh,
    gateway: &Proc,
    peer_binary: &Path,
    dir: &Path,
    sku: &str,
    concurrency: usize,
    rounds: usize,
    round: Duration,
    idle: usize,
) -> anyhow::Result<SideBySide> {
    let listen = free_addr()?;
    let tls = mesh.certs.files_for(workloads::GATEWAY);
    let mut cmd = Command::new(peer_binary);
    cmd.arg("-listen")
        .arg(listen.to_string())
        .arg("-backend")
        .arg(mesh.order.to_string())
        .arg("-cacert")
        .arg(&tls.ca)
        .arg("-cert")
        .arg(&tls.cert)
        .arg("-key")
        .arg(&tls.key)
        .arg("-skip-hostname")
        .arg("-orig-name=false");
    let peer = Proc::spawn("grpc-gateway", cmd, dir)?;
    wait_ready(listen, "/__peer/healthz").await?;
    let path = format!("/v1/products/{sku}");
    let load = |addr: SocketAddr| Load::Get {
        url: format!("http://{addr}{path}"),
        headers: vec![],
        think: None,
    };
    let contenders = [
        ("ordermesh edge-gateway", mesh.gateway, gateway),
        ("grpc-gateway (Go)", listen, &peer),
    ];
    let mut results: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    println!(
        "(6) side by side with grpc-gateway: GET {path}, {concurrency} clients, {rounds} alternating rounds"
    );
    for r in 0..rounds {
        // Alternate who goes first, so drift on a shared machine falls on both.
        let order: [usize; 2] = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (name, addr, proc_) = contenders[i];
            wrk::run(&load(addr), dir, concurrency, Duration::from_secs(1))?;
            proc_.reset_peak();
            let before = proc_.cpu_seconds();
            let m = wrk::run(&load(addr), dir, concurrency, round)?;
            let cpu_us = (proc_.cpu_seconds() - before) * 1e6 / m.requests.max(1) as f64;
            println!(
                "    round {}: {name}: {:.0} req/s, p99 {} µs, {cpu_us:.1} µs CPU/request, {} errors",
                r + 1,
                m.per_second(),
                m.p99_us,
                m.errors
            );
            results[i].push(Run {
                measured: m,
                cpu_us,
                peak_kib: proc_.peak_rss_kib(),
            });
        }
    }
    // Open loop at half the slower one's closed-loop rate: below saturation for both.
    let slower = results
        .iter()
        .map(|rs| median(rs.iter().map(|r| r.measured.per_second()).collect()))
        .fold(f64::INFINITY, f64::min);
    let rate = ((slower / 2.0) as u32).max(100);
    let mut open = Vec::new();
    for (name, addr, _) in contenders {
        let m = crate::open_loop::run(addr, &path, &[], concurrency, rate, round).await?;
        println!(
            "    open loop {rate} req/s: {name}: p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors",
            m.p50_us, m.p99_us, m.p999_us, m.errors
        );
        open.push(m);
    }
    let mut idle_kib = Vec::new();
    for (name, addr, proc_) in contenders {
        let probe = if proc_.name == "grpc-gateway" {
            "/__peer/healthz"
        } else {
            "/healthz"
        };
        let before = proc_.rss_kib();
        let held = IdleConnections::open_probing(addr, idle, probe).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let with = proc_.rss_kib();
        println!(
            "    {idle} idle connections: {name}: {:.1} MiB (from {:.1})",
            with as f64 / 1024.0,
            before as f64 / 1024.0
        );
        drop(held);
        idle_kib.push((with, before));
    }
    let names = [contenders[0].0, contenders[1].0];
    drop(peer);
    let mut open = open.into_iter();
    let mut results = results.into_iter();
    let mut idle_kib = idle_kib.into_iter();
    let mut next = |name| Contender {
        name,
        rounds: results.next().unwrap_or_default(),
        idle_kib: idle_kib.next().unwrap_or_default(),
        open_loop: open.next().unwrap_or_default(),
    };
    Ok(SideBySide {
        path,
        concurrency,
        round,
        idle,
        rate,
        ours: next(names[0]),
        peer: next(names[1]),
    })
}

async fn wait_ready(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if ordermesh_tests::http::try_request(addr, "GET", path, &[], b"")
            .await
            .is_ok_and(|r| r.status == 200)
        {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(20),
            "grpc-gateway did not come up on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl SideBySide {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "\n### Side by side with grpc-gateway\n\n`GET {}` through each gateway to the same order-service process over mTLS, {} clients, {} alternating rounds of {} s (wrk); CPU and peak RSS of each gateway process read from `/proc`. Medians:\n",
            self.path,
            self.concurrency,
            self.ours.rounds.len(),
            self.round.as_secs()
        );
        let _ = writeln!(
            s,
            "| | req/s | p99 ms | CPU µs/request | peak RSS MiB | {} idle connections, RSS MiB | open loop {} req/s: p50 / p99 / p99.9 ms |",
            self.idle, self.rate
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
        for c in [&self.ours, &self.peer] {
            let o = &c.open_loop;
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} | {:.2} / {:.2} / {:.2} ({} errors) |",
                c.name,
                c.rps(),
                c.p99_ms(),
                c.cpu_us(),
                c.peak_mib(),
                c.idle_kib.0 as f64 / 1024.0,
                o.p50_us as f64 / 1000.0,
                o.p99_us as f64 / 1000.0,
                o.p999_us as f64 / 1000.0,
                o.errors
            );
        }
        let cpu = self.ours.cpu_us() / self.peer.cpu_us().max(f64::MIN_POSITIVE);
        let p99 = self.ours.p99_ms() / self.peer.p99_ms().max(f64::MIN_POSITIVE);
        let rss = self.ours.peak_mib() / self.peer.peak_mib().max(f64::MIN_POSITIVE);
        let idle_mib = self.ours.idle_kib.0 as f64 / 1024.0;
        let _ = writeln!(s, "\n| target | measured | met |\n|---|---|---|");
        for (what, measured, met) in [
            (
                "gateway CPU per request ≤ 0.5 × grpc-gateway's",
                format!("{cpu:.2} ×"),
                cpu <= 0.5,
            ),
            (
                "p99 at these clients ≤ 0.7 × grpc-gateway's",
                format!("{p99:.2} ×"),
                p99 <= 0.7,
            ),
            (
                "peak RSS ≤ grpc-gateway's",
                format!("{rss:.2} ×"),
                rss <= 1.0,
            ),
            (
                "1,000 idle keep-alive connections ≤ 32 MiB",
                format!("{idle_mib:.1} MiB"),
                idle_mib <= 32.0,
            ),
        ] {
            let _ = writeln!(
                s,
                "| {what} | {measured} | {} |",
                if met { "yes" } else { "**no**" }
            );
        }
        s
    }
}
