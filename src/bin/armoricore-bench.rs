//! `armoricore-bench`: a load generator for Armoricore's Phoenix Channels WebSocket.
//!
//! Each scenario is a subcommand run by a *coordinator* that spawns `--procs` worker
//! processes of this same binary (the hidden `worker` subcommand). Workers open the
//! connections, each from its own loopback source address `127.0.0.(2+worker)`, and
//! talk to the coordinator in JSON lines (see [`proto`]): commands on their stdin,
//! events on their stdout. The coordinator samples the server process from `/proc`,
//! merges the workers' latency histograms and prints a one-line summary (plus a
//! JSON result with `--json`).
//!
//! Scenarios:
//! - `idle`: open, authenticate and join N connections, hold them idle, and report
//!   the server's RSS per connection and CPU per connection-hour.
//! - `connect`: a connect + JWT + join storm; connects/s and p50/p99/max latency.
//! - `fanout`, `rooms`, `presence`: broadcast delivery, many small rooms, join storms.
//! - `calls`: RTP packets the SFU forwards per CPU-second and the latency it adds,
//!   str0m peers in process against a direct peer-to-peer baseline (see `calls.rs`).
//! - `bus`: events/s through the NATS bridge, against a bare JetStream worker (in
//!   process, no workers; see `bus.rs`).
//!
//! Everything stops by itself within `--timeout`, closing its connections.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[path = "armoricore-bench/arc.rs"]
mod arc;
#[path = "armoricore-bench/bus.rs"]
mod bus;
#[path = "armoricore-bench/calls.rs"]
mod calls;
#[path = "armoricore-bench/coordinator.rs"]
mod coordinator;
#[path = "armoricore-bench/driver.rs"]
mod driver;
#[path = "armoricore-bench/notify.rs"]
mod notify;
#[path = "armoricore-bench/phx.rs"]
mod phx;
#[path = "armoricore-bench/proto.rs"]
mod proto;
#[path = "armoricore-bench/pusher.rs"]
mod pusher;
#[path = "armoricore-bench/report.rs"]
mod report;
#[path = "armoricore-bench/sio.rs"]
mod sio;
#[path = "armoricore-bench/sys.rs"]
mod sys;
#[path = "armoricore-bench/worker.rs"]
mod worker;

#[derive(Parser)]
#[command(
    name = "armoricore-bench",
    version,
    about = "Load generator for Armoricore (Phoenix Channels over WebSocket)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N connections, join, hold them idle: server memory and CPU per idle connection.
    Idle(IdleArgs),
    /// A connect + JWT + join storm: connects/s and latency from TCP connect to join reply.
    Connect(ConnectArgs),
    /// S subscribers in one topic and one publisher at a rate: delivery latency and deliveries/s.
    Fanout(FanoutArgs),
    /// Many small rooms (e.g. 5,000 × 3), every member chatting: messages/s and latency.
    Rooms(RoomsArgs),
    /// A join storm into one presence topic (e.g. 5,000 joins in 5 s with `--rate 1000`):
    /// time until every client's presence view lists every user.
    Presence(PresenceArgs),
    /// Events/s and latency through the NATS bridge (publish → handler → result),
    /// against a bare JetStream worker in the same run.
    Bus(bus::BusArgs),
    /// Push notifications/s to a local FCM stand-in with a window of jobs in
    /// flight, and each job's latency, against a bare FCM client in the same run.
    Notify(notify::NotifyArgs),
    /// RTP through the call SFU: packets per node CPU-second and added latency,
    /// against a direct peer-to-peer baseline.
    Calls(calls::CallsArgs),
    /// Internal: one worker process, driven by the coordinator over stdin/stdout.
    #[command(hide = true)]
    Worker,
}

/// Options every scenario shares.
#[derive(Args, Clone, Debug)]
pub struct CommonArgs {
    /// WebSocket endpoint, e.g. ws://127.0.0.1:4000/socket/websocket (vsn and token are added).
    #[arg(long)]
    pub url: String,
    /// HS256 secret used to mint one token per connection.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Pusher app key (with `--protocol pusher`; `--secret` is then the app secret).
    #[arg(long, default_value = "bench-key")]
    pub pusher_key: String,
    /// Connections in total, split evenly across the worker processes.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Worker processes; worker w connects from 127.0.0.(2+w).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Protocol of the server under test.
    #[arg(long, value_enum, default_value = "phoenix")]
    pub protocol: driver::Proto,
    /// Topics are `<prefix><room>` (Phoenix: `chat:room:` has presence, `comments:stream:` has none).
    #[arg(long, default_value = "chat:room:")]
    pub topic_prefix: String,
    /// Topics each connection joins (`chat:room:<n>`); 0: connect and upgrade only.
    #[arg(long, default_value_t = 1)]
    pub topics_per_conn: usize,
    /// Distinct rooms: connection g (global index) joins room `(g*topics_per_conn+k) % rooms`.
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// New connections per second in total (default: as fast as `--concurrency` allows).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connection attempts in flight at once, in total (split across workers); 0: no limit.
    /// Keep it under the server's listen backlog (`server.listen_backlog`, 4096):
    /// past it SYNs are dropped and those connects take 1 s more (TCP retransmit).
    #[arg(long, default_value_t = 100)]
    pub concurrency: usize,
    /// Longest wait for one connection's TCP connect + upgrade + join reply.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Heartbeat interval on each connection (phoenix.js: 30 s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
    /// PID of the server process, to sample its RSS and CPU from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Everything stops by then, connections closed.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// `idle` options.
#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to hold the joined connections idle (server CPU is measured over it).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// `connect` options.
#[derive(Args, Clone, Debug)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to keep the connections once all are joined, before closing them.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// `fanout` options.
#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Messages per second from the one publisher.
    #[arg(long = "publish-rate", default_value_t = 10.0)]
    pub publish_rate: f64,
    /// Payload size in bytes (send timestamp + padding).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// How long the publisher publishes.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
    /// Search the highest deliveries/s with p99 within `--p99-ms`: runs again with
    /// higher publish rates (doubling, then bisecting).
    #[arg(long)]
    pub search: bool,
    /// The latency bound of `--search`.
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
}

