//! The native ArcRTC client behind `armoricore arc-client` (docs/arcrtc.md §8,
//! §10): joins a call over the Phoenix WebSocket, sends `arc_join`, says hello
//! on UDP, then sends a track (an Opus tone, or an Ogg Opus / IVF file, paced in
//! real time) and receives the others' through a jitter buffer with NACKs,
//! reporting every second per received track: packets, loss, jitter, and
//! one-way latency from the `send-time` extension (meaningful on one host).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rtc_rtp::packetizer::Payloader;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use super::codec::ArcCodec;
use super::media_file::{MediaFile, MediaFileError};
use super::receiver::Receiver;
use super::rtp::{self, Rtcp, Rtp};
use super::srtp::{Keys, Profile, Session};
use super::wire::{Hints, Packet, classify};
use crate::calls::peer::ArcExt;

/// One second of an Opus tone (440 Hz, 20 ms frames), looped by `--tone`.
const TONE: &[u8] = include_bytes!("../../../static/tone.opus");
/// Hellos go out this often until the node answers, for at most HELLO_FOR.
const HELLO_EVERY: Duration = Duration::from_millis(200);
const HELLO_FOR: Duration = Duration::from_secs(10);
const KEEPALIVE: Duration = Duration::from_secs(1);
/// Largest RTP payload: 1,200 bytes of UDP minus header, extensions, SRTP tag.
const MTU_PAYLOAD: usize = 1200 - 12 - 20 - 16;
/// NACK retries wait one round trip: the hello's, within these bounds.
const RTT_MIN: Duration = Duration::from_millis(5);
const RTT_MAX: Duration = Duration::from_millis(200);
/// What a sender keeps for NACKs: the last second, at most this many packets.
const RESEND_PACKETS: usize = 1024;
const RESEND_WINDOW: Duration = Duration::from_secs(1);
/// Packets one NACK may have sent again.
const MAX_RESEND_PER_NACK: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("websocket: {0}")]
    WebSocket(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("unexpected reply: {0}")]
    Protocol(String),
    #[error("udp: {0}")]
    Io(#[from] std::io::Error),
    #[error("media file: {0}")]
    Media(#[from] MediaFileError),
    #[error("srtp: {0}")]
    Srtp(#[from] super::srtp::SrtpError),
    #[error("{0}")]
    Failed(&'static str),
}

/// What the client sends.
#[derive(Debug, Clone)]
pub enum Source {
    /// A looped one-second Opus tone.
    Tone,
    /// An Ogg Opus or IVF (VP8, VP9, AV1) file, looped.
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/socket/websocket`.
    pub url: String,
    pub call: String,
    pub token: String,
    pub send: Option<Source>,
    pub receive: bool,
    /// Codecs it can receive (default: every ArcRTC codec).
    pub codecs: Vec<String>,
    /// Stop after this long (default: until the call ends).
    pub duration: Option<Duration>,
    /// Send media here instead of the node's endpoint (a relay, a NAT).
    pub endpoint: Option<SocketAddr>,
    /// Jitter buffer target (docs/arcrtc.md §5.3: 20 ms).
    pub jitter_delay: Duration,
    /// NACK what is missing (off: losses stay losses; for comparisons).
    pub nack: bool,
}

impl ClientConfig {
    pub fn new(url: &str, call: &str, token: &str) -> ClientConfig {
        ClientConfig {
            url: url.to_string(),
            call: call.to_string(),
            token: token.to_string(),
            send: None,
            receive: true,
            codecs: super::codec::CODECS
                .iter()
                .map(|c| c.name.to_string())
                .collect(),
            duration: None,
            endpoint: None,
            jitter_delay: Duration::from_millis(20),
            nack: true,
        }
    }
}

/// One received track over one second (or over the whole run, in [`Summary`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct TrackStats {
    pub ssrc: u32,
    pub track_id: Option<u64>,
    pub user_id: Option<String>,
    pub codec: Option<String>,
    pub packets: u64,
    pub lost: u64,
    pub recovered: u64,
    pub late: u64,
    pub duplicates: u64,
    pub nacks_sent: u64,
    pub jitter_ms: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub target_delay_ms: f64,
}

/// What `on_second` gets.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub elapsed_s: u64,
    pub sent_packets: u64,
    pub resent_packets: u64,
    pub srtp_failures: u64,
    pub tracks: Vec<TrackStats>,
}

/// The whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub session_id: u32,
    pub sent_packets: u64,
    pub resent_packets: u64,
    pub srtp_failures: u64,
    pub keyframe_requests: u64,
    pub tracks: Vec<TrackStats>,
    /// Every one-way latency measured, in ms (for benchmarks).
    #[serde(skip)]
    pub latencies_ms: Vec<f64>,
    /// Why it stopped: `duration`, `call_end`, `bye`, `closed`.
    pub ended: String,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    Some(sorted[i.min(sorted.len() - 1)])
}

/// A received track: its jitter buffer and what is known of it.
struct Incoming {
    receiver: Receiver,
    video: bool,
    stats: TrackStats,
    all_latencies: Vec<f64>,
}

impl Incoming {
    fn fold(&mut self) -> TrackStats {
        let i = self.receiver.take_interval();
        let mut lat = i.latency_ms.clone();
        lat.sort_by(f64::total_cmp);
        self.all_latencies.extend_from_slice(&i.latency_ms);
        let s = &mut self.stats;
        s.packets += i.received;
        s.lost += i.lost;
        s.recovered += i.recovered;
        s.late += i.late;
        s.duplicates += i.duplicates;
        s.nacks_sent += i.nacks_sent;
        s.jitter_ms = i.jitter_ms;
        s.target_delay_ms = i.target_delay_ms;
        TrackStats {
            ssrc: s.ssrc,
            track_id: s.track_id,
            user_id: s.user_id.clone(),
            codec: s.codec.clone(),
            packets: i.received,
            lost: i.lost,
            recovered: i.recovered,
            late: i.late,
            duplicates: i.duplicates,
            nacks_sent: i.nacks_sent,
            jitter_ms: i.jitter_ms,
            latency_p50_ms: quantile(&lat, 0.5),
            latency_p99_ms: quantile(&lat, 0.99),
            latency_max_ms: lat.last().copied(),
            target_delay_ms: i.target_delay_ms,
        }
    }

    fn total(&self) -> TrackStats {
        let mut lat = self.all_latencies.clone();
        lat.sort_by(f64::total_cmp);
        TrackStats {
            latency_p50_ms: quantile(&lat, 0.5),
            latency_p99_ms: quantile(&lat, 0.99),
            latency_max_ms: lat.last().copied(),
            ..self.stats.clone()
        }
    }
}

/// The track this client publishes: frames to send, paced in real time.
struct Outgoing {
    codec: &'static ArcCodec,
    ssrc: u32,
    frames: Vec<super::media_file::Frame>,
    next_frame: usize,
    seq: u16,
    timestamp: u32,
    /// When the next frame is due.
    due: Instant,
    /// Sent packets for NACKs: (sequence number, when, protected bytes).
    sent: VecDeque<(u16, Instant, Vec<u8>)>,
    /// Splits video frames into RTP payloads (the codec's payload format);
    /// Opus packets go one per RTP packet.
    payloader: Option<Box<dyn Payloader>>,
}

fn payloader(codec: &str) -> Option<Box<dyn Payloader>> {
    use rtc_rtp::codec::{av1::Av1Payloader, vp8::Vp8Payloader, vp9::Vp9Payloader};
    match codec {
        "vp8" => Some(Box::new(Vp8Payloader::default())),
        "vp9" => Some(Box::new(Vp9Payloader::default())),
        "av1" => Some(Box::new(Av1Payloader::default())),
        _ => None,
    }
}

fn load(source: &Source) -> Result<MediaFile, ClientError> {
    Ok(match source {
        Source::Tone => MediaFile::parse(TONE)?,
        Source::File(path) => MediaFile::read(path)?,
    })
}

/// The Phoenix side: join, requests with replies, pushes.
struct Signaling {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    topic: String,
    next_ref: u64,
    pushes: VecDeque<(String, Value)>,
}

impl Signaling {
    async fn send(&mut self, event: &str, payload: Value) -> Result<String, ClientError> {
        self.next_ref += 1;
        let r = self.next_ref.to_string();
        let (topic, join_ref) = if event == "heartbeat" {
            ("phoenix".to_string(), Value::Null)
        } else {
            (self.topic.clone(), json!("1"))
        };
        let frame = json!([join_ref, r, topic, event, payload]).to_string();
        self.ws
            .send(Message::text(frame))
            .await
            .map_err(|e| ClientError::WebSocket(e.to_string()))?;
        Ok(r)
    }

    /// One frame: `(ref, event, payload)`; `None` when the socket closed.
    async fn next(&mut self) -> Result<Option<(Option<String>, String, Value)>, ClientError> {
        loop {
            let Some(m) = self.ws.next().await else {
                return Ok(None);
            };
            let m = m.map_err(|e| ClientError::WebSocket(e.to_string()))?;
            let Message::Text(text) = m else {
                if matches!(m, Message::Close(_)) {
                    return Ok(None);
                }
                continue;
            };
            let f: Value = serde_json::from_str(text.as_str())
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let r = f[1].as_str().map(str::to_string);
            let event = f[3].as_str().unwrap_or_default().to_string();
            return Ok(Some((r, event, f[4].clone())));
        }
    }

    /// Send a request and wait for its reply, keeping pushes for later.
    async fn request(&mut self, event: &str, payload: Value) -> Result<Value, ClientError> {
        let r = self.send(event, payload).await?;
        loop {
            let (got, ev, payload) = self
                .next()
                .await?
                .ok_or(ClientError::Failed("the WebSocket closed"))?;
            if ev == "phx_reply" && got.as_deref() == Some(r.as_str()) {
                return match payload["status"].as_str() {
                    Some("ok") => Ok(payload["response"].clone()),
                    _ => Err(ClientError::Refused(
                        payload["response"]["reason"]
                            .as_str()
                            .map_or_else(|| payload["response"].to_string(), str::to_string),
                    )),
                };
            }
            if ev != "phx_reply" {
                self.pushes.push_back((ev, payload));
            }
        }
    }
}

/// Remember a track announced in the reply or by `arc_track_added`, by SSRC.
fn note_track(known: &mut HashMap<u32, Value>, t: &Value) {
    if let Some(ssrc) = t["ssrc"].as_u64() {
        known.insert(ssrc as u32, t.clone());
    }
}

fn ws_url(config: &ClientConfig) -> String {
    let sep = if config.url.contains('?') { '&' } else { '?' };
    format!("{}{sep}vsn=2.0.0&token={}", config.url, config.token)
}

/// The node endpoint to use: the one on the host the WebSocket went to, else
/// the node's first choice.
fn pick_endpoint(reply: &Value, ws_host: Option<IpAddr>) -> Option<SocketAddr> {
    let parse = |v: &Value| -> Option<SocketAddr> {
        let ip: IpAddr = v["host"].as_str()?.parse().ok()?;
        Some(SocketAddr::new(
            ip,
            u16::try_from(v["port"].as_u64()?).ok()?,
        ))
    };
    let all: Vec<SocketAddr> = reply["endpoints"]
        .as_array()
        .map(|l| l.iter().filter_map(parse).collect())
        .unwrap_or_default();
    ws_host
        .and_then(|h| all.iter().find(|a| a.ip() == h).copied())
        .or_else(|| parse(&reply["endpoint"]))
}

/// Run one client until `config.duration` passes or the call ends; `on_second`
/// gets the statistics every second.
pub async fn run(
    config: ClientConfig,
    mut on_second: impl FnMut(&Second),
) -> Result<Summary, ClientError> {
    let media = config.send.as_ref().map(load).transpose()?;
    let (ws, _) = tokio_tungstenite::connect_async(ws_url(&config))
        .await
        .map_err(|e| ClientError::WebSocket(e.to_string()))?;
    let mut sig = Signaling {
        ws,
        topic: format!("signaling:call:{}", config.call),
        next_ref: 0,
        pushes: VecDeque::new(),
    };
    sig.request("phx_join", json!({})).await?;
    let publish: Vec<Value> = media
        .iter()
        .map(|m| {
            let kind = if m.codec == "opus" { "audio" } else { "video" };
            json!({"kind": kind, "codec": m.codec})
        })
        .collect();
    let reply = sig
        .request(
            "arc_join",
            json!({"version": 1, "codecs": config.codecs, "publish": publish,
                   "srtp": [Profile::AeadAes128Gcm.name(), Profile::AesCm128HmacSha1_80.name()],
                   "receive": config.receive}),
        )
        .await?;
    let bad = |what: &'static str| ClientError::Protocol(format!("arc_join reply: {what}"));
    let profile = reply["srtp"]["profile"]
        .as_str()
        .and_then(Profile::from_name)
        .ok_or(bad("srtp.profile"))?;
    let client_keys = Keys::from_json(&reply["srtp"]["client"])?;
    let node_keys = Keys::from_json(&reply["srtp"]["node"])?;
    let mut srtp = Session::new(profile, &client_keys, &node_keys)?;
    let rtcp_ssrc = reply["rtcp_ssrc"].as_u64().ok_or(bad("rtcp_ssrc"))? as u32;
    let ws_host = url_host(&config.url);
    let endpoint = config
        .endpoint
        .or_else(|| pick_endpoint(&reply, ws_host))
        .ok_or(bad("endpoint"))?;
    let bind: SocketAddr = if endpoint.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let udp = UdpSocket::bind(bind).await?;
    udp.connect(endpoint).await?;

    let mut out = match (media, reply["publish"].get(0)) {
        (Some(m), Some(track)) => {
            let codec = ArcCodec::by_name(m.codec).ok_or(bad("publish.codec"))?;
            Some(Outgoing {
                codec,
                ssrc: track["ssrc"].as_u64().ok_or(bad("publish.ssrc"))? as u32,
                frames: m.frames,
                next_frame: 0,
                seq: rand::random_range(0..32_768),
                timestamp: rand::random(),
                due: Instant::now(),
                sent: VecDeque::new(),
                payloader: payloader(codec.name),
            })
        }
        _ => None,
    };
    let mut known: HashMap<u32, Value> = HashMap::new();
    if let Some(list) = reply["receive"].as_array() {
        for t in list {
            note_track(&mut known, t);
        }
    }

    let mut summary = Summary {
        session_id: rtcp_ssrc,
        ..Summary::default()
    };
    let mut incoming: HashMap<u32, Incoming> = HashMap::new();
    let started = Instant::now();
    let stop_at = config.duration.map(|d| started + d);
    let mut flowing = false;
    let mut sending = false;
    let mut bye = false;
    let timeout = Duration::from_secs(reply["timeout_s"].as_u64().unwrap_or(10));
    let mut rtt = RTT_MAX;
    let mut last_hello: Option<Instant> = None;
    let mut heard = Instant::now();
    let mut last_sent = Instant::now();
    let mut next_second = started + Duration::from_secs(1);
    let mut next_heartbeat = started + Duration::from_secs(20);
    let mut second_sent = 0u64;
    let mut second_resent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut buf = vec![0u8; 2048];

    let send = |udp: &UdpSocket, bytes: &[u8]| {
        // UDP: a full buffer is a loss like any other.
        let _ = udp.try_send(bytes);
    };

    let ended = loop {
        // Pushes that arrived while waiting for replies.
        let mut call_ended = false;
        while let Some((event, payload)) = sig.pushes.pop_front() {
            match event.as_str() {
                "arc_track_added" => note_track(&mut known, &payload),
                "call_end" => call_ended = true,
                _ => {}
            }
        }
        if call_ended {
            break "call_end";
        }
        tokio::select! {
            r = udp.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                let at = Instant::now();
                let data = &buf[..n];
                match classify(data) {
                    Some(Packet::Rtp { .. }) => {
                        let Ok(clear) = srtp.unprotect_rtp(data) else {
                            summary.srtp_failures += 1;
                            continue;
                        };
                        heard = at;
                        flowing = true;
                        let Some(p) = Rtp::parse(&clear) else { continue };
                        let new = !incoming.contains_key(&p.ssrc);
                        let track = incoming.entry(p.ssrc).or_insert_with(|| {
                            let clock = ArcCodec::by_pt(p.pt).map_or(90_000, |c| c.clock_rate);
                            Incoming {
                                receiver: Receiver::new(clock, config.jitter_delay),
                                video: clock == 90_000,
                                stats: TrackStats { ssrc: p.ssrc, ..TrackStats::default() },
                                all_latencies: Vec::new(),
                            }
                        });
                        if track.stats.track_id.is_none() && let Some(t) = known.get(&p.ssrc) {
                            track.stats.track_id = t["track_id"].as_u64();
                            track.stats.user_id = t["user_id"].as_str().map(str::to_string);
                            track.stats.codec = t["codec"].as_str().map(str::to_string);
                        }
                        track.receiver.on_packet(
                            p.seq, p.timestamp, p.marker, Arc::from(&p.payload[..]), at,
                            p.ext.send_time, now_us(),
                        );
                        if new && track.video {
                            // A decoder starts at a keyframe: ask for one.
                            let pli = srtp.protect_rtcp(&rtp::keyframe_request(rtcp_ssrc, p.ssrc, None))?;
                            send(&udp, &pli);
                        }
                    }
                    Some(Packet::Rtcp { .. }) => {
                        let Ok(clear) = srtp.unprotect_rtcp(data) else {
                            summary.srtp_failures += 1;
                            continue;
                        };
                        heard = at;
                        if !flowing {
                            // The node answers the hello at once: one round trip.
                            flowing = true;
                            if let Some(sent) = last_hello {
                                rtt = at.duration_since(sent).clamp(RTT_MIN, RTT_MAX);
                            }
                        }
                        for p in rtp::parse_rtcp(&clear).unwrap_or_default() {
                            match p {
                                Rtcp::Nack { media, mut lost } => {
                                    let Some(o) = out.as_ref().filter(|o| o.ssrc == media) else { continue };
                                    lost.sort_unstable();
                                    lost.dedup();
                                    let again = lost.iter().filter_map(|seq| {
                                        o.sent.iter().find(|(s, sent, _)| s == seq && at.duration_since(*sent) <= RESEND_WINDOW)
                                    });
                                    for (_, _, bytes) in again.take(MAX_RESEND_PER_NACK) {
                                        send(&udp, bytes);
                                        second_resent += 1;
                                        summary.resent_packets += 1;
                                    }
                                }
                                Rtcp::Pli { .. } | Rtcp::Fir { .. } => summary.keyframe_requests += 1,
                                Rtcp::Bye => bye = true,
                                Rtcp::Report { .. } => {}
                            }
                        }
                    }
                    None => {}
                }
                if bye {
                    break "bye";
                }
            }
            m = sig.next() => match m? {
                None => break "closed",
                Some((_, event, payload)) => match event.as_str() {
                    "arc_track_added" => note_track(&mut known, &payload),
                    "call_end" => break "call_end",
                    _ => {}
                },
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if stop_at.is_some_and(|s| now >= s) {
                    break "duration";
                }
                if !flowing {
                    if now.duration_since(started) > HELLO_FOR {
                        return Err(ClientError::Failed("the node never answered the hello (UDP blocked?)"));
                    }
                    if last_hello.is_none_or(|l| now.duration_since(l) >= HELLO_EVERY) {
                        let hello = srtp.protect_rtcp(&rtp::receiver_report(rtcp_ssrc, Vec::new()))?;
                        send(&udp, &hello);
                        last_hello = Some(now);
                        last_sent = now;
                    }
                } else if now.duration_since(heard) > timeout {
                    return Err(ClientError::Failed("the node went silent (timeout)"));
                }
                // Media, paced: every frame whose time has come.
                if flowing && let Some(o) = out.as_mut() {
                    if !sending {
                        sending = true;
                        o.due = now;
                    }
                    // Far behind (a stalled process): skip ahead, do not burst.
                    if now.duration_since(o.due) > Duration::from_millis(200) {
                        o.due = now;
                    }
                    while o.due <= now {
                        let frame = &o.frames[o.next_frame];
                        // A file may give a frame no duration: one 20 ms / 30 fps frame.
                        let duration = match frame.duration {
                            0 => o.codec.clock_rate / if o.codec.clock_rate == 48_000 { 50 } else { 30 },
                            d => d,
                        };
                        let data = Bytes::copy_from_slice(&frame.data);
                        let payloads = match o.payloader.as_mut() {
                            Some(p) => p.payload(MTU_PAYLOAD, &data).unwrap_or_default(),
                            None => vec![data],
                        };
                        let last = payloads.len().saturating_sub(1);
                        for (i, payload) in payloads.into_iter().enumerate() {
                            let video = o.codec.kind == str0m::media::MediaKind::Video;
                            let hints = (video || o.next_frame == 0).then(|| Hints {
                                quality: 2,
                                priority: if video { 2 } else { 3 },
                                keyframe: frame.keyframe && i == 0 && video,
                                bandwidth_kbps: if video { 1000 } else { 32 },
                            }.encode());
                            let packet = Rtp {
                                pt: o.codec.pt,
                                seq: o.seq,
                                timestamp: o.timestamp,
                                ssrc: o.ssrc,
                                // Video: the frame's last packet. Audio: a talk spurt's first.
                                marker: if video { i == last } else { summary.sent_packets == 0 },
                                ext: ArcExt { hints, send_time: Some(now_us()) },
                                payload,
                            };
                            let bytes = srtp.protect_rtp(&packet.to_bytes())?;
                            send(&udp, &bytes);
                            while o.sent.len() >= RESEND_PACKETS
                                || o.sent.front().is_some_and(|(_, t, _)| now.duration_since(*t) > RESEND_WINDOW)
                            {
                                o.sent.pop_front();
                            }
                            o.sent.push_back((o.seq, now, bytes));
                            o.seq = o.seq.wrapping_add(1);
                            second_sent += 1;
                            summary.sent_packets += 1;
                        }
                        o.timestamp = o.timestamp.wrapping_add(duration);
                        o.due += Duration::from_secs_f64(f64::from(duration) / f64::from(o.codec.clock_rate));
                        o.next_frame = (o.next_frame + 1) % o.frames.len();
                        last_sent = now;
                    }
                }
                // Receivers: play out, NACK what is missing.
                for (ssrc, track) in &mut incoming {
                    track.receiver.pop_ready(now);
                    let lost = if config.nack { track.receiver.nacks_due(now, rtt) } else { Vec::new() };
                    if !lost.is_empty() {
                        let nack = srtp.protect_rtcp(&rtp::nack(rtcp_ssrc, *ssrc, &lost))?;
                        send(&udp, &nack);
                        last_sent = now;
                    }
                }
                if flowing && now.duration_since(last_sent) >= KEEPALIVE {
                    let rr = srtp.protect_rtcp(&rtp::receiver_report(rtcp_ssrc, Vec::new()))?;
                    send(&udp, &rr);
                    last_sent = now;
                }
                if now >= next_heartbeat {
                    sig.send("heartbeat", json!({})).await?;
                    next_heartbeat = now + Duration::from_secs(20);
                }
                if now >= next_second {
                    next_second += Duration::from_secs(1);
                    let mut tracks = Vec::new();
                    for (ssrc, track) in &mut incoming {
                        let stats = track.fold();
                        if track.video && stats.lost > 0 {
                            // Video given up on: the decoder needs a keyframe.
                            let pli = srtp.protect_rtcp(&rtp::keyframe_request(rtcp_ssrc, *ssrc, None))?;
                            send(&udp, &pli);
                        }
                        tracks.push(stats);
                    }
                    tracks.sort_by_key(|t| t.ssrc);
                    on_second(&Second {
                        elapsed_s: now.duration_since(started).as_secs(),
                        sent_packets: std::mem::take(&mut second_sent),
                        resent_packets: std::mem::take(&mut second_resent),
                        srtp_failures: summary.srtp_failures,
                        tracks,
                    });
                }
            }
        }
    };
    // Leave: tell the node on both paths (the BYE may be lost; arc_leave is not).
    if let Ok(bye) = srtp.protect_rtcp(&rtp::bye(rtcp_ssrc)) {
        send(&udp, &bye);
    }
    if ended != "closed" {
        let _ = sig.request("arc_leave", json!({})).await;
        let _ = sig.ws.close(None).await;
    }
    for t in incoming.values_mut() {
        t.fold();
    }
    summary.tracks = incoming.values().map(Incoming::total).collect();
    summary.tracks.sort_by_key(|t| t.ssrc);
    summary.latencies_ms = incoming
        .values()
        .flat_map(|t| t.all_latencies.iter().copied())
        .collect();
    summary.ended = ended.to_string();
    Ok(summary)
}

/// The IP of the WebSocket URL's host, when it is an IP literal or resolves locally.
fn url_host(url: &str) -> Option<IpAddr> {
    let rest = url.split("://").nth(1)?;
    let authority = rest.split('/').next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host == "localhost" {
        return Some(IpAddr::from([127, 0, 0, 1]));
    }
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_on_the_websocket_host_is_preferred() {
        let reply = json!({
            "endpoint": {"host": "10.0.0.5", "port": 5000},
            "endpoints": [{"host": "10.0.0.5", "port": 5000}, {"host": "127.0.0.1", "port": 5000}],
        });
        let ws = url_host("ws://127.0.0.1:4000/socket/websocket");
        assert_eq!(
            pick_endpoint(&reply, ws),
            Some("127.0.0.1:5000".parse().unwrap())
        );
        let ws = url_host("ws://node.example:4000/socket/websocket");
        assert_eq!(ws, None);
        assert_eq!(
            pick_endpoint(&reply, ws),
            Some("10.0.0.5:5000".parse().unwrap())
        );
        assert_eq!(
            url_host("ws://localhost/x"),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
        assert_eq!(url_host("ws://[::1]:4000/x"), "::1".parse().ok());
    }

    #[test]
    fn the_tone_is_a_second_of_opus() {
        let tone = load(&Source::Tone).unwrap();
        assert_eq!(tone.codec, "opus");
        let ticks: u32 = tone.frames.iter().map(|f| f.duration).sum();
        assert!((48_000..=49_000).contains(&ticks), "{ticks}");
    }
}
