//! The coordinator: spawns the worker processes, drives them through the phases
//! (start → ready → go → joined → hold → stop → done), samples the server from
//! `/proc` between phases, and merges what the workers report into a [`Run`].
//!
//! Time is bounded: the phases end by `--timeout` minus a close budget, the workers
//! stop by themselves at the same moment, and any worker still running at
//! `--timeout` is killed.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::CommonArgs;
use crate::driver::Traffic;
use crate::proto::{self, Cmd, Event, Scenario, WorkerSpec};
use crate::sys;
use crate::worker::{MAX_CONNECTIONS_PER_WORKER, source_ip};

/// A sample of the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// VmRSS, KiB.
    pub rss_kib: Option<u64>,
    /// utime + stime so far, seconds.
    pub cpu_s: Option<f64>,
    /// The namespace's TcpExt ListenOverflows counter (whatever the PID).
    pub listen_overflows: Option<u64>,
}

impl Sample {
    fn take(pid: Option<u32>) -> Sample {
        let listen_overflows = sys::tcp_ext("ListenOverflows");
        let Some(pid) = pid.map(|p| p.to_string()) else {
            return Sample {
                listen_overflows,
                ..Sample::default()
            };
        };
        Sample {
            rss_kib: sys::rss_kib(&pid),
            cpu_s: sys::cpu_seconds(&pid),
            listen_overflows,
        }
    }
}

/// Everything measured in one run, merged across workers.
#[derive(Debug)]
pub struct Run {
    /// Scenario that ran.
    pub scenario: Scenario,
    /// Connections asked for.
    pub requested: u64,
    /// Connections joined to all their topics.
    pub ok: u64,
    /// Failures by reason (`unfinished`: no outcome before the deadline).
    pub errors: BTreeMap<String, u64>,
    /// Merged latency, TCP connect start → last join reply, µs.
    pub latency_us: Histogram<u64>,
    /// Go → last worker's `joined`.
    pub storm: Duration,
    /// The hold actually observed.
    pub hold: Duration,
    /// Server before connecting.
    pub before: Sample,
    /// Server when go was sent.
    pub at_go: Sample,
    /// Server once every connection was joined (or failed).
    pub joined: Sample,
    /// Server at the end of the hold.
    pub after_hold: Sample,
    /// Connections the server closed before we stopped.
    pub dropped: u64,
    /// Connections we closed cleanly.
    pub closed: u64,
    /// Sum of the workers' VmRSS once joined, KiB.
    pub client_rss_kib: u64,
    /// Messages published during the hold.
    pub published: u64,
    /// Timestamped messages delivered.
    pub delivered: u64,
    /// Delivery latency, µs.
    pub delivery_us: Histogram<u64>,
    /// Did some phase run out of time?
    pub timed_out: bool,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    connections: usize,
}

impl Worker {
    async fn send(&mut self, cmd: &Cmd) {
        if let Some(stdin) = self.stdin.as_mut() {
            let line = format!("{}\n", proto::to_line(cmd));
            if stdin.write_all(line.as_bytes()).await.is_err() || stdin.flush().await.is_err() {
                self.stdin = None;
            }
        }
    }
}

/// Split `n` into `parts` near-equal shares.
pub fn shares(n: usize, parts: usize) -> Vec<usize> {
    (0..parts)
        .map(|w| n / parts + usize::from(w < n % parts))
        .collect()
}

fn validate(args: &CommonArgs, hold: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(args.procs >= 1, "--procs must be at least 1");
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    source_ip(args.procs - 1)?;
    let per = args.connections.div_ceil(args.procs);
    anyhow::ensure!(
        per <= MAX_CONNECTIONS_PER_WORKER,
        "{per} connections per worker is over {MAX_CONNECTIONS_PER_WORKER}: use more --procs"
    );
    anyhow::ensure!(
        hold + Duration::from_secs(5) < args.timeout,
        "--hold must be shorter than --timeout (leave time to connect and close)"
    );
    Ok(())
}

/// Who publishes what during the hold (fan-out, rooms); `None`: nobody.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Connection with global index g publishes when `g % publisher_every == 0`.
    pub publisher_every: usize,
    pub traffic: Traffic,
}

