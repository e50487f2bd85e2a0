//! A worker process: opens its share of the connections and reports in JSON lines
//! on stdout (see [`crate::proto`]).
//!
//! Life: read [`Cmd::Start`] → mint tokens, resolve the server → [`Event::Ready`] →
//! wait for [`Cmd::Go`] → connect (paced by rate and concurrency) → [`Event::Joined`]
//! → hold until [`Cmd::Stop`], end of stdin or the deadline → close everything →
//! [`Event::Done`].

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::{EncodingKey, Header};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::driver::{self, Conn, HoldEnd, PresenceView, Role, Stats};
use crate::phx::{Failure, Target};
use crate::proto::{self, Cmd, Event, Scenario, WorkerSpec};
use crate::sys;

/// Sockets one worker may hold: the open-file limit here is 20,000 per process.
pub const MAX_CONNECTIONS_PER_WORKER: usize = 15_000;

/// Write one event line to stdout.
fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", proto::to_line(event));
    let _ = out.flush();
}

/// The source address of worker `index`: 127.0.0.(2+index).
pub fn source_ip(index: usize) -> anyhow::Result<IpAddr> {
    let last = u8::try_from(index + 2)
        .ok()
        .filter(|&b| b < 255)
        .context("too many workers: source addresses are 127.0.0.2-254")?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// HS256 tokens `{sub, exp}`, one per connection.
fn mint_tokens(spec: &WorkerSpec) -> anyhow::Result<Vec<String>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let exp = now + 3600 + spec.deadline_ms / 1000;
    let key = EncodingKey::from_secret(spec.secret.as_bytes());
    let header = Header::default();
    (0..spec.connections)
        .map(|i| {
            let claims = serde_json::json!({"sub": format!("u{}-{i}", spec.index), "exp": exp});
            jsonwebtoken::encode(&header, &claims, &key).context("cannot sign token")
        })
        .collect()
}

/// The topics connection `i` of this worker joins: rooms are assigned by global
/// index, so rooms have the same size whatever the number of workers.
fn topics_for(spec: &WorkerSpec, i: usize) -> Vec<String> {
    let g = spec.first_index + i;
    (0..spec.topics_per_conn)
        .map(|k| {
            let room = (g * spec.topics_per_conn + k) % spec.rooms.max(1);
            format!("{}{room}", spec.topic_prefix)
        })
        .collect()
}

/// Does connection `i` of this worker publish?
fn publishes(spec: &WorkerSpec, i: usize) -> bool {
    spec.publisher_every > 0 && (spec.first_index + i).is_multiple_of(spec.publisher_every)
}

/// Commands from stdin; end of input (or garbage) reads as [`Cmd::Stop`].
fn read_commands() -> mpsc::UnboundedReceiver<Cmd> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            let cmd = match lines.next_line().await {
                Ok(Some(line)) if line.trim().is_empty() => continue,
                Ok(Some(line)) => serde_json::from_str(&line).unwrap_or_else(|e| {
                    eprintln!("worker: bad command {line:?}: {e}");
                    Cmd::Stop
                }),
                _ => Cmd::Stop,
            };
            let stop = matches!(cmd, Cmd::Stop);
            if tx.send(cmd).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// Wait for the next command, or [`Cmd::Stop`] at the deadline.
async fn next_cmd(cmds: &mut mpsc::UnboundedReceiver<Cmd>, deadline: Instant) -> Cmd {
    match tokio::time::timeout_at(deadline, cmds.recv()).await {
        Ok(Some(cmd)) => cmd,
        _ => Cmd::Stop,
    }
}

