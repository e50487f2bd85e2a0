//! The `calls` scenario: RTP forwarded by the SFU, in packets per CPU-second of
//! the node, and the latency it adds per packet.
//!
//! Clients are str0m peers (one UDP socket each, SRTP, RTP mode) in this
//! process; the node runs in this process too, on a runtime of its own whose
//! threads are named `armoricore-node`, so its CPU time is read per thread from
//! `/proc/self/task`. Two runs, one after the other:
//!
//! ```text
//! direct      publisher ──UDP/SRTP──▶ subscriber                  (the baseline)
//! armoricore  N participants in one call, each publishing one track that
//!             every other one receives: publisher ──▶ node (SFU) ──▶ N−1 subscribers
//! arcrtc      the same call with N native ArcRTC clients, on the same node
//! ```
//!
//! Every packet carries the time it was written; the receiver records
//! now − then (one clock: same process). SFU latency added = through the node
//! minus direct, per percentile. The node's own histogram (arrival on its
//! socket → written for one subscriber) is reported too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use armoricore::config::Config;
use armoricore::server::Node;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::RtpWrite;
use str0m::{Candidate, Event, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Args, Clone, Debug)]
pub struct CallsArgs {
    /// Participants in the call; each publishes one track to all the others.
    #[arg(long, default_value_t = 6)]
    pub participants: usize,
    /// Packets per second each participant publishes.
    #[arg(long, default_value_t = 200)]
    pub pps: u32,
    /// RTP payload bytes per packet (Opus voice is ~100, video ~1100).
    #[arg(long, default_value_t = 600)]
    pub size: usize,
    /// Measured seconds (after everyone receives everyone).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Worker threads of the node's runtime.
    #[arg(long, default_value_t = 1)]
    pub node_threads: usize,
    /// Also print the result as one JSON line.
    #[arg(long)]
    pub json: bool,
}

/// Microsecond histograms shared by a run's receivers.
#[derive(Clone)]
pub struct Meter {
    latency: Arc<Mutex<Histogram<u64>>>,
    received: Arc<Mutex<HashMap<(usize, usize), u64>>>,
}

impl Meter {
    fn new() -> Meter {
        Meter {
            latency: Arc::new(Mutex::new(Histogram::new(3).expect("histogram"))),
            received: Arc::default(),
        }
    }

    fn reset(&self) {
        self.latency.lock().reset();
    }

    /// A packet `stamped` by another participant reached participant `index`.
    pub fn record(&self, index: usize, payload: &[u8], epoch: Instant) {
        if payload.len() < 16 {
            return;
        }
        let sent = u64::from_be_bytes(payload[..8].try_into().expect("8 bytes"));
        let from = u64::from_be_bytes(payload[8..16].try_into().expect("8 bytes")) as usize;
        let now = Instant::now().duration_since(epoch).as_micros() as u64;
        self.latency
            .lock()
            .record(now.saturating_sub(sent).max(1))
            .ok();
        *self.received.lock().entry((from, index)).or_default() += 1;
    }
}

/// A payload of `size` bytes carrying when it was made (µs since `epoch`) and by whom.
pub fn stamped(index: usize, size: usize, epoch: Instant) -> Vec<u8> {
    let mut payload = vec![0u8; size.max(16)];
    let us = Instant::now().duration_since(epoch).as_micros() as u64;
    payload[..8].copy_from_slice(&us.to_be_bytes());
    payload[8..16].copy_from_slice(&(index as u64).to_be_bytes());
    payload
}

/// What a client tells its signaling side: an answer to a server offer.
enum Out {
    Answer(String, Option<u64>),
}

/// What the signaling side tells a client.
enum In {
    Offer(String, Option<u64>),
    Answer(String),
}

/// A str0m peer on its own UDP socket: publishes one audio track from `index`
/// at `pps`, and records what it receives.
struct Client {
    index: usize,
    rtc: Rtc,
    socket: Arc<UdpSocket>,
    mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    seq: u64,
    meter: Meter,
    epoch: Instant,
}

