//! `tta bench monitor`: what the resource monitor costs its host, and how fast it can be
//! scraped. Two `tta-resource-monitor` processes run side by side against a private Redis: one
//! sampling at `--interval` (1 Hz by default), and the baseline, the same binary sampling once an
//! hour — the runtime alone (admin server, gRPC, metrics upkeep). Their CPU time (utime + stime
//! of all threads, from `/proc/<pid>/stat`) and resident memory (`VmRSS`) are read over
//! `--duration`.
//!
//! Then `/metrics` of the sampling monitor is scraped `--scrapes` times, against its `/health`
//! (a trivial route on the same server) as the baseline: the difference is rendering the
//! exposition text.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::json;
use tta_testkit::{RedisServer, ServiceProcess, free_port, http_get};

use super::stats::Latencies;

#[derive(Debug, Clone, clap::Args)]
pub struct MonitorBenchArgs {
    /// How long the processes' CPU time and memory are observed.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sampling interval of the monitor under test.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Number of `/metrics` (and `/health`) requests timed.
    #[arg(long, default_value_t = 2000)]
    scrapes: usize,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

struct Monitor {
    process: ServiceProcess,
    admin: SocketAddr,
}

async fn spawn(redis: &RedisServer, host: &str, interval: Duration) -> anyhow::Result<Monitor> {
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let args = vec![
        "--admin-addr".to_owned(),
        admin.to_string(),
        "--grpc-addr".to_owned(),
        grpc.to_string(),
    ];
    let env = vec![
        ("TTA_REDIS_URL", redis.url()),
        ("TTA_TELEMETRY__LOG_LEVEL", "warn".to_owned()),
        ("TTA_RESOURCE_MONITOR__HOST_NAME", host.to_owned()),
        (
            "TTA_MONITORING__METRICS_INTERVAL",
            humantime::format_duration(interval).to_string(),
        ),
    ];
    let process = ServiceProcess::spawn("tta-resource-monitor", &args, &env)?;
    process.wait_ready(admin, Duration::from_secs(30)).await?;
    Ok(Monitor { process, admin })
}

/// Linux reports process CPU times in `/proc` in USER_HZ ticks, fixed at 100 per second by the
/// kernel ABI whatever the kernel's own tick rate.
const USER_HZ: u64 = 100;

/// CPU time (user + system) of all the process's threads, including threads that have ended
/// (the runtime's blocking threads come and go), from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .context("malformed stat")?;
    let tick = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|field| field.parse().ok())
            .context("malformed stat")
    };
    // utime and stime are fields 14 and 15; `fields` starts at field 3 (the state).
    let ticks = tick(11)? + tick(12)?;
    Ok(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Resident memory in bytes.
fn rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .context("no VmRSS")?;
    Ok(kib * 1024)
}

struct Cost {
    cpu_percent: f64,
    rss_max: u64,
}

