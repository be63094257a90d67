//! `tta bench broker`: the broker service against raw Redis Streams on the same Redis, in one
//! run.
//!
//! 1. Throughput: publish N messages in batches, deliver them to C competing consumers, ack
//!    each one. Through the broker (real gRPC over loopback, `PublishBatch` + `Consume`) and
//!    raw (redis-rs `XADD` pipelines, `XREADGROUP`, `XACK`) with the same batch and prefetch.
//! 2. Open loop: publish single messages at a fixed rate and measure publish → ack latency.
//!
//! By default a private `redis-server` and an in-process broker are started, so the run
//! touches no shared data.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use futures::{FutureExt, StreamExt};
use redis::{Value, aio::MultiplexedConnection};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tta_proto::v1::{self as pb, broker_client::BrokerClient};
use tta_runtime::{Shutdown, service::ServiceKind};
use tta_testkit::{RedisServer, ServiceProcess};

use super::stats::Latencies;

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerBenchArgs {
    /// Messages in the throughput run.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Competing consumers.
    #[arg(long, default_value_t = 4)]
    consumers: usize,
    /// Messages per publish batch (PublishBatch / XADD pipeline).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Publish batches in flight at once.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// Deliveries each consumer may hold unacked (Consume prefetch / XREADGROUP COUNT).
    #[arg(long, default_value_t = 256)]
    prefetch: u32,
    /// Throughput rounds, raw and broker alternating; medians are reported, so a noisy
    /// neighbour on a shared machine skews one round, not the result.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Rate of the open-loop run, messages per second (0 skips it).
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Length of the open-loop run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    open_loop_for: Duration,
    /// How the open-loop run publishes: `stream` (one long-lived PublishStream call, as the
    /// platform's own publishers do) or `unary` (one Publish call per message).
    #[arg(long, value_enum, default_value_t = OpenLoopPublish::Stream)]
    open_loop_publish: OpenLoopPublish,
    /// Use this Redis instead of a private redis-server (keys get a unique prefix and are
    /// deleted afterwards).
    #[arg(long, env = "TTA_BENCH_REDIS_URL")]
    redis_url: Option<String>,
    /// Run the broker inside this process instead of as its own `tta-broker` process.
    #[arg(long)]
    in_process: bool,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// Nanoseconds since the run's epoch, written into the first 8 bytes of each payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OpenLoopPublish {
    Stream,
    Unary,
}

impl OpenLoopPublish {
    fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::Unary => "unary",
        }
    }
}

fn stamp(payload: &mut [u8], epoch: Instant) {
    let nanos = epoch.elapsed().as_nanos() as u64;
    if let Some(head) = payload.get_mut(..8) {
        head.copy_from_slice(&nanos.to_le_bytes());
    }
}

fn age(payload: &[u8], epoch: Instant) -> Option<Duration> {
    let head: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    let sent = Duration::from_nanos(u64::from_le_bytes(head));
    Some(epoch.elapsed().saturating_sub(sent))
}

struct RunResult {
    messages: u64,
    elapsed: Duration,
    latencies: Latencies,
}

impl RunResult {
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The round with the median throughput, carrying the latencies of every round.
    fn median_of(mut rounds: Vec<RunResult>) -> RunResult {
        rounds.sort_by(|a, b| a.per_second().total_cmp(&b.per_second()));
        let mut latencies = Latencies::default();
        let middle = rounds.len() / 2;
        let mut median = None;
        for (index, round) in rounds.into_iter().enumerate() {
            latencies.merge(round.latencies);
            if index == middle {
                median = Some((round.messages, round.elapsed));
            }
        }
        let (messages, elapsed) = median.unwrap_or((0, Duration::from_secs(1)));
        RunResult {
            messages,
            elapsed,
            latencies,
        }
    }
}

