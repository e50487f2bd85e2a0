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
//!
//! Everything stops by itself within `--timeout`, closing its connections.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[path = "armoricore-bench/coordinator.rs"]
mod coordinator;
#[path = "armoricore-bench/phx.rs"]
mod phx;
#[path = "armoricore-bench/proto.rs"]
mod proto;
#[path = "armoricore-bench/report.rs"]
mod report;
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
    /// Connections in total, split evenly across the worker processes.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Worker processes; worker w connects from 127.0.0.(2+w).
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Topics each connection joins (`chat:room:<n>`); 0: connect and upgrade only.
    #[arg(long, default_value_t = 1)]
    pub topics_per_conn: usize,
    /// Distinct rooms: connection i of a worker joins `chat:room:<(i*topics_per_conn+k) % rooms>`.
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
                let run = coordinator::run(proto::Scenario::Idle, &args.common, args.hold).await?;
                report::print(&report::idle(&args.common, &run), args.common.json);
                Ok(())
            }
            Command::Connect(args) => {
                let run =
                    coordinator::run(proto::Scenario::Connect, &args.common, args.hold).await?;
                report::print(&report::connect(&args.common, &run), args.common.json);
                Ok(())
            }
            Command::Worker => worker::main().await,
        }
    })
}