/// `rooms` options.
#[derive(Args, Clone, Debug)]
pub struct RoomsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Messages per second from each member.
    #[arg(long, default_value_t = 0.2)]
    pub rate_per_user: f64,
    /// Payload size in bytes (send timestamp + padding).
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// How long members chat.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// `presence` options.
#[derive(Args, Clone, Debug)]
pub struct PresenceArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// How long to wait, once every connection joined, for the views to converge.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub hold: Duration,
}

/// The Phoenix event a topic family takes for a message.
fn event_for(prefix: &str) -> &'static str {
    if prefix.starts_with("comments:") {
        "new_comment"
    } else {
        "new_message"
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("armoricore-bench: cannot raise RLIMIT_NOFILE: {e}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Idle(args) => {
                let run =
                    coordinator::run(proto::Scenario::Idle, &args.common, args.hold, None).await?;
                report::print(&report::idle(&args.common, &run), args.common.json);
                Ok(())
            }
            Command::Connect(args) => {
                let run = coordinator::run(proto::Scenario::Connect, &args.common, args.hold, None)
                    .await?;
                report::print(&report::connect(&args.common, &run), args.common.json);
                Ok(())
            }
            Command::Fanout(args) => fanout(args).await,
            Command::Rooms(args) => {
                let plan = coordinator::Plan {
                    publisher_every: 1,
                    traffic: driver::Traffic {
                        rate_per_publisher: args.rate_per_user,
                        event: event_for(&args.common.topic_prefix).into(),
                        payload_bytes: args.payload_bytes,
                    },
                };
                let run =
                    coordinator::run(proto::Scenario::Rooms, &args.common, args.hold, Some(plan))
                        .await?;
                report::print(&report::traffic(&args.common, &run), args.common.json);
                Ok(())
            }
            Command::Presence(args) => {
                let mut common = args.common.clone();
                common.rooms = 1;
                common.topics_per_conn = 1;
                let run =
                    coordinator::run(proto::Scenario::Presence, &common, args.hold, None).await?;
                report::print(&report::presence(&common, &run), common.json);
                Ok(())
            }
            Command::Bus(args) => bus::run(args).await,
            Command::Notify(args) => notify::run(args).await,
            Command::Calls(args) => calls::run(args).await,
            Command::Worker => worker::main().await,
        }
    })
}

/// One fan-out run at `rate`.
async fn fanout_run(args: &FanoutArgs, rate: f64) -> anyhow::Result<coordinator::Run> {
    let mut common = args.common.clone();
    common.rooms = 1;
    common.topics_per_conn = 1;
    let plan = coordinator::Plan {
        // Only the connection with global index 0 publishes.
        publisher_every: common.connections.max(1),
        traffic: driver::Traffic {
            rate_per_publisher: rate,
            event: event_for(&common.topic_prefix).into(),
            payload_bytes: args.payload_bytes,
        },
    };
    coordinator::run(proto::Scenario::Fanout, &common, args.hold, Some(plan)).await
}

/// `fanout`, once or searching the highest rate whose p99 stays within `--p99-ms`.
async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    if !args.search {
        let run = fanout_run(&args, args.publish_rate).await?;
        report::print(&report::traffic(&args.common, &run), args.common.json);
        return Ok(());
    }
    let within = |run: &coordinator::Run| {
        // Every member of the one room receives every message (Pusher: not the publisher).
        let expected = run.published * args.common.protocol.deliveries_per_publish(run.ok);
        let p99_ms = run.delivery_us.value_at_quantile(0.99) as f64 / 1000.0;
        run.delivered > 0 && p99_ms <= args.p99_ms && run.delivered * 100 >= expected * 99
    };
    // (publish rate, its run): the best within the bound, the last outside it.
    type Tried = Option<(f64, coordinator::Run)>;
    let (mut good, mut bad): (Tried, Tried) = (None, None);
    let mut rate = args.publish_rate;
    for _ in 0..8 {
        let run = fanout_run(&args, rate).await?;
        eprintln!("{}", report::traffic(&args.common, &run).line);
        if within(&run) {
            good = Some((rate, run));
        } else {
            bad = Some((rate, run));
        }
        let (g, b) = (good.as_ref().map(|g| g.0), bad.as_ref().map(|b| b.0));
        rate = match (g, b) {
            (Some(g), None) => g * 2.0,
            (Some(g), Some(b)) if b / g > 1.15 => (g + b) / 2.0,
            (None, Some(b)) if b > 1.0 => b / 2.0,
            _ => break,
        };
    }
    // The best rate within the bound or, when none was, the lowest rate tried.
    let found = good.is_some();
    let Some((rate, run)) = good.or(bad) else {
        anyhow::bail!("search: no run completed");
    };
    let mut report = report::traffic(&args.common, &run);
    let prefix = if found {
        format!(
            "search (p99 <= {} ms): best publish rate {rate:.1}/s",
            args.p99_ms
        )
    } else {
        format!(
            "search: no rate met p99 <= {} ms; lowest tried {rate:.1}/s",
            args.p99_ms
        )
    };
    report.line = format!("{prefix} | {}", report.line);
    report.json["search"] = serde_json::json!({
        "p99_ms_bound": args.p99_ms,
        "met": found,
        "publish_rate": rate,
    });
    report::print(&report, args.common.json);
    Ok(())
}