pub async fn run(args: BrokerBenchArgs) -> anyhow::Result<()> {
    if args.size < 8 {
        bail!("--size must be at least 8 bytes (the payload carries its send time)");
    }
    if args.consumers == 0 || args.batch == 0 || args.in_flight == 0 || args.prefetch == 0 {
        bail!("--consumers, --batch, --in-flight and --prefetch must be at least 1");
    }
    let private_redis = match &args.redis_url {
        Some(_) => None,
        None => Some(RedisServer::start().context("starting a private redis-server")?),
    };
    let redis_url = match (&args.redis_url, &private_redis) {
        (Some(url), _) => url.clone(),
        (None, Some(server)) => server.url(),
        (None, None) => bail!("no redis"),
    };
    let prefix = tta_testkit::unique_prefix("bench");

    let broker = BenchBroker::start(&args, &redis_url, &prefix).await?;
    let endpoint = broker.endpoint.clone();

    let mut raw_rounds = Vec::new();
    let mut broker_rounds = Vec::new();
    for round in 1..=args.rounds.max(1) {
        progress(
            &args,
            &format!("round {round}: raw redis streams throughput"),
        );
        raw_rounds.push(raw_throughput(&args, &redis_url, &format!("{prefix}:raw:{round}")).await?);
        progress(&args, &format!("round {round}: broker service throughput"));
        broker_rounds
            .push(broker_throughput(&args, &endpoint, &format!("bench.throughput.{round}")).await?);
    }
    let raw = RunResult::median_of(raw_rounds);
    let through_broker = RunResult::median_of(broker_rounds);

    let (raw_open, broker_open) = if args.rate > 0 {
        progress(&args, "raw redis streams: open loop");
        let raw_open = raw_open_loop(&args, &redis_url, &format!("{prefix}:raw-open")).await?;
        progress(&args, "broker service: open loop");
        let broker_open = broker_open_loop(&args, &endpoint, "bench.open-loop").await?;
        (Some(raw_open), Some(broker_open))
    } else {
        (None, None)
    };

    broker.stop().await;
    cleanup(&redis_url, &prefix).await;
    report(&args, raw, through_broker, raw_open, broker_open);
    drop(private_redis);
    Ok(())
}

/// The broker under test: its own process (as deployed), or in this process.
struct BenchBroker {
    endpoint: String,
    process: Option<ServiceProcess>,
    in_process: Option<tta_runtime::service::RunningService>,
}

impl BenchBroker {
    async fn start(args: &BrokerBenchArgs, redis_url: &str, prefix: &str) -> anyhow::Result<Self> {
        let max_depth = (args.messages.max(1) * 2).to_string();
        let binary = tta_testkit::binary_path("tta-broker");
        if args.in_process || binary.is_err() {
            let mut config = tta_testkit::test_config(redis_url, "bench");
            config.redis.key_prefix = prefix.to_owned();
            config.broker.max_topic_depth = args.messages.max(1) * 2;
            let running = tta_runtime::service::start(
                ServiceKind::Broker,
                config,
                Shutdown::new(),
                tta_broker::build,
            )
            .await
            .map_err(|err| anyhow::anyhow!("starting the broker: {err}"))?;
            let endpoint = format!(
                "http://{}",
                running.grpc_addr.context("broker without grpc address")?
            );
            return Ok(Self {
                endpoint,
                process: None,
                in_process: Some(running),
            });
        }
        let grpc: SocketAddr = ([127, 0, 0, 1], tta_testkit::free_port()?).into();
        let admin: SocketAddr = ([127, 0, 0, 1], tta_testkit::free_port()?).into();
        let process = ServiceProcess::spawn(
            "tta-broker",
            &[
                "--grpc-addr".into(),
                grpc.to_string(),
                "--admin-addr".into(),
                admin.to_string(),
            ],
            &[
                ("TTA_REDIS_URL", redis_url.to_owned()),
                ("TTA_REDIS__KEY_PREFIX", prefix.to_owned()),
                ("TTA_BROKER__MAX_TOPIC_DEPTH", max_depth),
                ("TTA_TELEMETRY__LOG_LEVEL", "warn".to_owned()),
            ],
        )?;
        process.wait_ready(admin, Duration::from_secs(20)).await?;
        Ok(Self {
            endpoint: format!("http://{grpc}"),
            process: Some(process),
            in_process: None,
        })
    }

