//! The `bus` scenario: events/s and latency through the NATS bridge, from a
//! backend's `media.uploaded` publish to the `media.ready` result it gets back.
//!
//! Two runs against the same nats-server, one after the other:
//!
//! ```text
//! baseline    publish ─▶ JetStream ─▶ a bare pull worker in this process
//!                                     (fetch, parse, ack, publish the result) ─▶ result
//! armoricore  publish ─▶ JetStream ─▶ an Armoricore node (BusBridge: schema check,
//!                                     dedupe, lease, handler, envelope) ─▶ result
//! ```
//!
//! The handler does no work, so what is measured is the bridge's cost; the report
//! gives both runs and their ratio (the machine is noisy; the baseline is not).

use std::sync::Arc;
use std::time::{Duration, Instant};

use armoricore::config::Config;
use armoricore::jobs::{Job, JobHandler, Jobs, Outcome};
use armoricore::server::Node;
use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Args, Clone, Debug)]
pub struct BusArgs {
    /// NATS server with JetStream (bench/bus.sh starts one on a random port).
    #[arg(long)]
    pub nats_url: String,
    /// Events per run.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Events in flight at once (published, result not yet back).
    #[arg(long, default_value_t = 256)]
    pub window: usize,
    /// Jobs the worker runs at once (both runs; the node's `bus.concurrency`).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Also print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// One run's numbers.
struct Run {
    events_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn uploaded(i: usize) -> Value {
    json!({
        "event_id": format!("bench-{}-{i}", std::process::id()),
        "event_type": "media.uploaded",
        "timestamp": "2026-11-27T00:00:00Z",
        "source": "bench",
        "payload": {
            "media_id": format!("m{i}"), "user_id": "u1",
            "file_path": "s3://bench/video.mp4", "content_type": "video/mp4", "file_size": 1
        }
    })
}

/// Publish `events` work events on `work` (at most `window` unanswered) and time
/// each until its result (matched by `media_id`) arrives on `result`.
async fn drive(
    client: &async_nats::Client,
    work: &str,
    result: &str,
    args: &BusArgs,
) -> anyhow::Result<Run> {
    let sent: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..args.events).map(|_| Mutex::new(None)).collect());
    let window = Arc::new(Semaphore::new(args.window));
    let mut results = client.subscribe(result.to_string()).await?;
    client.flush().await?;
    let receiver = {
        let (sent, window, n) = (sent.clone(), window.clone(), args.events);
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut got = 0;
            while got < n {
                let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_secs(30), results.next()).await
                else {
                    break;
                };
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    continue;
                };
                let i: usize = v["payload"]["media_id"]
                    .as_str()
                    .and_then(|s| s.strip_prefix('m'))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(usize::MAX);
                if let Some(at) = sent.get(i).and_then(|s| s.lock().take()) {
                    hist.record(at.elapsed().as_micros() as u64).ok();
                    got += 1;
                    window.add_permits(1);
                }
            }
            (got, hist)
        })
    };
    let started = Instant::now();
    for i in 0..args.events {
        window.acquire().await?.forget();
        *sent[i].lock() = Some(Instant::now());
        client
            .publish(work.to_string(), uploaded(i).to_string().into())
            .await?;
    }
    client.flush().await?;
    let (got, hist) = receiver.await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        got == args.events,
        "only {got} of {} results came back",
        args.events
    );
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(Run {
        events_per_s: args.events as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: hist.max() as f64 / 1000.0,
    })
}

/// The baseline worker: what any JetStream consumer must do, and nothing else.
async fn bare_worker(
    js: jetstream::Context,
    client: async_nats::Client,
    concurrency: usize,
) -> anyhow::Result<()> {
    let stream = js
        .get_or_create_stream(stream::Config {
            name: "BENCH_BASELINE".into(),
            subjects: vec!["base.media.uploaded".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..Default::default()
        })
        .await?;
    let consumer: consumer::PullConsumer = stream
        .get_or_create_consumer(
            "bench-baseline",
            consumer::pull::Config {
                durable_name: Some("bench-baseline".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    loop {
        let mut batch = consumer
            .batch()
            .max_messages(concurrency)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        while let Some(Ok(m)) = batch.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let result = json!({"event_type": "media.ready", "payload": {
                "media_id": v["payload"]["media_id"], "user_id": v["payload"]["user_id"],
                "playback_urls": {"hls": "x"}}});
            m.ack().await.ok();
            client
                .publish("base.media.ready", result.to_string().into())
                .await?;
        }
    }
}

/// The node's handler: the result at once.
struct Echo;

#[async_trait]
impl JobHandler for Echo {
    async fn run(&self, job: Job) -> Outcome {
        let p = &job.event.payload;
        let ready = json!({"media_id": p["media_id"], "user_id": p["user_id"], "playback_urls": {"hls": "x"}});
        Outcome::Done(ready.as_object().cloned().unwrap_or_default())
    }
}

pub async fn run(args: BusArgs) -> anyhow::Result<()> {
    let client = async_nats::connect(&args.nats_url).await?;
    let js = jetstream::new(client.clone());

    let worker = tokio::spawn(bare_worker(js.clone(), client.clone(), args.concurrency));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = drive(&client, "base.media.uploaded", "base.media.ready", &args).await?;
    worker.abort();

    let dir = tempfile_dir()?;
    let mut config = Config::defaults();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.server.data_dir = dir.clone();
    config.auth.jwt_secret = "bench".into();
    config.log.level = "warn".into();
    config.bus.url = args.nats_url.clone();
    config.bus.subject_prefix = "bench.".into();
    config.bus.stream = "BENCH_ARMORICORE".into();
    config.bus.concurrency = args.concurrency;
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let router = armoricore::channels::Router::standard(&config);
    let node = Node::start_with_jobs(
        config,
        router,
        Jobs::new().with("media.uploaded", Echo),
        listener,
    )
    .await?;
    // The node creates its stream and consumers in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while js.get_stream("BENCH_ARMORICORE").await.is_err() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the node did not create its stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ours = drive(&client, "bench.media.uploaded", "bench.media.ready", &args).await?;
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);

    println!(
        "bus: {} events, window {}, concurrency {}\n  baseline (bare JetStream worker): {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  armoricore (BusBridge):           {:.0} events/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  throughput ratio armoricore/baseline: {:.2}",
        args.events,
        args.window,
        args.concurrency,
        base.events_per_s,
        base.p50_ms,
        base.p99_ms,
        base.max_ms,
        ours.events_per_s,
        ours.p50_ms,
        ours.p99_ms,
        ours.max_ms,
        ours.events_per_s / base.events_per_s,
    );
    if args.json {
        let j = json!({
            "scenario": "bus", "events": args.events, "window": args.window, "concurrency": args.concurrency,
            "baseline": {"events_per_s": base.events_per_s, "p50_ms": base.p50_ms, "p99_ms": base.p99_ms, "max_ms": base.max_ms},
            "armoricore": {"events_per_s": ours.events_per_s, "p50_ms": ours.p50_ms, "p99_ms": ours.p99_ms, "max_ms": ours.max_ms},
            "ratio": ours.events_per_s / base.events_per_s,
        });
        println!("{j}");
    }
    Ok(())
}

/// A fresh directory for the node's data (the bench has no tempfile dependency).
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("armoricore-bench-bus-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
