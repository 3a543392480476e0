//! HTTP load with wrk: a fixed number of keep-alive connections for a fixed time, two
//! threads, and a Lua `done` hook that prints the exact percentiles and error counts.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::measure::Measured;

const REPORT: &str = r#"
threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
done = function(summary, latency, requests)
  local unconfirmed = 0
  local failed = {}
  for _, t in ipairs(threads) do
    unconfirmed = unconfirmed + (t:get("unconfirmed") or 0)
    for status, n in pairs(t:get("failed") or {}) do
      failed[status] = (failed[status] or 0) + n
    end
    local first = t:get("first_failure")
    if first then io.write("BENCH_FIRST_FAILURE " .. first .. "\n") end
  end
  for status, n in pairs(failed) do
    io.write(string.format("BENCH_FAILED %s %d\n", status, n))
  end
  local e = summary.errors
  io.write(string.format("BENCH_SOCKET connect=%d read=%d write=%d timeout=%d\n",
    e.connect, e.read, e.write, e.timeout))
  io.write(string.format(
    "BENCH %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max,
    e.status + e.connect + e.read + e.write + e.timeout, unconfirmed))
end
"#;

/// Places one order per request, for a random shopper and product, each with its own
/// idempotency key; a 2xx whose order is not CONFIRMED counts as an error.
fn orders_script(run: &str, tokens: &[String], skus: &[String]) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        r#"{REPORT}
local tokens = {{{tokens}}}
local skus = {{{skus}}}
local counter = 0
unconfirmed = 0
function init(args)
  math.randomseed(tid * 7919 + os.time())
end
function request()
  counter = counter + 1
  local body = '{{"items":[{{"sku":"' .. skus[math.random(#skus)] .. '","quantity":1}}],"currency":"EUR","idempotencyKey":"{run}-' .. tid .. '-' .. counter .. '"}}'
  return wrk.format("POST", "/v1/orders", {{["Authorization"] = "Bearer " .. tokens[math.random(#tokens)], ["Content-Type"] = "application/json"}}, body)
end
failed = {{}}
function response(status, headers, body)
  local key = nil
  if status >= 300 then
    key = tostring(status)
    failed[key] = (failed[key] or 0) + 1
  elseif not string.find(body, '"ORDER_STATE_CONFIRMED"', 1, true) then
    unconfirmed = unconfirmed + 1
    key = "unconfirmed"
  end
  if key and not first_failure then
    first_failure = status .. " " .. string.gsub(string.sub(body, 1, 400), "\n", " ")
  end
end
"#,
        tokens = list(tokens),
        skus = list(skus),
    )
}

pub enum Load<'a> {
    Get {
        url: String,
        headers: Vec<String>,
        /// Each connection waits this long after an answer before its next request.
        think: Option<Duration>,
    },
    PlaceOrders {
        base: String,
        run: &'a str,
        tokens: &'a [String],
        skus: &'a [String],
    },
}

pub fn run(
    load: &Load<'_>,
    work_dir: &Path,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<Measured> {
    let script = work_dir.join("wrk.lua");
    let (url, headers) = match load {
        Load::Get {
            url,
            headers,
            think,
        } => {
            let pacing = think.map_or(String::new(), |t| {
                format!("\nfunction delay()\n  return {}\nend\n", t.as_millis())
            });
            std::fs::write(&script, format!("{REPORT}{pacing}"))?;
            (url.clone(), headers.clone())
        }
        Load::PlaceOrders {
            base,
            run,
            tokens,
            skus,
        } => {
            std::fs::write(&script, orders_script(run, tokens, skus))?;
            (base.clone(), vec![])
        }
    };
    let mut cmd = Command::new("wrk");
    cmd.arg("-t2")
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs()))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(&script);
    for h in &headers {
        cmd.arg("-H").arg(h);
    }
    let out = cmd.arg(&url).output().context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .with_context(|| format!("wrk printed no report: {stdout}"))?;
    for detail in stdout.lines().filter(|l| {
        l.starts_with("BENCH_FAILED ")
            || l.starts_with("BENCH_FIRST_FAILURE ")
            || (l.starts_with("BENCH_SOCKET ")
                && !l.ends_with("connect=0 read=0 write=0 timeout=0"))
    }) {
        println!("    {detail}");
    }
    let n: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().map(|f| f as u64))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad wrk report: {line}"))?;
    anyhow::ensure!(n.len() == 8, "bad wrk report: {line}");
    Ok(Measured {
        requests: n[0],
        elapsed: Duration::from_micros(n[1]),
        p50_us: n[2],
        p99_us: n[3],
        p999_us: n[4],
        errors: n[6] + n[7],
    })
}