    async fn stop(self) {
        if let Some(process) = self.process {
            let mut process = process;
            let _ = process.terminate();
            let _ = process.wait_exit(Duration::from_secs(5)).await;
        }
        if let Some(running) = self.in_process {
            let _ = running.stop(Duration::from_secs(1)).await;
        }
    }
}

fn progress(args: &BrokerBenchArgs, phase: &str) {
    if !args.json {
        eprintln!("… {phase}");
    }
}

fn report(
    args: &BrokerBenchArgs,
    mut raw: RunResult,
    mut broker: RunResult,
    raw_open: Option<RunResult>,
    broker_open: Option<RunResult>,
) {
    let ratio = broker.per_second() / raw.per_second().max(1e-9);
    let mut object = json!({
        "messages": args.messages,
        "payload_bytes": args.size,
        "consumers": args.consumers,
        "batch": args.batch,
        "prefetch": args.prefetch,
        "rounds": args.rounds.max(1),
        "broker_msgs_per_s": broker.per_second().round(),
        "raw_msgs_per_s": raw.per_second().round(),
        "ratio": (ratio * 1000.0).round() / 1000.0,
        "p50_ms": broker.latencies.quantile_ms(0.50),
        "p99_ms": broker.latencies.quantile_ms(0.99),
        "raw_p50_ms": raw.latencies.quantile_ms(0.50),
        "raw_p99_ms": raw.latencies.quantile_ms(0.99),
    });
    if let (Some(mut raw_open), Some(mut broker_open)) = (raw_open, broker_open) {
        object["open_loop"] = json!({
            "rate_per_s": args.rate,
            "publish": args.open_loop_publish.name(),
            "messages": broker_open.messages,
            "p50_ms": broker_open.latencies.quantile_ms(0.50),
            "p99_ms": broker_open.latencies.quantile_ms(0.99),
            "p999_ms": broker_open.latencies.quantile_ms(0.999),
            "raw_p50_ms": raw_open.latencies.quantile_ms(0.50),
            "raw_p99_ms": raw_open.latencies.quantile_ms(0.99),
            "raw_p999_ms": raw_open.latencies.quantile_ms(0.999),
        });
    }
    if args.json {
        println!("{object}");
        return;
    }
    println!(
        "broker bench: {} messages of {} B, {} consumers, batch {}, prefetch {}, median of {} rounds",
        args.messages,
        args.size,
        args.consumers,
        args.batch,
        args.prefetch,
        args.rounds.max(1)
    );
    println!(
        "{:<28} {:>12} {:>10} {:>10}",
        "throughput run", "msgs/s", "p50 ms", "p99 ms"
    );
    println!(
        "{:<28} {:>12.0} {:>10.3} {:>10.3}",
        "raw redis streams",
        object["raw_msgs_per_s"].as_f64().unwrap_or_default(),
        object["raw_p50_ms"].as_f64().unwrap_or_default(),
        object["raw_p99_ms"].as_f64().unwrap_or_default()
    );
    println!(
        "{:<28} {:>12.0} {:>10.3} {:>10.3}",
        "broker service",
        object["broker_msgs_per_s"].as_f64().unwrap_or_default(),
        object["p50_ms"].as_f64().unwrap_or_default(),
        object["p99_ms"].as_f64().unwrap_or_default()
    );
    println!("ratio broker/raw: {:.3}", ratio);
    if let Some(open) = object.get("open_loop") {
        println!(
            "open loop at {} msgs/s (publishing by {}), publish → delivery latency:",
            args.rate,
            args.open_loop_publish.name()
        );
        println!(
            "{:<28} {:>10} {:>10} {:>10}",
            "", "p50 ms", "p99 ms", "p99.9 ms"
        );
        for (label, prefix) in [("raw redis streams", "raw_"), ("broker service", "")] {
            let value = |name: &str| open[format!("{prefix}{name}")].as_f64().unwrap_or_default();
            println!(
                "{label:<28} {:>10.3} {:>10.3} {:>10.3}",
                value("p50_ms"),
                value("p99_ms"),
                value("p999_ms")
            );
        }
    }
}