/// CPU (percent of one core) and peak RSS of each pid over `duration`.
async fn observe(pids: &[u32], duration: Duration) -> anyhow::Result<Vec<Cost>> {
    let started = Instant::now();
    let before: Vec<Duration> = pids
        .iter()
        .map(|pid| cpu_time(*pid))
        .collect::<Result<_, _>>()?;
    let mut rss_max = vec![0u64; pids.len()];
    while started.elapsed() < duration {
        for (pid, max) in pids.iter().zip(rss_max.iter_mut()) {
            *max = (*max).max(rss(*pid)?);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .zip(rss_max)
        .map(|((pid, before), rss_max)| {
            let used = cpu_time(*pid)?.saturating_sub(before).as_secs_f64();
            Ok(Cost {
                cpu_percent: used * 100.0 / elapsed,
                rss_max,
            })
        })
        .collect()
}

async fn scrape(admin: SocketAddr, path: &str, count: usize) -> anyhow::Result<(Latencies, usize)> {
    let mut latencies = Latencies::with_capacity(count);
    let mut bytes = 0;
    for _ in 0..count {
        let sent = Instant::now();
        let (status, body) = http_get(admin, path).await?;
        latencies.record(sent.elapsed());
        if status != 200 {
            bail!("{path} answered {status}");
        }
        bytes = body.len();
    }
    Ok((latencies, bytes))
}

pub async fn run(args: MonitorBenchArgs) -> anyhow::Result<()> {
    if args.scrapes == 0 || args.duration.is_zero() || args.interval.is_zero() {
        bail!("--scrapes, --duration and --interval must be greater than zero");
    }
    let redis = RedisServer::start().context("starting a private redis-server")?;
    let mut sampling = spawn(&redis, "bench-sampling", args.interval).await?;
    let mut idle = spawn(&redis, "bench-idle", Duration::from_secs(3600)).await?;
    // Let start-up (NVML probe, first scans) settle before measuring steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    if !args.json {
        eprintln!("… observing both monitors for {:?}", args.duration);
    }
    let costs = observe(&[sampling.process.pid(), idle.process.pid()], args.duration).await?;
    let (monitor_cost, idle_cost) = (&costs[0], &costs[1]);

    // Warm the connection path, then time.
    scrape(sampling.admin, "/metrics", 20).await?;
    let (mut metrics, metrics_bytes) = scrape(sampling.admin, "/metrics", args.scrapes).await?;
    let (mut health, _) = scrape(sampling.admin, "/health", args.scrapes).await?;

    for monitor in [&mut sampling, &mut idle] {
        let _ = monitor.process.terminate();
        let _ = monitor.process.wait_exit(Duration::from_secs(5)).await;
    }

    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let (m50, m99) = (metrics.quantile_ms(0.5), metrics.quantile_ms(0.99));
    let (h50, h99) = (health.quantile_ms(0.5), health.quantile_ms(0.99));
    if args.json {
        println!(
            "{}",
            json!({
                "interval_ms": args.interval.as_millis() as u64,
                "duration_s": args.duration.as_secs_f64(),
                "monitor": { "cpu_percent": monitor_cost.cpu_percent, "rss_mib": mib(monitor_cost.rss_max) },
                "baseline_idle": { "cpu_percent": idle_cost.cpu_percent, "rss_mib": mib(idle_cost.rss_max) },
                "scrape": {
                    "metrics_bytes": metrics_bytes,
                    "metrics_p50_ms": m50, "metrics_p99_ms": m99,
                    "health_p50_ms": h50, "health_p99_ms": h99,
                    "p99_ratio": ratio(m99, h99),
                },
            })
        );
        return Ok(());
    }
    println!(
        "resource monitor cost over {:?}, sampling every {:?} (goal: < 0.5 % of one core, < 15 MiB RSS)",
        args.duration, args.interval
    );
    println!(
        "  monitor            cpu {:>6.3} % of one core   rss peak {:>6.1} MiB",
        monitor_cost.cpu_percent,
        mib(monitor_cost.rss_max)
    );
    println!(
        "  baseline (1 h)     cpu {:>6.3} % of one core   rss peak {:>6.1} MiB",
        idle_cost.cpu_percent,
        mib(idle_cost.rss_max)
    );
    // CPU time has a 10 ms resolution: an idle baseline often reads 0, and a ratio to 0 says
    // nothing, so the difference is printed as well.
    let cpu_ratio = if idle_cost.cpu_percent > 0.0 {
        format!("{:.2}x", monitor_cost.cpu_percent / idle_cost.cpu_percent)
    } else {
        "n/a (baseline below the 10 ms tick)".to_owned()
    };
    println!(
        "  sampling costs     cpu {:>+6.3} points         rss {:>+6.1} MiB   (ratio cpu {cpu_ratio}, rss {:.2}x)",
        monitor_cost.cpu_percent - idle_cost.cpu_percent,
        mib(monitor_cost.rss_max) - mib(idle_cost.rss_max),
        ratio(mib(monitor_cost.rss_max), mib(idle_cost.rss_max))
    );
    println!(
        "scrape latency over {} requests each, new connection per request (goal: /metrics p99 < 5 ms)",
        args.scrapes
    );
    println!("  /metrics ({metrics_bytes} bytes)  p50 {m50:>7.3} ms   p99 {m99:>7.3} ms");
    println!("  /health (baseline)   p50 {h50:>7.3} ms   p99 {h99:>7.3} ms");
    println!(
        "  ratio                p50 {:>7.2}x     p99 {:>7.2}x",
        ratio(m50, h50),
        ratio(m99, h99)
    );
    Ok(())
}