impl Client {
    async fn new(index: usize, meter: Meter, epoch: Instant) -> anyhow::Result<Client> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let mut rtc = Rtc::builder()
            .set_rtp_mode(true)
            .clear_codecs()
            .enable_opus(true, false)
            .build(Instant::now());
        rtc.add_local_candidate(Candidate::host(socket.local_addr()?, "udp")?);
        Ok(Client {
            index,
            rtc,
            socket,
            mid: None,
            pending: None,
            seq: 0,
            meter,
            epoch,
        })
    }

    /// Offer one send-only audio track.
    fn offer(&mut self) -> String {
        let mut api = self.rtc.sdp_api();
        let mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let (offer, pending) = api.apply().expect("a change to offer");
        self.mid = Some(mid);
        self.pending = Some(pending);
        offer.to_sdp_string()
    }

    fn accept_offer(&mut self, sdp: &str) -> anyhow::Result<String> {
        let offer = SdpOffer::from_sdp_string(sdp)?;
        Ok(self.rtc.sdp_api().accept_offer(offer)?.to_sdp_string())
    }

    fn accept_answer(&mut self, sdp: &str) -> anyhow::Result<()> {
        let answer = SdpAnswer::from_sdp_string(sdp)?;
        let pending = self.pending.take().context("no offer pending")?;
        self.rtc.sdp_api().accept_answer(pending, answer)?;
        Ok(())
    }

    /// Write one packet: the time since `epoch` (µs), who sent it, padding.
    fn publish(&mut self, size: usize) {
        let Some(mid) = self.mid else { return };
        let Some(pt) = self
            .rtc
            .codec_config()
            .find(|p| p.spec().codec == str0m::format::Codec::Opus)
            .map(|p| p.pt())
        else {
            return;
        };
        let payload = stamped(self.index, size, self.epoch);
        let now = Instant::now();
        self.seq += 1;
        let time = (self.seq * 960) as u32;
        let mut api = self.rtc.direct_api();
        if let Some(tx) = api.stream_tx_by_mid(mid, None) {
            tx.write_rtp(RtpWrite::new(pt, self.seq.into(), time, now, payload));
        }
    }

    fn received(&self, payload: &[u8]) {
        self.meter.record(self.index, payload, self.epoch);
    }

    /// Poll until a timeout; returns it.
    fn drain(&mut self) -> Instant {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Timeout(t)) => return t,
                Ok(Output::Event(Event::RtpPacket(p))) => self.received(&p.payload),
                Ok(Output::Event(_)) => {}
                Err(e) => {
                    eprintln!("calls: client {} failed: {e}", self.index);
                    return Instant::now() + Duration::from_secs(3600);
                }
            }
        }
    }

    /// Run until `stop`: socket, timers, signaling and the send ticker.
    async fn run(
        mut self,
        pps: u32,
        size: usize,
        mut signal_in: mpsc::UnboundedReceiver<In>,
        signal_out: mpsc::UnboundedSender<Out>,
        mut stop: watch::Receiver<bool>,
    ) {
        let socket = self.socket.clone();
        let local = socket.local_addr().expect("bound");
        let mut buf = vec![0u8; 2048];
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(pps)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            let deadline = self.drain();
            tokio::select! {
                r = socket.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { continue };
                    if let Ok(receive) = Receive::new(Protocol::Udp, source, local, &buf[..n]) {
                        let _ = self.rtc.handle_input(Input::Receive(Instant::now(), receive));
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let _ = self.rtc.handle_input(Input::Timeout(Instant::now()));
                }
                _ = ticker.tick(), if self.rtc.is_connected() => self.publish(size),
                m = signal_in.recv() => match m {
                    Some(In::Offer(sdp, offer_id)) => match self.accept_offer(&sdp) {
                        Ok(answer) => { let _ = signal_out.send(Out::Answer(answer, offer_id)); }
                        Err(e) => eprintln!("calls: client {}: offer refused: {e}", self.index),
                    },
                    Some(In::Answer(sdp)) => {
                        if let Err(e) = self.accept_answer(&sdp) {
                            eprintln!("calls: client {}: answer refused: {e}", self.index);
                        }
                    }
                    None => {}
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Phoenix signaling for one client: join `signaling:call:bench`, relay.
async fn signaling(
    addr: SocketAddr,
    token: String,
    first_offer: String,
    to_client: mpsc::UnboundedSender<In>,
    mut from_client: mpsc::UnboundedReceiver<Out>,
) -> anyhow::Result<()> {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={token}");
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut sink, mut stream) = ws.split();
    let topic = "signaling:call:bench";
    let frame = |r: u64, event: &str, payload: Value| {
        WsMessage::text(json!(["1", r.to_string(), topic, event, payload]).to_string())
    };
    sink.send(frame(1, "phx_join", json!({}))).await?;
    sink.send(frame(
        2,
        "call_offer",
        json!({"sdp": first_offer, "type": "offer"}),
    ))
    .await?;
    let mut r = 2;
    loop {
        tokio::select! {
            m = stream.next() => {
                let Some(Ok(WsMessage::Text(text))) = m else { return Ok(()) };
                let f: Value = serde_json::from_str(text.as_str())?;
                let sdp = f[4]["sdp"].as_str().unwrap_or_default().to_string();
                match f[3].as_str() {
                    Some("call_answer") => { let _ = to_client.send(In::Answer(sdp)); }
                    Some("call_offer") => {
                        let _ = to_client.send(In::Offer(sdp, f[4]["offer_id"].as_u64()));
                    }
                    Some("phx_reply") if f[4]["status"] != "ok" => {
                        anyhow::bail!("signaling refused: {}", f[4]);
                    }
                    _ => {}
                }
            }
            m = from_client.recv() => match m {
                Some(Out::Answer(sdp, offer_id)) => {
                    r += 1;
                    sink.send(frame(r, "call_answer",
                        json!({"sdp": sdp, "type": "answer", "offer_id": offer_id}))).await?;
                }
                None => return Ok(()),
            }
        }
    }
}

/// CPU seconds used so far by this process's threads named `armoricore-node`.
fn node_cpu_seconds() -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut total = 0.0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("armoricore-node") {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (u, s): (f64, f64) = (
            f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0),
            f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0),
        );
        total += (u + s) / ticks;
    }
    total
}