async fn connect_broker(endpoint: &str) -> anyhow::Result<BrokerClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(BrokerClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

/// Consumers that ack everything they get until `target` messages are acked in total.
async fn broker_consumers(
    endpoint: &str,
    topic: &str,
    consumers: usize,
    prefetch: u32,
    target: u64,
    epoch: Instant,
) -> anyhow::Result<JoinSet<anyhow::Result<Latencies>>> {
    let acked = Arc::new(AtomicU64::new(0));
    let done = Shutdown::new();
    let mut tasks = JoinSet::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(consumers);
    for index in 0..consumers {
        let mut client = connect_broker(endpoint).await?;
        let acked = acked.clone();
        let done = done.clone();
        let topic = topic.to_owned();
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let (frames, receiver) = mpsc::channel(prefetch as usize * 2);
            frames
                .send(pb::ConsumeRequest {
                    frame: Some(pb::consume_request::Frame::Subscribe(pb::SubscribeFrame {
                        topic,
                        group: "bench".into(),
                        consumer: format!("c{index}"),
                        prefetch,
                        visibility_timeout: None,
                        manual_credit: false,
                    })),
                })
                .await?;
            let mut deliveries = client
                .consume(ReceiverStream::new(receiver))
                .await?
                .into_inner();
            let _ = ready.send(()).await;
            let mut latencies =
                Latencies::with_capacity((target as usize / consumers.max(1)) + 1024);
            loop {
                let first = tokio::select! {
                    () = done.wait() => break,
                    next = deliveries.next() => next,
                };
                let Some(first) = first.transpose()? else {
                    break;
                };
                // Ack everything that has arrived in one frame, as the raw consumer acks each
                // XREADGROUP batch with one XACK.
                let mut batch = vec![first];
                while let Some(Some(next)) = deliveries.next().now_or_never() {
                    batch.push(next?);
                }
                let mut receipts = Vec::with_capacity(batch.len());
                for delivery in batch {
                    if let Some(latency) = delivery
                        .message
                        .as_ref()
                        .and_then(|m| age(&m.payload, epoch))
                    {
                        latencies.record(latency);
                    }
                    receipts.push(delivery.receipt);
                }
                let count = receipts.len() as u64;
                frames
                    .send(pb::ConsumeRequest {
                        frame: Some(pb::consume_request::Frame::Ack(pb::AckFrame {
                            receipt: String::new(),
                            receipts,
                        })),
                    })
                    .await?;
                if acked.fetch_add(count, Ordering::Relaxed) + count >= target {
                    done.trigger();
                }
            }
            Ok(latencies)
        });
    }
    drop(ready_tx);
    for _ in 0..consumers {
        ready_rx
            .recv()
            .await
            .context("a consumer failed to subscribe")?;
    }
    Ok(tasks)
}

async fn collect(
    mut tasks: JoinSet<anyhow::Result<Latencies>>,
    expected: u64,
) -> anyhow::Result<Latencies> {
    let mut all = Latencies::with_capacity(expected as usize);
    while let Some(joined) = tasks.join_next().await {
        all.merge(joined??);
    }
    if (all.len() as u64) < expected {
        bail!("only {} of {expected} messages were consumed", all.len());
    }
    Ok(all)
}

/// Publishes `total` messages in batches of `batch`, with at most `in_flight` batches under
/// way; `publish(count)` sends one batch. Shared by the broker and raw runs so both batch alike.
async fn publish_in_batches<F, Fut>(
    total: u64,
    batch: usize,
    in_flight: usize,
    publish: F,
) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut publishes = JoinSet::new();
    let mut remaining = total;
    while remaining > 0 {
        let count = remaining.min(batch as u64);
        remaining -= count;
        let permit = semaphore.clone().acquire_owned().await?;
        let sending = publish(count);
        publishes.spawn(async move {
            let result = sending.await;
            drop(permit);
            result
        });
    }
    while let Some(joined) = publishes.join_next().await {
        joined??;
    }
    Ok(())
}

