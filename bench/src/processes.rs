//! The measured processes: every role of the mesh as its own `ordermesh serve` process (as a
//! pod runs it), plus the minimal HTTP server, with their peak and current RSS read from
//! `/proc`.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use ordermesh_platform::certs::CertDir;
use ordermesh_platform::identity::workloads;

pub const ADMIN_EMAIL: &str = "bench-admin@example.com";
pub const ADMIN_PASSWORD: &str = "a long bench admin secret";

pub struct Proc {
    pub name: String,
    child: Child,
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Proc {
    pub fn spawn(name: &str, mut command: Command, log_dir: &Path) -> anyhow::Result<Self> {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User plus system CPU time the process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())) else {
            return 0.0;
        };
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            return 0.0;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // SAFETY: sysconf only reads a configuration value.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        (ticks(14) + ticks(15)) as f64 / hz
    }

    /// Resets the kernel's peak-RSS mark (`VmHWM`) so the next reading is this phase's peak.
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// Peak resident set since start or the last reset, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmHWM:").unwrap_or(0)
    }

    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The mesh as separate processes on loopback, with dev certificates in `dir`.
pub struct Mesh {
    pub processes: Vec<Proc>,
    pub gateway: SocketAddr,
    pub order: SocketAddr,
    pub certs: CertDir,
}

const SERVICES: [(&str, &str); 5] = [
    ("user", workloads::USER),
    ("order", workloads::ORDER),
    ("payment", workloads::PAYMENT),
    ("audit", workloads::AUDIT),
    ("notification", workloads::NOTIFICATION),
];

impl Mesh {
    /// `user_limit` is the gateway's per-user (requests/min, burst); `None` sets it far above
    /// any rate reached, so the benchmarks measure the mesh, not the limiter.
    pub fn start(
        ordermesh: &Path,
        dir: &Path,
        user_limit: Option<(u32, u32)>,
    ) -> anyhow::Result<Self> {
        let certs = CertDir::new(dir.join("certs"));
        certs.ensure(
            ordermesh_platform::config::MeshConfig::DEFAULT_TRUST_DOMAIN,
            ordermesh_platform::config::MeshConfig::DEFAULT_NAMESPACE,
            workloads::ALL,
        )?;
        let password_file = dir.join("admin-password");
        std::fs::write(&password_file, ADMIN_PASSWORD)?;
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;

        let addrs: Vec<SocketAddr> = SERVICES
            .iter()
            .map(|_| free_addr())
            .collect::<anyhow::Result<_>>()?;
        let endpoint = |i: usize| format!("https://{}", addrs[i]);
        let base = |workload: &str| {
            let files = certs.files_for(workload);
            let mut c = Command::new(ordermesh);
            c.env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("RUST_LOG", "warn")
                .env("ORDERMESH_TLS_CA", &files.ca)
                .env("ORDERMESH_TLS_CERT", &files.cert)
                .env("ORDERMESH_TLS_KEY", &files.key)
                .env("ORDERMESH_USER_ENDPOINT", endpoint(0))
                .env("ORDERMESH_ORDER_ENDPOINT", endpoint(1))
                .env("ORDERMESH_PAYMENT_ENDPOINT", endpoint(2))
                .env("ORDERMESH_AUDIT_ENDPOINT", endpoint(3))
                .env("ORDERMESH_NOTIFICATION_ENDPOINT", endpoint(4));
            c
        };
        let mut processes = Vec::new();
        for (i, (role, workload)) in SERVICES.iter().enumerate() {
            let mut c = base(workload);
            c.arg("serve")
                .arg(role)
                .env("ORDERMESH_GRPC_ADDR", addrs[i].to_string())
                .env("ORDERMESH_DATA_DIR", dir.join("data").join(role));
            if *role == "user" {
                c.env("ORDERMESH_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
                    .env("ORDERMESH_BOOTSTRAP_ADMIN_PASSWORD_FILE", &password_file);
            }
            processes.push(Proc::spawn(workload, c, &logs)?);
        }
        let gateway = free_addr()?;
        let mut c = base(workloads::GATEWAY);
        let (per_minute, burst) = user_limit.unwrap_or((600_000_000, 10_000_000));
        // Account endpoints (register, login) stay unlimited: the fixture makes many accounts.
        c.arg("serve")
            .arg("gateway")
            .env("ORDERMESH_HTTP_ADDR", gateway.to_string())
            .env("ORDERMESH_RATE_LIMIT_PER_MINUTE", per_minute.to_string())
            .env("ORDERMESH_RATE_LIMIT_BURST", burst.to_string())
            .env("ORDERMESH_ACCOUNT_RATE_LIMIT_PER_MINUTE", "600000000")
            .env("ORDERMESH_ACCOUNT_RATE_LIMIT_BURST", "10000000")
            .env("ORDERMESH_ADDRESS_RATE_LIMIT_PER_MINUTE", "600000000")
            .env("ORDERMESH_ADDRESS_RATE_LIMIT_BURST", "10000000")
            // Every load generator here is one client address on loopback, and (5) holds its
            // idle keep-alives open for the length of a measurement.
            .env("ORDERMESH_MAX_CONNECTIONS_PER_ADDRESS", "100000")
            .env("ORDERMESH_HTTP_HEADER_TIMEOUT_MS", "600000");
        processes.push(Proc::spawn(workloads::GATEWAY, c, &logs)?);
        Ok(Self {
            processes,
            gateway,
            order: addrs[1],
            certs,
        })
    }

    /// Waits until the gateway reports every backend healthy.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        for _ in 0..600 {
            for p in &mut self.processes {
                anyhow::ensure!(p.is_running(), "{} exited; see its log", p.name);
            }
            if let Ok(Ok(res)) = tokio::time::timeout(
                Duration::from_secs(2),
                ordermesh_tests::http::try_request(self.gateway, "GET", "/readyz", &[], b""),
            )
            .await
                && res.status == 200
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("the mesh was not ready within 60 s")
    }

    pub fn by_name(&self, name: &str) -> Option<&Proc> {
        self.processes.iter().find(|p| p.name == name)
    }
}