fn quantiles(h: &Histogram<u64>) -> Value {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    json!({"p50_ms": ms(0.5), "p99_ms": ms(0.99), "max_ms": h.max() as f64 / 1000.0, "samples": h.len()})
}

/// The baseline: one publisher straight to one subscriber.
async fn direct(args: &CallsArgs) -> anyhow::Result<Value> {
    let epoch = Instant::now();
    let meter = Meter::new();
    let mut a = Client::new(0, meter.clone(), epoch).await?;
    let mut b = Client::new(1, meter.clone(), epoch).await?;
    let offer = a.offer();
    let answer = b.accept_offer(&offer)?;
    a.accept_answer(&answer)?;
    b.mid = None; // b only receives
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for c in [a, b] {
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (stop, pps, size) = (stop.clone(), args_pps(args), args.size);
        tasks.push(tokio::spawn(async move {
            // No signaling after the first exchange: keep the channels open.
            let _keep = (in_tx, out_rx);
            c.run(pps, size, in_rx, out_tx, stop).await
        }));
    }
    wait_until(&meter, &[(0, 1)], Duration::from_secs(10)).await?;
    meter.reset();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let q = quantiles(&meter.latency.lock());
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(q)
}

fn args_pps(args: &CallsArgs) -> u32 {
    args.pps.max(1)
}