async fn broker_throughput(
    args: &BrokerBenchArgs,
    endpoint: &str,
    topic: &str,
) -> anyhow::Result<RunResult> {
    let epoch = Instant::now();
    let consumers = broker_consumers(
        endpoint,
        topic,
        args.consumers,
        args.prefetch,
        args.messages,
        epoch,
    )
    .await?;
    let started = Instant::now();
    let client = connect_broker(endpoint).await?;
    publish_in_batches(args.messages, args.batch, args.in_flight, |count| {
        let mut client = client.clone();
        let size = args.size;
        let topic = topic.to_owned();
        async move {
            let messages = (0..count)
                .map(|_| {
                    let mut payload = vec![0u8; size];
                    stamp(&mut payload, epoch);
                    pb::OutgoingMessage {
                        topic: topic.clone(),
                        payload: payload.into(),
                        ..Default::default()
                    }
                })
                .collect();
            let response = client
                .publish_batch(pb::PublishBatchRequest { messages })
                .await?
                .into_inner();
            if let Some(failed) = response.results.iter().find(|result| result.code != 0) {
                bail!("publish failed: {}", failed.error);
            }
            Ok(())
        }
    })
    .await?;
    Ok(RunResult {
        messages: args.messages,
        latencies: collect(consumers, args.messages).await?,
        elapsed: started.elapsed(),
    })
}