/// Run `scenario`: spawn the workers, drive the phases, gather a [`Run`].
pub async fn run(
    scenario: Scenario,
    args: &CommonArgs,
    hold: Duration,
    plan: Option<Plan>,
) -> anyhow::Result<Run> {
    validate(args, hold)?;
    let started = Instant::now();
    let close_budget = (args.timeout / 4).min(Duration::from_secs(10));
    let phase_deadline = started + args.timeout - close_budget;
    let hard_deadline = started + args.timeout;
    let before = Sample::take(args.server_pid);

    let exe = std::env::current_exe().context("cannot find my own executable")?;
    let (tx, mut events) = mpsc::unbounded_channel::<(usize, Option<Event>)>();
    let mut workers = Vec::new();
    let mut first_index = 0;
    for (index, connections) in shares(args.connections, args.procs).into_iter().enumerate() {
        let mut child = Command::new(&exe)
            .arg("worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot spawn a worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => {
                        let _ = tx.send((index, Some(event)));
                    }
                    Err(_) => eprintln!("worker {index}: {line}"),
                }
            }
            let _ = tx.send((index, None));
        });
        let spec = WorkerSpec {
            scenario,
            index,
            protocol: args.protocol,
            first_index,
            total_connections: args.connections,
            topic_prefix: args.topic_prefix.clone(),
            publisher_every: plan.as_ref().map_or(0, |p| p.publisher_every),
            traffic: plan.as_ref().map(|p| p.traffic.clone()),
            connections,
            url: args.url.clone(),
            secret: args.secret.clone(),
            pusher_key: args.pusher_key.clone(),
            topics_per_conn: args.topics_per_conn,
            rooms: args.rooms,
            rate_per_s: args.rate.map(|r| r / args.procs as f64),
            concurrency: args.concurrency.div_ceil(args.procs),
            connect_timeout_ms: args.connect_timeout.as_millis() as u64,
            heartbeat_ms: args.heartbeat.as_millis() as u64,
            deadline_ms: phase_deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64,
        };
        let mut worker = Worker {
            stdin: child.stdin.take(),
            child,
            connections,
        };
        worker
            .send(&Cmd::Start {
                spec: Box::new(spec),
            })
            .await;
        workers.push(worker);
        first_index += connections;
    }
    drop(tx);

    // Ready.
    let mut ready = vec![false; workers.len()];
    while ready.iter().any(|r| !r) {
        match tokio::time::timeout_at(phase_deadline, events.recv()).await {
            Ok(Some((w, Some(Event::Ready { .. })))) => ready[w] = true,
            Ok(Some((w, None))) => anyhow::bail!("worker {w} exited before it was ready"),
            Ok(Some(_)) => {}
            _ => anyhow::bail!("workers not ready before the timeout"),
        }
    }
    eprintln!(
        "armoricore-bench {}: {} workers ready, connecting {} connections",
        scenario.name(),
        workers.len(),
        args.connections
    );

    // Go → joined.
    let at_go = Sample::take(args.server_pid);
    let go = Instant::now();
    for w in &mut workers {
        w.send(&Cmd::Go).await;
    }
    let mut run = Run {
        scenario,
        requested: args.connections as u64,
        ok: 0,
        errors: BTreeMap::new(),
        latency_us: proto::new_hist(),
        storm: Duration::ZERO,
        hold: Duration::ZERO,
        before,
        at_go,
        joined: Sample::default(),
        after_hold: Sample::default(),
        dropped: 0,
        closed: 0,
        client_rss_kib: 0,
        published: 0,
        delivered: 0,
        delivery_us: proto::new_hist(),
        timed_out: false,
    };
    let mut pending: Vec<bool> = vec![true; workers.len()];
    let mut alive = vec![true; workers.len()];
    while pending.iter().any(|p| *p) {
        match tokio::time::timeout_at(phase_deadline, events.recv()).await {
            Ok(Some((
                w,
                Some(Event::Joined {
                    ok,
                    errors,
                    latency_us,
                    rss_kib,
                    ..
                }),
            ))) => {
                pending[w] = false;
                run.ok += ok;
                for (kind, n) in errors {
                    *run.errors.entry(kind).or_default() += n;
                }
                run.latency_us
                    .add(proto::decode_hist(&latency_us)?)
                    .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
                run.client_rss_kib += rss_kib.unwrap_or(0);
            }
            Ok(Some((w, None))) => {
                alive[w] = false;
                if pending[w] {
                    pending[w] = false;
                    *run.errors.entry("worker_exited".into()).or_default() +=
                        workers[w].connections as u64;
                }
            }
            Ok(Some(_)) => {}
            _ => {
                run.timed_out = true;
                break;
            }
        }
    }
    for (w, p) in pending.iter().enumerate() {
        if *p {
            *run.errors.entry("no_report".into()).or_default() += workers[w].connections as u64;
        }
    }
    run.storm = go.elapsed();
    run.joined = Sample::take(args.server_pid);
    eprintln!(
        "armoricore-bench {}: {} joined, {} failed in {:.2}s{}",
        scenario.name(),
        run.ok,
        run.errors.values().sum::<u64>(),
        run.storm.as_secs_f64(),
        if hold.is_zero() {
            String::new()
        } else {
            format!("; holding {}", humantime::format_duration(hold))
        }
    );

    // Hold (with traffic, when the scenario has some).
    if plan.is_some() {
        for w in &mut workers {
            w.send(&Cmd::Traffic).await;
        }
    }
    let hold_start = Instant::now();
    let hold_end = (hold_start + hold).min(phase_deadline);
    if hold_end < hold_start + hold {
        run.timed_out = true;
    }
    tokio::time::sleep_until(hold_end).await;
    run.hold = hold_start.elapsed();
    run.after_hold = Sample::take(args.server_pid);

    // Stop → done.
    for w in &mut workers {
        w.send(&Cmd::Stop).await;
        w.stdin = None;
    }
    while alive.iter().any(|a| *a) {
        match tokio::time::timeout_at(hard_deadline, events.recv()).await {
            Ok(Some((
                _,
                Some(Event::Done {
                    dropped,
                    closed,
                    published,
                    delivered,
                    delivery_us,
                    ..
                }),
            ))) => {
                run.dropped += dropped;
                run.closed += closed;
                run.published += published;
                run.delivered += delivered;
                run.delivery_us
                    .add(proto::decode_hist(&delivery_us)?)
                    .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
            }
            Ok(Some((w, None))) => alive[w] = false,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    for w in &mut workers {
        if tokio::time::timeout_at(hard_deadline, w.child.wait())
            .await
            .is_err()
        {
            let _ = w.child.start_kill();
            run.timed_out = true;
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_evenly() {
        assert_eq!(shares(10, 4), vec![3, 3, 2, 2]);
        assert_eq!(shares(10_000, 4), vec![2500; 4]);
        assert_eq!(shares(3, 1), vec![3]);
    }
}