/// The worker process's entry point (the hidden `worker` subcommand).
pub async fn main() -> anyhow::Result<()> {
    let mut cmds = read_commands();
    let spec = match cmds.recv().await {
        Some(Cmd::Start { spec }) => *spec,
        _ => anyhow::bail!("worker: expected a start command on stdin"),
    };
    let deadline = Instant::now() + Duration::from_millis(spec.deadline_ms);
    anyhow::ensure!(
        spec.connections <= MAX_CONNECTIONS_PER_WORKER,
        "worker {}: {} connections is over {MAX_CONNECTIONS_PER_WORKER} per process: use more --procs",
        spec.index,
        spec.connections
    );
    let limit = sys::nofile_limit();
    anyhow::ensure!(
        (spec.connections as u64) + 64 <= limit,
        "worker {}: open-file limit {limit} is too low for {} connections",
        spec.index,
        spec.connections
    );
    let source = source_ip(spec.index)?;
    let target = Arc::new(Target::resolve(&spec.url).await?);
    let tokens = mint_tokens(&spec)?;
    emit(&Event::Ready { worker: spec.index });

    loop {
        match next_cmd(&mut cmds, deadline).await {
            Cmd::Go => break,
            Cmd::Stop => return Ok(()),
            Cmd::Start { .. } | Cmd::Traffic => {}
        }
    }
    let go = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (traffic_tx, traffic_rx) = watch::channel(false);
    let stats = Arc::new(Stats::new());
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let launcher = tokio::spawn(launch(Launch {
        spec: spec.clone(),
        target,
        tokens,
        source,
        go,
        deadline,
        stop: stop_rx,
        traffic_on: traffic_rx,
        stats: stats.clone(),
        out: out_tx,
    }));

    // Count outcomes until every connection has one, or we are told to stop.
    let mut collector = Collector::new();
    let mut stopping = false;
    while collector.attempted() < spec.connections as u64 {
        tokio::select! {
            outcome = out_rx.recv() => match outcome {
                Some(outcome) => collector.record(outcome),
                None => break,
            },
            cmd = next_cmd(&mut cmds, deadline) => match cmd {
                Cmd::Stop => {
                    stopping = true;
                    break;
                }
                Cmd::Traffic => {
                    let _ = traffic_tx.send(true);
                }
                _ => {}
            }
        }
    }
    let unfinished = spec.connections as u64 - collector.attempted();
    collector.count_unfinished(unfinished);
    emit(&collector.joined(spec.index, go.elapsed()));

    // Hold until told to stop (or the deadline), then close everything.
    while !stopping {
        match next_cmd(&mut cmds, deadline).await {
            Cmd::Stop => stopping = true,
            Cmd::Traffic => {
                let _ = traffic_tx.send(true);
            }
            _ => {}
        }
    }
    let _ = stop_tx.send(true);
    let grace = Instant::now() + Duration::from_secs(8);
    let (mut tasks, mut dropped) = match tokio::time::timeout_at(grace, launcher).await {
        Ok(Ok(launched)) => launched,
        _ => (JoinSet::new(), 0),
    };
    let mut closed = 0;
    while let Ok(Some(res)) = tokio::time::timeout_at(grace, tasks.join_next()).await {
        match res {
            Ok(Some(HoldEnd::Dropped)) => dropped += 1,
            Ok(Some(HoldEnd::Stopped)) => closed += 1,
            _ => {}
        }
    }
    tasks.abort_all();
    use std::sync::atomic::Ordering::Relaxed;
    emit(&Event::Done {
        worker: spec.index,
        dropped,
        closed,
        published: stats.published.load(Relaxed),
        delivered: stats.delivered.load(Relaxed),
        delivery_us: proto::encode_hist(&stats.latency_us.lock()),
    });
    Ok(())
}

/// What [`launch`] needs.
struct Launch {
    spec: WorkerSpec,
    target: Arc<Target>,
    tokens: Vec<String>,
    source: IpAddr,
    go: Instant,
    deadline: Instant,
    stop: watch::Receiver<bool>,
    traffic_on: watch::Receiver<bool>,
    stats: Arc<Stats>,
    out: mpsc::UnboundedSender<Result<Duration, Failure>>,
}

