//! The `notify` scenario: push notifications per second through Armoricore to a
//! local FCM HTTP v1 stand-in, `window` jobs in flight, and each job's latency
//! from its request to its `notification.sent`.
//!
//! Two runs against the same stand-in (HTTP/2, in this process), one after the
//! other:
//!
//! ```text
//! baseline    a bare FCM client: one OAuth token, then each message POSTed over
//!             one shared HTTP/2 connection, `window` at once ─▶ stand-in
//! armoricore  POST /api/notify ─▶ node (bus, job record, NotificationActor,
//!             Sender: limits, retries) ─▶ stand-in ─▶ notification.sent
//! ```
//!
//! The stand-in answers after `--provider-latency-ms` (0: at once), so what is
//! measured is the cost of a job around its one HTTP request; the report gives
//! both runs and their ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use armoricore::config::Config;
use armoricore::server::Node;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::RsaKeyPair;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Args, Clone, Debug)]
pub struct NotifyArgs {
    /// Notifications per run (one device token each).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Jobs in flight at once (requested, not yet sent); also the node's
    /// `notifications.concurrency` and FCM `concurrency`.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// How long the stand-in takes to answer each send.
    #[arg(long, default_value_t = 0)]
    pub provider_latency_ms: u64,
    /// The node's database: `sqlite` (the default: every job recorded) or `off`.
    #[arg(long, default_value = "sqlite")]
    pub database: String,
    /// Also print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// One run's numbers.
struct Run {
    sends_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Run {
    fn of(n: usize, elapsed: Duration, hist: &Histogram<u64>) -> Run {
        let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Run {
            sends_per_s: n as f64 / elapsed.as_secs_f64(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
            max_ms: hist.max() as f64 / 1000.0,
        }
    }

    fn json(&self) -> Value {
        json!({"sends_per_s": self.sends_per_s, "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms, "max_ms": self.max_ms})
    }
}

/// The stand-in: Google's token endpoint and `messages:send`, answering after
/// `latency`; counts the messages it took.
#[derive(Clone)]
struct Fcm {
    latency: Duration,
    sends: Arc<AtomicU64>,
}

async fn token() -> Json<Value> {
    Json(json!({"access_token": "ya29.bench", "expires_in": 3600, "token_type": "Bearer"}))
}

async fn send(State(fcm): State<Fcm>, Json(body): Json<Value>) -> Json<Value> {
    if !fcm.latency.is_zero() {
        tokio::time::sleep(fcm.latency).await;
    }
    let n = fcm.sends.fetch_add(1, Ordering::Relaxed);
    let ok = body["message"]["token"].is_string();
    Json(json!({"name": format!("projects/bench/messages/{n}-{ok}")}))
}

fn message(i: usize) -> Value {
    json!({"message": {"token": format!("device-{i}"),
        "notification": {"title": "Bench", "body": "A notification"},
        "data": {"i": i.to_string()}, "android": {"priority": "HIGH"}}})
}

/// A bare FCM HTTP v1 client: what any sender must do, and nothing else.
async fn baseline(base: &str, args: &NotifyArgs) -> anyhow::Result<Run> {
    let client = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let grant: Value = client
        .post(format!("{base}/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", "bench"),
        ])
        .send()
        .await?
        .json()
        .await?;
    let bearer = format!("Bearer {}", grant["access_token"].as_str().unwrap_or(""));
    let url = format!("{base}/v1/projects/bench/messages:send");
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let window = Arc::new(Semaphore::new(args.window));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.jobs);
    for i in 0..args.jobs {
        let permit = window.clone().acquire_owned().await?;
        let (client, url, bearer, hist) =
            (client.clone(), url.clone(), bearer.clone(), hist.clone());
        tasks.push(tokio::spawn(async move {
            let at = Instant::now();
            let response = client
                .post(&url)
                .header("authorization", bearer)
                .json(&message(i))
                .send()
                .await?
                .error_for_status()?;
            let _: Value = response.json().await?;
            hist.lock().record(at.elapsed().as_micros() as u64).ok();
            drop(permit);
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let hist = hist.lock();
    Ok(Run::of(args.jobs, elapsed, &hist))
}

/// A service account whose token URI is the stand-in's.
fn service_account(dir: &std::path::Path, base: &str) -> anyhow::Result<std::path::PathBuf> {
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)?;
    let der = key.as_der()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        lines.join("\n")
    );
    let account = json!({"type": "service_account", "project_id": "bench",
        "private_key_id": "bench-key", "private_key": pem,
        "client_email": "bench@bench.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token")});
    let path = dir.join("service-account.json");
    std::fs::write(&path, account.to_string())?;
    Ok(path)
}

/// Armoricore: each notification requested over the server API, timed until the
/// node publishes its `notification.sent`.
async fn armoricore(base: &str, args: &NotifyArgs) -> anyhow::Result<Run> {
    let dir = std::env::temp_dir().join(format!("armoricore-bench-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut config = Config::defaults();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.server.data_dir = dir.clone();
    config.auth.jwt_secret = "bench".into();
    config.api.key = "bench".into();
    config.log.level = "warn".into();
    config.database.url = match args.database.as_str() {
        "off" => "off".into(),
        "sqlite" => String::new(),
        other => anyhow::bail!("--database: sqlite or off, not {other:?}"),
    };
    config.notifications.concurrency = args.window;
    config.notifications.fcm.concurrency = args.window;
    config.notifications.fcm.base_url = base.to_string();
    config.notifications.fcm.service_account_file =
        service_account(&dir, base)?.display().to_string();
    config.bus.max_ack_pending = config.bus.max_ack_pending.max(args.window as i64);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let router = armoricore::channels::Router::standard(&config);
    let node = Node::start(config, router, listener).await?;
    let api = format!("http://{}/api/notify", node.addr());

    let sent: Arc<Vec<Mutex<Option<Instant>>>> =
        Arc::new((0..args.jobs).map(|_| Mutex::new(None)).collect());
    let window = Arc::new(Semaphore::new(args.window));
    let mut results = node.hub().bus.subscribe("notification.sent").await?;
    let receiver = {
        let (sent, window, n) = (sent.clone(), window.clone(), args.jobs);
        tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new(3).expect("histogram");
            let mut got = 0;
            while got < n {
                let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_secs(30), results.next()).await
                else {
                    break;
                };
                let Ok(v) = serde_json::from_slice::<Value>(&m.body) else {
                    continue;
                };
                let i: usize = v["payload"]["notification_id"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("bench-"))
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
    let client = reqwest::Client::new();
    let started = Instant::now();
    for i in 0..args.jobs {
        window.acquire().await?.forget();
        *sent[i].lock() = Some(Instant::now());
        let request = json!({"user_id": format!("u{i}"), "notification_id": format!("bench-{i}"),
            "notification_type": "push", "title": "Bench", "body": "A notification",
            "data": {"i": i}, "tokens": [{"platform": "android", "token": format!("device-{i}")}]});
        let (client, api) = (client.clone(), api.clone());
        tokio::spawn(async move {
            let r = client
                .post(api)
                .header("authorization", "apikey bench")
                .json(&request)
                .send()
                .await;
            match r {
                Ok(r) if r.status().as_u16() == 202 => {}
                Ok(r) => eprintln!("notify: POST /api/notify answered {}", r.status()),
                Err(e) => eprintln!("notify: POST /api/notify: {e}"),
            }
        });
    }
    let (got, hist) = receiver.await?;
    let elapsed = started.elapsed();
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    anyhow::ensure!(
        got == args.jobs,
        "only {got} of {} notifications were reported sent",
        args.jobs
    );
    Ok(Run::of(args.jobs, elapsed, &hist))
}

pub async fn run(args: NotifyArgs) -> anyhow::Result<()> {
    let fcm = Fcm {
        latency: Duration::from_millis(args.provider_latency_ms),
        sends: Arc::default(),
    };
    let router = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/{project}/messages:send", post(send))
        .with_state(fcm.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });

    let base_run = baseline(&base, &args).await?;
    let before = fcm.sends.load(Ordering::Relaxed);
    let ours = armoricore(&base, &args).await?;
    let took = fcm.sends.load(Ordering::Relaxed) - before;
    anyhow::ensure!(
        took == args.jobs as u64,
        "the stand-in took {took} sends for {} notifications",
        args.jobs
    );

    let ratio = ours.sends_per_s / base_run.sends_per_s;
    println!(
        "notify: {} notifications, window {}, provider latency {} ms, database {}\n  baseline (bare FCM client):    {:.0} sends/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n  armoricore (POST /api/notify): {:.0} sends/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (request to notification.sent)\n  throughput ratio armoricore/baseline: {ratio:.2}",
        args.jobs,
        args.window,
        args.provider_latency_ms,
        args.database,
        base_run.sends_per_s,
        base_run.p50_ms,
        base_run.p99_ms,
        base_run.max_ms,
        ours.sends_per_s,
        ours.p50_ms,
        ours.p99_ms,
        ours.max_ms,
    );
    if args.json {
        let j = json!({
            "scenario": "notify", "jobs": args.jobs, "window": args.window,
            "provider_latency_ms": args.provider_latency_ms, "database": args.database,
            "baseline": base_run.json(), "armoricore": ours.json(), "ratio": ratio,
        });
        println!("{j}");
    }
    Ok(())
}
