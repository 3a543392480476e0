//! Reliability under load, outside the test suite (it takes minutes and real rates):
//! - soak: a fixed request rate through the gateway (reads and order placements) for a
//!   bounded time, counting answers by class and sampling every process's RSS, to show zero
//!   5xx and flat memory;
//! - rate limit: one user's concurrent clients hammering the gateway, to show the per-user
//!   token bucket admits its configured rate within ±10%.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ordermesh_tests::http::try_request;
use tokio::sync::Mutex;

use crate::fixture::{CURRENCY, Fixture};
use crate::processes::Mesh;

pub struct SoakResult {
    pub rate: u32,
    pub duration: Duration,
    pub by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    /// (seconds since start, process, RSS KiB)
    pub rss: Vec<(u64, String, u64)>,
}

impl SoakResult {
    pub fn server_errors(&self) -> u64 {
        self.by_status
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }
}

pub async fn soak(mesh: &Mesh, fixture: &Fixture, rate: u32, duration: Duration) -> SoakResult {
    let by_status = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let transport_errors = Arc::new(AtomicU64::new(0));
    let mut rss = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent: u64 = 0;
    let mut next_sample = Duration::ZERO;
    let mut inflight = Vec::new();
    while started.elapsed() < duration {
        tick.tick().await;
        if started.elapsed() >= next_sample {
            for p in &mesh.processes {
                rss.push((next_sample.as_secs(), p.name.clone(), p.rss_kib()));
            }
            next_sample += Duration::from_secs(5);
        }
        sent += 1;
        // Requests rotate over every shopper, so each stays far below the per-user limit.
        let token = fixture.tokens[sent as usize % fixture.tokens.len()].clone();
        let gateway = mesh.gateway;
        // One in four requests places an order; the rest read the wallet or the order list.
        let (method, path, body) = if sent.is_multiple_of(4) {
            let sku = &fixture.skus[sent as usize % fixture.skus.len()];
            (
                "POST",
                "/v1/orders",
                format!(
                    r#"{{"items":[{{"sku":"{sku}","quantity":1}}],"currency":"{CURRENCY}","idempotencyKey":"soak-{sent}"}}"#
                ),
            )
        } else if sent % 4 == 1 {
            ("GET", "/v1/wallet", String::new())
        } else {
            ("GET", "/v1/orders?pageSize=10", String::new())
        };
        let (by_status, transport_errors) = (by_status.clone(), transport_errors.clone());
        inflight.push(tokio::spawn(async move {
            let auth = format!("Bearer {token}");
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            match try_request(gateway, method, path, &headers, body.as_bytes()).await {
                Ok(res) => *by_status.lock().await.entry(res.status).or_default() += 1,
                Err(_) => {
                    transport_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
        if inflight.len() > 4096 {
            inflight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
        }
    }
    for t in inflight {
        let _ = t.await;
    }
    for p in &mesh.processes {
        rss.push((duration.as_secs(), p.name.clone(), p.rss_kib()));
    }
    let by_status = by_status.lock().await.clone();
    SoakResult {
        rate,
        duration,
        by_status,
        transport_errors: transport_errors.load(Ordering::Relaxed),
        rss,
    }
}

pub struct RateLimitResult {
    pub per_minute: u32,
    pub burst: u32,
    pub clients: usize,
    pub duration: Duration,
    pub admitted: u64,
    pub limited: u64,
    pub expected: f64,
}

impl RateLimitResult {
    pub fn error_ratio(&self) -> f64 {
        (self.admitted as f64 - self.expected) / self.expected
    }
}

/// `clients` concurrent connections for one user, as fast as they can, for `duration`.
pub async fn rate_limit(
    gateway: SocketAddr,
    token: &str,
    per_minute: u32,
    burst: u32,
    clients: usize,
    duration: Duration,
) -> RateLimitResult {
    let admitted = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (admitted, limited) = (admitted.clone(), limited.clone());
            let auth = format!("Bearer {token}");
            tokio::spawn(async move {
                while started.elapsed() < duration {
                    let headers = [("authorization", auth.as_str())];
                    if let Ok(res) = try_request(gateway, "GET", "/v1/wallet", &headers, b"").await
                    {
                        match res.status {
                            429 => limited.fetch_add(1, Ordering::Relaxed),
                            _ => admitted.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    RateLimitResult {
        per_minute,
        burst,
        clients,
        duration: elapsed,
        admitted: admitted.load(Ordering::Relaxed),
        limited: limited.load(Ordering::Relaxed),
        expected: f64::from(burst) + f64::from(per_minute) / 60.0 * elapsed.as_secs_f64(),
    }
}

const BEGIN: &str =
    "<!-- soak:begin (generated by `bench/run.sh soak`; edits inside are replaced) -->";
const END: &str = "<!-- soak:end -->";

pub fn markdown(soak: &SoakResult, limit: &RateLimitResult) -> String {
    use std::fmt::Write as _;
    let mut s = format!("{BEGIN}\n\n");
    let _ = writeln!(
        s,
        "Run of {} at commit `{}` on {}.\n",
        crate::report::first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        crate::report::first_line("git", &["rev-parse", "--short", "HEAD"]),
        crate::report::machine()
    );
    let total: u64 = soak.by_status.values().sum();
    let _ = writeln!(
        s,
        "**Soak**: {} requests/s for {} s through the gateway (¾ reads, ¼ order placements): {} answered, by status {:?}, {} transport errors, **{} server errors (5xx)**.\n",
        soak.rate,
        soak.duration.as_secs(),
        total,
        soak.by_status,
        soak.transport_errors,
        soak.server_errors()
    );
    let _ = writeln!(s, "| process | RSS MiB at each 5 s sample | first → last |");
    let _ = writeln!(s, "|---|---|---|");
    let mut names: Vec<&String> = soak.rss.iter().map(|(_, n, _)| n).collect();
    names.sort();
    names.dedup();
    for name in names {
        let samples: Vec<f64> = soak
            .rss
            .iter()
            .filter(|(_, n, _)| n == name)
            .map(|(_, _, k)| *k as f64 / 1024.0)
            .collect();
        let list = samples
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join(" ");
        let (first, last) = (
            samples.first().copied().unwrap_or(0.0),
            samples.last().copied().unwrap_or(0.0),
        );
        let _ = writeln!(s, "| {name} | {list} | {first:.1} → {last:.1} |");
    }
    let _ = writeln!(
        s,
        "\n**Per-user rate limit**: {} requests/min with a burst of {}, {} concurrent clients of one user for {:.1} s: {} admitted, {} refused with 429; the bucket allows {:.0}; admitted is {:+.1}% of that (target ±10%).",
        limit.per_minute,
        limit.burst,
        limit.clients,
        limit.duration.as_secs_f64(),
        limit.admitted,
        limit.limited,
        limit.expected,
        limit.error_ratio() * 100.0
    );
    let _ = writeln!(s, "\n{END}");
    s
}

pub fn write(
    path: &std::path::Path,
    soak: &SoakResult,
    limit: &RateLimitResult,
) -> anyhow::Result<()> {
    crate::report::replace_section(path, "# Reliability", BEGIN, END, &markdown(soak, limit))
}