/// Start one task per connection, paced by rate and concurrency; each reports its
/// attempt on `out` and then holds its connection until stop. Returns the tasks
/// once all are started (or stop came first), and how many connections the server
/// had already dropped by then.
async fn launch(l: Launch) -> (JoinSet<Option<HoldEnd>>, u64) {
    let mut tasks = JoinSet::new();
    let mut dropped = 0;
    let permits = match l.spec.concurrency {
        0 => Semaphore::MAX_PERMITS,
        n => n,
    };
    let slots = Arc::new(Semaphore::new(permits));
    let connect_timeout = Duration::from_millis(l.spec.connect_timeout_ms);
    let heartbeat = Duration::from_millis(l.spec.heartbeat_ms.max(1));
    let traffic = l.spec.traffic.clone().map(Arc::new);
    let app = crate::pusher::App {
        id: String::new(),
        key: l.spec.pusher_key.clone(),
        secret: l.spec.secret.clone(),
    };
    let mut stop = l.stop.clone();
    for (i, token) in l.tokens.into_iter().enumerate() {
        let wait = async {
            if let Some(rate) = l.spec.rate_per_s.filter(|r| *r > 0.0) {
                let at = l.go + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at).await;
            }
            slots.clone().acquire_owned().await.ok()
        };
        let permit = tokio::select! {
            permit = wait => permit,
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(permit) = permit else { break };
        let target = l.target.clone();
        let topics = topics_for(&l.spec, i);
        let role = Role {
            publish_to: publishes(&l.spec, i)
                .then(|| topics.first().cloned())
                .flatten(),
            traffic: traffic.clone(),
            traffic_on: l.traffic_on.clone(),
            stats: l.stats.clone(),
            presence: (l.spec.scenario == Scenario::Presence)
                .then(|| PresenceView::new(l.spec.total_connections, l.go)),
        };
        let out = l.out.clone();
        let stop = l.stop.clone();
        let (source, deadline, protocol) = (l.source, l.deadline, l.spec.protocol);
        let (worker, presence) = (l.spec.index, l.spec.scenario == Scenario::Presence);
        let app = app.clone();
        tasks.spawn(async move {
            let t0 = Instant::now();
            let limit = connect_timeout.min(deadline.saturating_duration_since(t0));
            let user = format!("u{worker}-{i}");
            let who = driver::Who {
                token: &token,
                user: &user,
                app: &app,
                presence,
            };
            let attempt = Conn::connect(protocol, &target, source, who, &topics);
            let result = tokio::time::timeout(limit, attempt).await;
            drop((permit, token, topics));
            match result.unwrap_or(Err(Failure::Timeout)) {
                Ok(conn) => {
                    let _ = out.send(Ok(t0.elapsed()));
                    drop(out);
                    Some(driver::hold(conn, heartbeat, role, stop).await)
                }
                Err(failure) => {
                    let _ = out.send(Err(failure));
                    None
                }
            }
        });
        // Reap finished tasks (failed attempts, dropped connections) as we go.
        while let Some(res) = tasks.try_join_next() {
            if let Ok(Some(HoldEnd::Dropped)) = res {
                dropped += 1;
            }
        }
    }
    (tasks, dropped)
}

/// Outcomes of the connection attempts.
struct Collector {
    ok: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
    latency: hdrhistogram::Histogram<u64>,
}

impl Collector {
    fn new() -> Collector {
        Collector {
            ok: 0,
            failed: 0,
            errors: BTreeMap::new(),
            latency: proto::new_hist(),
        }
    }

    fn attempted(&self) -> u64 {
        self.ok + self.failed
    }

    fn record(&mut self, outcome: Result<Duration, Failure>) {
        match outcome {
            Ok(latency) => {
                self.ok += 1;
                self.latency
                    .saturating_record(latency.as_micros().max(1) as u64);
            }
            Err(failure) => {
                self.failed += 1;
                *self.errors.entry(failure.kind()).or_default() += 1;
            }
        }
    }

    /// Connections without an outcome when we stopped waiting (stopped or out of time).
    fn count_unfinished(&mut self, n: u64) {
        if n > 0 {
            *self.errors.entry("unfinished".into()).or_default() += n;
        }
    }

    fn joined(&self, worker: usize, elapsed: Duration) -> Event {
        Event::Joined {
            worker,
            ok: self.ok,
            errors: self.errors.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            latency_us: proto::encode_hist(&self.latency),
            rss_kib: sys::rss_kib("self"),
        }
    }
}
