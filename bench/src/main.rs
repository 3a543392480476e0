//! `ordermesh-bench run`: starts what it measures on loopback, loads each target in turn
//! with the same generator settings, and writes the results into `BENCHMARKS.md`.
//! `ordermesh-bench hello`: the minimal HTTP server measured as the limit.

mod fixture;
mod grpc_load;
mod hello;
mod idle;
mod measure;
mod open_loop;
mod processes;
mod report;
mod rounds;
mod side_by_side;
mod soak;
mod wrk;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ordermesh_platform::config::{MeshConfig, MtlsMode};
use ordermesh_platform::identity::workloads;

use crate::grpc_load::GetOrderLoad;
use crate::idle::IdleConnections;
use crate::measure::Measured;
use crate::processes::{Mesh, Proc, free_addr};
use crate::report::{IdleResult, Report, Row};
use crate::rounds::HopRounds;
use crate::wrk::Load;

#[derive(Parser)]
#[command(name = "ordermesh-bench", about = "Benchmarks of the ordermesh mesh")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every benchmark and write the results.
    Run {
        /// The release `ordermesh` binary to run the roles with.
        #[arg(long)]
        ordermesh: PathBuf,
        /// Seconds of measured load per run (after a 2 s warm-up).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Concurrent clients; each level is run for every target.
        #[arg(long, value_delimiter = ',', default_value = "32,64")]
        concurrency: Vec<usize>,
        /// Idle keep-alive connections held open against the gateway.
        #[arg(long, default_value_t = 1000)]
        idle: usize,
        /// Results file; the generated section between its markers is replaced.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// For the paced runs of (2) and (3): milliseconds each client waits after an answer.
        #[arg(long, default_value_t = 10)]
        think_ms: u64,
        /// Interleaved rounds of (2) and (3), back to back and paced, whose median difference
        /// is the hop's cost.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// Seconds of load per run within a round.
        #[arg(long, default_value_t = 3)]
        round_secs: u64,
        /// The grpc-gateway peer (`bench/grpc-gateway-peer.sh` builds it) to measure side by
        /// side with the edge gateway; without it that comparison is left out.
        #[arg(long)]
        grpc_gateway: Option<PathBuf>,
        /// Alternating rounds of the side-by-side comparison, and seconds of load in each.
        #[arg(long, default_value_t = 4)]
        side_rounds: usize,
        #[arg(long, default_value_t = 10)]
        side_secs: u64,
    },
    /// Soak at a fixed rate, then check the per-user rate limit; results go to RELIABILITY.md.
    Soak {
        #[arg(long)]
        ordermesh: PathBuf,
        /// Requests per second through the gateway.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Seconds of soak.
        #[arg(long, default_value_t = 120)]
        duration: u64,
        /// The per-user limit checked afterwards: requests per minute and burst.
        #[arg(long, default_value_t = 1200)]
        limit_per_minute: u32,
        #[arg(long, default_value_t = 20)]
        limit_burst: u32,
        #[arg(long, default_value = "RELIABILITY.md")]
        out: PathBuf,
    },
    /// Serve the fixed JSON body (the limit).
    Hello {
        #[arg(long)]
        addr: SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Hello { addr } => runtime.block_on(hello::serve(addr)),
        Cmd::Soak {
            ordermesh,
            rate,
            duration,
            limit_per_minute,
            limit_burst,
            out,
        } => runtime.block_on(async {
            let dir = std::env::temp_dir().join(format!("ordermesh-soak-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let mut mesh = Mesh::start(&ordermesh, &dir, Some((limit_per_minute, limit_burst)))?;
            mesh.ready().await?;
            let fixture = fixture::prepare(mesh.gateway, 64, 8).await?;
            println!("soak: {rate} requests/s for {duration} s");
            let soaked = soak::soak(&mesh, &fixture, rate, Duration::from_secs(duration)).await;
            println!(
                "    by status {:?}, {} transport errors",
                soaked.by_status, soaked.transport_errors
            );
            // A user who has not spent any of their bucket yet.
            let fresh = &fixture.tokens[fixture.tokens.len() - 1];
            tokio::time::sleep(Duration::from_secs(5)).await;
            println!(
                "rate limit: {limit_per_minute}/min, burst {limit_burst}, 16 clients of one user"
            );
            let limited = soak::rate_limit(
                mesh.gateway,
                fresh,
                limit_per_minute,
                limit_burst,
                16,
                Duration::from_secs(20),
            )
            .await;
            println!(
                "    {} admitted of {:.0} allowed ({:+.1}%)",
                limited.admitted,
                limited.expected,
                limited.error_ratio() * 100.0
            );
            soak::write(&out, &soaked, &limited)?;
            drop(mesh);
            let _ = std::fs::remove_dir_all(&dir);
            println!("results written to {}", out.display());
            anyhow::Ok(())
        }),
        Cmd::Run {
            ordermesh,
            duration,
            concurrency,
            idle,
            out,
            think_ms,
            rounds,
            round_secs,
            grpc_gateway,
            side_rounds,
            side_secs,
        } => {
            let settings = Settings {
                grpc_gateway,
                side_rounds,
                side: Duration::from_secs(side_secs),
                ordermesh,
                duration: Duration::from_secs(duration),
                concurrency,
                idle,
                think: Duration::from_millis(think_ms),
                rounds,
                round: Duration::from_secs(round_secs),
            };
            let report = runtime.block_on(run(&settings))?;
            report.write(&out)?;
            println!("results written to {}", out.display());
            Ok(())
        }
    }
}

struct Settings {
    grpc_gateway: Option<PathBuf>,
    side_rounds: usize,
    side: Duration,
    ordermesh: PathBuf,
    duration: Duration,
    concurrency: Vec<usize>,
    idle: usize,
    think: Duration,
    rounds: usize,
    round: Duration,
}

const WARM_UP: Duration = Duration::from_secs(2);

async fn run(settings: &Settings) -> anyhow::Result<Report> {
    Command::new("wrk")
        .arg("--version")
        .output()
        .context("wrk is not installed (bench/run.sh installs it)")?;
    let dir = std::env::temp_dir().join(format!("ordermesh-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let hello_addr = free_addr()?;
    let mut hello_cmd = Command::new(std::env::current_exe()?);
    hello_cmd
        .arg("hello")
        .arg("--addr")
        .arg(hello_addr.to_string());
    let hello = Proc::spawn("hello", hello_cmd, &dir)?;

    println!("starting the mesh ({} roles as processes)", 5);
    let mut mesh = Mesh::start(&settings.ordermesh, &dir, None)?;
    mesh.ready().await?;
    println!("preparing shoppers, products and an order to read");
    let fixture = fixture::prepare(mesh.gateway, 64, 32).await?;

    let gateway_files = mesh.certs.files_for(workloads::GATEWAY);
    let direct = GetOrderLoad {
        mesh: MeshConfig {
            trust_domain: MeshConfig::DEFAULT_TRUST_DOMAIN.into(),
            namespace: MeshConfig::DEFAULT_NAMESPACE.into(),
            mtls_mode: MtlsMode::Builtin,
            tls: Some(gateway_files),
        },
        endpoint: format!("https://{}", mesh.order),
        order_name: fixture.order_name.clone(),
        user_id: fixture.order_user_id.clone(),
    };
    let read_url = format!("http://{}/v1/{}", mesh.gateway, fixture.order_name);
    let auth = format!("Authorization: Bearer {}", fixture.tokens[0]);

    let mut report = Report::new(settings.duration, &settings.concurrency);
    report.round = settings.round;
    let mut hop_rounds = Vec::new();
    let all: Vec<&Proc> = std::iter::once(&hello)
        .chain(mesh.processes.iter())
        .collect();
    let gateway_proc = mesh
        .by_name(workloads::GATEWAY)
        .context("gateway process")?;
    let reset = || all.iter().for_each(|p| p.reset_peak());
    let peaks = || {
        all.iter()
            .map(|p| (p.name.clone(), p.peak_rss_kib()))
            .collect::<Vec<_>>()
    };

    for &c in &settings.concurrency {
        let http = |load: &Load<'_>, d: Duration| wrk::run(load, &dir, c, d);
        let hello_load = Load::Get {
            url: format!("http://{hello_addr}/"),
            headers: vec![],
            think: None,
        };
        let read_load = |think| Load::Get {
            url: read_url.clone(),
            headers: vec![auth.clone()],
            think,
        };
        let mut measure = |id: u8,
                           what: &str,
                           think: Option<Duration>,
                           f: &mut dyn FnMut(Duration) -> anyhow::Result<Measured>|
         -> anyhow::Result<()> {
            let pacing = think.map_or(String::new(), |t| {
                format!(", each waiting {} ms after an answer", t.as_millis())
            });
            println!("({id}) {what}, {c} clients{pacing}");
            f(WARM_UP)?;
            reset();
            let cpu_before = gateway_proc.cpu_seconds();
            let m = f(settings.duration)?;
            let cpu = gateway_proc.cpu_seconds() - cpu_before;
            let gateway_cpu_us = matches!(id, 3 | 4).then(|| cpu * 1e6 / m.requests.max(1) as f64);
            println!(
                "    {:.0} req/s, p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors",
                m.per_second(),
                m.p50_us,
                m.p99_us,
                m.p999_us,
                m.errors
            );
            report.rows.push(Row {
                id,
                what: what.into(),
                concurrency: c,
                think,
                measured: m,
                peak_rss_kib: peaks(),
                gateway_cpu_us,
            });
            Ok(())
        };
        let direct_run = |d, think| {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(direct.run(c, d, think))
            })
        };
        measure(1, "minimal HTTP server, fixed JSON", None, &mut |d| {
            http(&hello_load, d)
        })?;
        measure(2, "direct gRPC GetOrder over mTLS", None, &mut |d| {
            direct_run(d, None)
        })?;
        measure(3, "gateway GET /v1/orders/{id}", None, &mut |d| {
            http(&read_load(None), d)
        })?;
        // The same two reads below saturation: what the hop itself adds, not the queue.
        let think = Some(settings.think);
        measure(
            2,
            "direct gRPC GetOrder over mTLS, paced",
            think,
            &mut |d| direct_run(d, think),
        )?;
        measure(3, "gateway GET /v1/orders/{id}, paced", think, &mut |d| {
            http(&read_load(think), d)
        })?;
        for think in [None, Some(settings.think)] {
            let pacing = rounds::load_label(think);
            println!(
                "(2)/(3) {} interleaved rounds of {} s, {c} clients, {pacing}",
                settings.rounds,
                settings.round.as_secs()
            );
            let rounds = rounds::interleave(
                settings.rounds,
                &mut || direct_run(settings.round, think),
                &mut || http(&read_load(think), settings.round),
            )?;
            let hop = HopRounds {
                concurrency: c,
                think,
                rounds,
            };
            for (i, r) in hop.rounds.iter().enumerate() {
                println!(
                    "    round {}: direct {:.0} req/s p99 {} µs, gateway {:.0} req/s p99 {} µs, added p99 {:+.2} ms",
                    i + 1,
                    r.direct.per_second(),
                    r.direct.p99_us,
                    r.gateway.per_second(),
                    r.gateway.p99_us,
                    r.added_p99_ms()
                );
            }
            if let Some(added) = hop.median_added_p99_ms() {
                println!("    median added p99 {added:+.2} ms");
            }
            hop_rounds.push(hop);
        }
        let mut round = 0;
        measure(4, "gateway POST /v1/orders (placement)", None, &mut |d| {
            round += 1;
            let run = format!("c{c}r{round}");
            http(
                &Load::PlaceOrders {
                    base: format!("http://{}", mesh.gateway),
                    run: &run,
                    tokens: &fixture.tokens,
                    skus: &fixture.skus,
                },
                d,
            )
        })?;
    }

    report.hop_rounds = hop_rounds;
    if let Some(peer) = &settings.grpc_gateway {
        let c = *settings.concurrency.last().unwrap_or(&64);
        let sku = fixture.skus.first().context("a product to read")?;
        report.side_by_side = Some(
            side_by_side::run(
                &mesh,
                gateway_proc,
                peer,
                &dir,
                sku,
                c,
                settings.side_rounds,
                settings.side,
                settings.idle,
            )
            .await?,
        );
    }
    let last = *settings.concurrency.last().unwrap_or(&64);
    report.revocation = Some(revocation_cost(
        report
            .rows
            .iter()
            .find(|r| r.id == 3 && r.think.is_none() && r.concurrency == last)
            .and_then(|r| r.gateway_cpu_us),
    ));
    println!(
        "(5) gateway holding {} idle keep-alive connections",
        settings.idle
    );
    let gateway = mesh
        .by_name(workloads::GATEWAY)
        .context("gateway process")?;
    let before_kib = gateway.rss_kib();
    gateway.reset_peak();
    let mut idle = IdleConnections::open(mesh.gateway, settings.idle).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held_kib = gateway.rss_kib();
    let c = *settings.concurrency.last().unwrap_or(&64);
    let under_load = wrk::run(
        &Load::Get {
            url: read_url.clone(),
            headers: vec![auth.clone()],
            think: None,
        },
        &dir,
        c,
        settings.duration,
    )?;
    let alive = idle.still_alive().await;
    report.idle = Some(IdleResult {
        connections: idle.count(),
        still_alive: alive,
        rss_before_kib: before_kib,
        rss_held_kib: held_kib,
        peak_under_load_kib: gateway.peak_rss_kib(),
        read_under_load: under_load,
        load_concurrency: c,
    });
    drop(idle);
    drop(mesh);
    drop(hello);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The revocation check's cost per request, timed here against a list far larger than a
/// gateway normally holds (every session ended in the last hour of a busy shop).
fn revocation_cost(read_cpu_us: Option<f64>) -> report::RevocationCost {
    use ordermesh_contracts::user::{Revocation, revocation::Kind};
    use ordermesh_edge_gateway::revocations::RevocationList;
    use ordermesh_platform::jwt::AccessClaims;
    const SESSIONS: usize = 10_000;
    const USERS: usize = 1_000;
    let now = std::time::SystemTime::now();
    let at = Some(prost_types::Timestamp::from(now));
    let list = RevocationList::default();
    let mut page: Vec<Revocation> = (0..SESSIONS)
        .map(|i| Revocation {
            kind: Kind::Session as i32,
            subject: format!("session-{i}"),
            time: at,
        })
        .collect();
    page.extend((0..USERS).map(|i| Revocation {
        kind: Kind::User as i32,
        subject: format!("user-{i}"),
        time: Some(prost_types::Timestamp::from(
            now - Duration::from_secs(3600),
        )),
    }));
    list.apply(&page, "bench".into());
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // A user with a not-before time (the slower path: the token's issue time is read from
    // its UUIDv7 id), in a session that was not ended.
    let claims = AccessClaims {
        iss: "bench".into(),
        aud: "bench".into(),
        sub: "user-7".into(),
        exp: secs + 900,
        iat: secs,
        nbf: secs,
        jti: "0196e0a1-7c3b-7d2e-9a41-6f0c2b8e5d13".into(),
        roles: vec!["user".into()],
        sid: "session-live".into(),
    };
    const CHECKS: u32 = 1_000_000;
    let started = Instant::now();
    let mut refused = 0u32;
    for _ in 0..CHECKS {
        refused += u32::from(
            std::hint::black_box(&list)
                .refuses(std::hint::black_box(&claims))
                .is_some(),
        );
    }
    let check_ns = started.elapsed().as_nanos() as f64 / f64::from(CHECKS);
    println!(
        "revocation check: {check_ns:.0} ns per check ({refused} of {CHECKS} refused), against {SESSIONS} sessions and {USERS} users"
    );
    report::RevocationCost {
        sessions: SESSIONS,
        users: USERS,
        check_ns,
        read_cpu_us,
    }
}