async fn wait_until(
    meter: &Meter,
    pairs: &[(usize, usize)],
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let missing = {
            let got = meter.received.lock();
            pairs.iter().filter(|p| !got.contains_key(p)).count()
        };
        if missing == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{missing} of {} publisher→subscriber pairs never received a packet",
            pairs.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The node, on a runtime of its own, and the token key its clients use.
struct BenchNode {
    rt: tokio::runtime::Runtime,
    node: Node,
    dir: std::path::PathBuf,
}

fn token(i: usize) -> anyhow::Result<String> {
    let key = jsonwebtoken::EncodingKey::from_secret(b"bench-secret");
    let claims = json!({"sub": format!("p{i}"), "exp": 4_000_000_000u64});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &key,
    )?)
}

async fn start_node(args: &CallsArgs) -> anyhow::Result<BenchNode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.node_threads)
        .thread_name("armoricore-node")
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("armoricore-bench-calls-{}", std::process::id()));
    let mut config = Config::defaults();
    config.server.host = "127.0.0.1".into();
    config.server.port = 0;
    config.server.data_dir = dir.clone();
    config.auth.jwt_secret = "bench-secret".into();
    config.log.level = "warn".into();
    config.database.url = "off".into();
    config.calls.addresses = vec!["127.0.0.1".parse()?];
    config.calls.max_participants = args.participants.max(2);
    let node = rt
        .spawn(async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            let router = armoricore::channels::Router::standard(&config);
            anyhow::Ok(Node::start(config, router, listener).await?)
        })
        .await??;
    Ok(BenchNode { rt, node, dir })
}

impl BenchNode {
    async fn stop(self) -> anyhow::Result<()> {
        let node = self.node;
        self.rt.spawn(async move { node.shutdown().await }).await?;
        self.rt.shutdown_background();
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Every participant receives every other one: wait for that, then measure
/// `args.seconds` of forwarding (latency, node CPU, packets).
async fn measure(args: &CallsArgs, node: &BenchNode, meter: &Meter) -> anyhow::Result<Value> {
    let metrics = node.node.hub().metrics.clone();
    let pairs: Vec<(usize, usize)> = (0..args.participants)
        .flat_map(|a| {
            (0..args.participants)
                .filter(move |b| *b != a)
                .map(move |b| (a, b))
        })
        .collect();
    wait_until(meter, &pairs, Duration::from_secs(30)).await?;
    meter.reset();
    let (cpu0, fwd0, t0) = (
        node_cpu_seconds(),
        metrics.rtc_packets_forwarded.get(),
        Instant::now(),
    );
    let internal0 = metrics.rtc_forward_seconds.get_sample_count();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let (cpu1, fwd1, elapsed) = (
        node_cpu_seconds(),
        metrics.rtc_packets_forwarded.get(),
        t0.elapsed().as_secs_f64(),
    );
    let internal = metrics.rtc_forward_seconds.get_sample_count() - internal0;
    let latency = quantiles(&meter.latency.lock());
    let forwarded = (fwd1 - fwd0) as f64;
    let cpu = cpu1 - cpu0;
    let offered =
        (args.participants * (args.participants - 1)) as f64 * f64::from(args.pps) * elapsed;
    Ok(json!({
        "forwarded_per_s": forwarded / elapsed,
        "offered_per_s": offered / elapsed,
        "delivered_ratio": forwarded / offered,
        "node_cpu_s": cpu,
        "node_cores_busy": cpu / elapsed,
        "packets_per_cpu_s": if cpu > 0.0 { forwarded / cpu } else { 0.0 },
        "internal_samples": internal,
        "latency": latency,
    }))
}

/// N WebRTC participants in one call through the node.
async fn webrtc_call(args: &CallsArgs, node: &BenchNode) -> anyhow::Result<Value> {
    let addr = node.node.addr();
    let epoch = Instant::now();
    let meter = Meter::new();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..args.participants {
        let mut c = Client::new(i, meter.clone(), epoch).await?;
        let offer = c.offer();
        let token = token(i)?;
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = signaling(addr, token, offer, in_tx, out_rx).await {
                eprintln!("calls: signaling {i}: {e}");
            }
        }));
        let (stop, pps, size) = (stop.clone(), args_pps(args), args.size);
        tasks.push(tokio::spawn(c.run(pps, size, in_rx, out_tx, stop)));
    }
    let result = measure(args, node, &meter).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        t.abort();
    }
    result
}