async fn broker_open_loop(
    args: &BrokerBenchArgs,
    endpoint: &str,
    topic: &str,
) -> anyhow::Result<RunResult> {
    let total = (args.rate as f64 * args.open_loop_for.as_secs_f64()) as u64;
    let epoch = Instant::now();
    let consumers =
        broker_consumers(endpoint, topic, args.consumers, args.prefetch, total, epoch).await?;
    let client = connect_broker(endpoint).await?;
    let lane = tta_runtime::publish_lane::PublishLane::new(client.clone());
    let started = Instant::now();
    let mut publishes = JoinSet::new();
    open_loop_schedule(args.rate, total, |_| {
        let mut client = client.clone();
        let lane = lane.clone();
        let topic = topic.to_owned();
        let size = args.size;
        let via = args.open_loop_publish;
        publishes.spawn(async move {
            let mut payload = vec![0u8; size];
            stamp(&mut payload, epoch);
            let message = pb::OutgoingMessage {
                topic,
                payload: payload.into(),
                ..Default::default()
            };
            match via {
                OpenLoopPublish::Unary => client
                    .publish(pb::PublishRequest {
                        message: Some(message),
                    })
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from),
                OpenLoopPublish::Stream => {
                    for result in lane.publish(vec![message]).await? {
                        tta_runtime::publish_lane::result_status(&result)?;
                    }
                    Ok(())
                }
            }
        });
    })
    .await;
    while let Some(joined) = publishes.join_next().await {
        joined??;
    }
    let latencies = collect(consumers, total).await?;
    Ok(RunResult {
        messages: total,
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Calls `send` `total` times at `rate` per second, on schedule whatever the replies do.
async fn open_loop_schedule(rate: u64, total: u64, mut send: impl FnMut(u64)) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = tokio::time::Instant::now();
    for sequence in 0..total {
        let due = started + interval.mul_f64(sequence as f64);
        tokio::time::sleep_until(due).await;
        send(sequence);
    }
}

async fn raw_connection(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = tta_runtime::redis::client(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// Raw consumers: `XREADGROUP COUNT prefetch` then `XACK` of the batch.
async fn raw_consumers(
    url: &str,
    stream: &str,
    consumers: usize,
    prefetch: u32,
    target: u64,
    epoch: Instant,
) -> anyhow::Result<JoinSet<anyhow::Result<Latencies>>> {
    let mut setup = raw_connection(url).await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("bench")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut setup)
        .await?;
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for index in 0..consumers {
        let mut connection = raw_connection(url).await?;
        let acked = acked.clone();
        let stream = stream.to_owned();
        tasks.spawn(async move {
            let consumer = format!("c{index}");
            let mut latencies =
                Latencies::with_capacity((target as usize / consumers.max(1)) + 1024);
            while acked.load(Ordering::Relaxed) < target {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("bench")
                    .arg(&consumer)
                    .arg("COUNT")
                    .arg(prefetch)
                    .arg("BLOCK")
                    .arg(100)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut connection)
                    .await?;
                let entries = stream_entries(&reply);
                if entries.is_empty() {
                    continue;
                }
                let mut ids = Vec::with_capacity(entries.len());
                for (id, payload) in entries {
                    if let Some(latency) = age(payload, epoch) {
                        latencies.record(latency);
                    }
                    ids.push(id);
                }
                let _: u64 = redis::cmd("XACK")
                    .arg(&stream)
                    .arg("bench")
                    .arg(&ids)
                    .query_async(&mut connection)
                    .await?;
                acked.fetch_add(ids.len() as u64, Ordering::Relaxed);
            }
            Ok(latencies)
        });
    }
    Ok(tasks)
}

/// `(id, payload)` of each entry in an `XREADGROUP` reply on one stream.
fn stream_entries(reply: &Value) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    let streams: Vec<&Value> = match reply {
        Value::Array(streams) => streams.iter().collect(),
        Value::Map(pairs) => pairs.iter().map(|(_, entries)| entries).collect(),
        _ => return out,
    };
    for stream in streams {
        let entries = match stream {
            Value::Array(parts) if parts.len() == 2 => &parts[1],
            other => other,
        };
        let Value::Array(entries) = entries else {
            continue;
        };
        for entry in entries {
            let Value::Array(parts) = entry else { continue };
            let (Some(Value::BulkString(id)), Some(Value::Array(fields))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            if let Some(Value::BulkString(payload)) = fields.get(1) {
                out.push((id.as_slice(), payload.as_slice()));
            }
        }
    }
    out
}

async fn raw_throughput(
    args: &BrokerBenchArgs,
    url: &str,
    stream: &str,
) -> anyhow::Result<RunResult> {
    let epoch = Instant::now();
    let consumers = raw_consumers(
        url,
        stream,
        args.consumers,
        args.prefetch,
        args.messages,
        epoch,
    )
    .await?;
    let started = Instant::now();
    let connection = raw_connection(url).await?;
    publish_in_batches(args.messages, args.batch, args.in_flight, |count| {
        let mut connection = connection.clone();
        let stream = stream.to_owned();
        let size = args.size;
        async move {
            let mut pipe = redis::pipe();
            for _ in 0..count {
                let mut payload = vec![0u8; size];
                stamp(&mut payload, epoch);
                pipe.cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("m")
                    .arg(payload)
                    .ignore();
            }
            let _: () = pipe.query_async(&mut connection).await?;
            Ok(())
        }
    })
    .await?;
    Ok(RunResult {
        messages: args.messages,
        latencies: collect(consumers, args.messages).await?,
        elapsed: started.elapsed(),
    })
}

async fn raw_open_loop(
    args: &BrokerBenchArgs,
    url: &str,
    stream: &str,
) -> anyhow::Result<RunResult> {
    let total = (args.rate as f64 * args.open_loop_for.as_secs_f64()) as u64;
    let epoch = Instant::now();
    let consumers = raw_consumers(url, stream, args.consumers, args.prefetch, total, epoch).await?;
    let connection = raw_connection(url).await?;
    let started = Instant::now();
    let mut publishes = JoinSet::new();
    open_loop_schedule(args.rate, total, |_| {
        let mut connection = connection.clone();
        let stream = stream.to_owned();
        let size = args.size;
        publishes.spawn(async move {
            let mut payload = vec![0u8; size];
            stamp(&mut payload, epoch);
            let _: String = redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("m")
                .arg(payload)
                .query_async(&mut connection)
                .await?;
            Ok::<_, anyhow::Error>(())
        });
    })
    .await;
    while let Some(joined) = publishes.join_next().await {
        joined??;
    }
    let latencies = collect(consumers, total).await?;
    Ok(RunResult {
        messages: total,
        elapsed: started.elapsed(),
        latencies,
    })
}

/// Deletes the run's keys (only those under its own unique prefix).
async fn cleanup(url: &str, prefix: &str) {
    let Ok(mut connection) = raw_connection(url).await else {
        return;
    };
    let pattern = format!("{prefix}*");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut connection)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut connection)
            .await;
    }
}