/// The same call with N native ArcRTC participants, through the same node.
async fn arc_call(args: &CallsArgs, node: &BenchNode) -> anyhow::Result<Value> {
    let addr = node.node.addr();
    let epoch = Instant::now();
    let meter = Meter::new();
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..args.participants {
        let (meter, stop, token) = (meter.clone(), stop.clone(), token(i)?);
        let load = (args_pps(args), args.size);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = super::arc::participant(i, addr, token, meter, epoch, load, stop).await
            {
                eprintln!("calls: ArcRTC participant {i}: {e}");
            }
        }));
    }
    let result = measure(args, node, &meter).await;
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    result
}

pub async fn run(args: CallsArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.participants >= 2, "--participants must be at least 2");
    let base = direct(&args).await?;
    let node = start_node(&args).await?;
    let sfu = webrtc_call(&args, &node).await;
    let arc = arc_call(&args, &node).await;
    node.stop().await?;
    let (sfu, arc) = (sfu?, arc?);
    let added =
        |q: &str| sfu["latency"][q].as_f64().unwrap_or(0.0) - base[q].as_f64().unwrap_or(0.0);
    let arc_ms = |q: &str| arc["latency"][q].as_f64().unwrap_or(0.0);
    println!(
        "calls: {} participants, {} pps × {} B each, {} s, node on {} thread(s)\n  direct (baseline):  p50 {:.3} ms, p99 {:.3} ms\n  through the SFU:    p50 {:.3} ms, p99 {:.3} ms  → added p50 {:.3} ms, p99 {:.3} ms\n  forwarded {:.0} packets/s ({:.3} of offered), node CPU {:.2} cores → {:.0} packets per CPU-second",
        args.participants,
        args.pps,
        args.size,
        args.seconds,
        args.node_threads,
        base["p50_ms"].as_f64().unwrap_or(0.0),
        base["p99_ms"].as_f64().unwrap_or(0.0),
        sfu["latency"]["p50_ms"].as_f64().unwrap_or(0.0),
        sfu["latency"]["p99_ms"].as_f64().unwrap_or(0.0),
        added("p50_ms"),
        added("p99_ms"),
        sfu["forwarded_per_s"].as_f64().unwrap_or(0.0),
        sfu["delivered_ratio"].as_f64().unwrap_or(0.0),
        sfu["node_cores_busy"].as_f64().unwrap_or(0.0),
        sfu["packets_per_cpu_s"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  ArcRTC, same node:  p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (end to end: client SRTP, node, client)\n  forwarded {:.0} packets/s ({:.3} of offered), node CPU {:.2} cores → {:.0} packets per CPU-second",
        arc_ms("p50_ms"),
        arc_ms("p99_ms"),
        arc_ms("max_ms"),
        arc["forwarded_per_s"].as_f64().unwrap_or(0.0),
        arc["delivered_ratio"].as_f64().unwrap_or(0.0),
        arc["node_cores_busy"].as_f64().unwrap_or(0.0),
        arc["packets_per_cpu_s"].as_f64().unwrap_or(0.0),
    );
    if args.json {
        let j = json!({
            "scenario": "calls", "participants": args.participants, "pps": args.pps,
            "size": args.size, "seconds": args.seconds, "node_threads": args.node_threads,
            "direct": base, "armoricore": sfu, "arcrtc": arc,
            "added_p50_ms": added("p50_ms"), "added_p99_ms": added("p99_ms"),
        });
        println!("{j}");
    }
    Ok(())
}
