//! ArcPeer: one ArcRTC participant of a call (docs/arcrtc.md). It speaks the
//! same [`PeerMsg`] language as a WebRTC [`Peer`](crate::calls::peer::Peer), so
//! the Call wires publishers and subscribers of either kind together (the bridge).
//!
//! What it does with a datagram the ArcRTC socket routed to it by SSRC: check
//! it with the client's SRTP keys (nothing else happens to a packet that fails),
//! learn the client's address from it, then publish RTP as one
//! `Arc<Forwarded>` per packet to the track's subscribers, or act on RTCP
//! (NACK → resend from the per-track buffer; PLI/FIR → the publisher; BYE → end).
//! What it subscribes to it writes with its own SSRC per track, the ArcRTC
//! payload type of the codec, sequence numbers rebased, protected with the
//! node's keys, and kept one second for NACKs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use rtc_rtcp::reception_report::ReceptionReport;
use serde_json::{Value, json};
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::rtp::ExtensionValues;

use super::codec::ArcCodec;
use super::rtp::{self, Rtcp, Rtp};
use super::srtp::{Keys, Session};
use super::wire::{HINTS_URI, Packet, SEND_TIME_URI, classify};
use crate::actors::call::CallMsg;
use crate::calls::net::Inbox;
use crate::calls::peer::media::{SeqMap, add_subscriber, client_muted, fan_out, merge_keyframe};
use crate::calls::peer::{Forwarded, MAX_PUBLISHED, PeerMsg, Subscriber};
use crate::calls::{ArcJoin, CallError, Calls, SignalTarget, TrackId, TrackInfo, kind_name};

pub struct ArcPeer;

pub struct ArcPeerArgs {
    pub backlog: Arc<AtomicUsize>,
    pub traffic: Arc<crate::calls::Traffic>,
    pub participant: Arc<str>,
    pub user_id: Arc<str>,
    pub call: ActorRef<CallMsg>,
    pub calls: Arc<Calls>,
    pub signal: SignalTarget,
    pub join: ArcJoin,
}

/// How often the session checks timeouts, keep-alives and NACK retries.
const TICK: Duration = Duration::from_millis(10);
/// A side that sent nothing for this long sends a receiver report.
const KEEPALIVE: Duration = Duration::from_secs(1);
/// What the node keeps of each stream it sends, for NACKs (§5.3).
const RESEND_WINDOW: Duration = Duration::from_secs(1);
const RESEND_PACKETS: usize = 1024;
/// NACKs for one missing packet: at most this many, one round trip apart
/// (measured from NACK to retransmission; this until measured, and within bounds).
const NACK_TRIES: u8 = 3;
const RTT_INITIAL: Duration = Duration::from_millis(10);
const RTT_MIN: Duration = Duration::from_millis(5);
const RTT_MAX: Duration = Duration::from_millis(200);
/// A jump in sequence numbers larger than this is a restart, not a loss.
const MAX_GAP: u64 = 512;

/// A track the client publishes.
struct Published {
    id: TrackId,
    codec: &'static ArcCodec,
    params: PayloadParams,
    /// The SSRC the node assigned to it.
    ssrc: u32,
    mid: Mid,
    subscribers: Vec<Subscriber>,
    /// Highest extended sequence number received, and the first.
    highest: Option<u64>,
    first: u64,
    received: u64,
    /// Missing packets: when they were last NACKed, and how often.
    missing: BTreeMap<u64, (Instant, u8)>,
    /// RFC 3550 interarrival jitter, in RTP clock units, and the last
    /// packet's arrival (in RTP clock units) and timestamp.
    jitter: f64,
    last: Option<(f64, u32)>,
    last_keyframe_request: Option<Instant>,
    keyframe_due: Option<KeyframeRequestKind>,
    fir_seq: u8,
}

/// A track the client receives.
struct Subscribed {
    info: Arc<TrackInfo>,
    /// The node's SSRC for it on this session.
    ssrc: u32,
    seq: SeqMap,
    /// What was sent, protected, for NACKs.
    sent: VecDeque<Sent>,
}

/// A packet sent to the client, kept for NACKs.
struct Sent {
    seq: u16,
    at: Instant,
    bytes: Vec<u8>,
    /// When it was last sent again.
    resent: Option<Instant>,
}

/// Packets one NACK may have sent again (a NACK can name thousands).
const MAX_RESEND_PER_NACK: usize = 64;

pub struct ArcState {
    myself: ActorRef<PeerMsg>,
    backlog: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    traffic: Arc<crate::calls::Traffic>,
    participant: Arc<str>,
    user_id: Arc<str>,
    call: ActorRef<CallMsg>,
    calls: Arc<Calls>,
    signal: SignalTarget,
    inbox: Inbox,
    /// The client's RTCP SSRC (also the session id) and the node's.
    rtcp_ssrc: u32,
    node_ssrc: u32,
    profile: super::srtp::Profile,
    client_keys: Keys,
    node_keys: Keys,
    srtp: Session,
    codecs: Vec<&'static ArcCodec>,
    receive: bool,
    /// (our socket as announced, the client) once a packet authenticated.
    path: Option<(SocketAddr, SocketAddr)>,
    heard: Instant,
    sent: Instant,
    /// Round trip to the client, smoothed (RFC 6298 style, 1/8 gain).
    rtt: Duration,
    published: Vec<Published>,
    subscribed: HashMap<TrackId, Subscribed>,
    by_ssrc: HashMap<u32, TrackId>,
    /// The `arc_join` reply is out: later tracks are pushed.
    replied: bool,
    epoch: Instant,
    ticker: tokio::task::JoinHandle<()>,
    ending: Option<&'static str>,
}

/// The extended sequence number of `seq`, nearest to `highest`.
fn extend(highest: Option<u64>, seq: u16) -> u64 {
    let Some(h) = highest else {
        return u64::from(seq);
    };
    let candidate = (h & !0xffff) | u64::from(seq);
    [
        candidate.checked_sub(0x1_0000),
        Some(candidate),
        Some(candidate + 0x1_0000),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|c| c.abs_diff(h))
    .unwrap_or(candidate)
}

impl ArcState {
    fn dropped(&self, why: &str) {
        self.calls
            .metrics
            .rtc_dropped
            .with_label_values(&[why])
            .inc();
    }

    /// Protect and send to the client (nothing before its address is known).
    fn send(&mut self, clear: &[u8], rtcp: bool) -> Option<Vec<u8>> {
        let (local, remote) = self.path?;
        let protected = if rtcp {
            self.srtp.protect_rtcp(clear)
        } else {
            self.srtp.protect_rtp(clear)
        };
        match protected {
            Ok(bytes) => {
                self.traffic.sent(bytes.len());
                self.calls.arc.send(local, remote, &bytes);
                self.sent = Instant::now();
                Some(bytes)
            }
            Err(e) => {
                tracing::debug!(participant = %self.participant, error = %e, "ArcRTC packet not protected");
                None
            }
        }
    }

    fn add_track(&mut self, codec: &'static ArcCodec) -> Result<Value, CallError> {
        if self.published.len() >= MAX_PUBLISHED {
            return Err(CallError::ArcRefused(format!(
                "too many tracks (at most {MAX_PUBLISHED})"
            )));
        }
        let id = crate::calls::next_track_id();
        let ssrc = self.calls.arc.assign_ssrc(&self.inbox);
        let mid = Mid::from(format!("arc{id}").as_str());
        self.published.push(Published {
            id,
            codec,
            params: codec.params(),
            ssrc,
            mid,
            subscribers: Vec::new(),
            highest: None,
            first: 0,
            received: 0,
            missing: BTreeMap::new(),
            jitter: 0.0,
            last: None,
            last_keyframe_request: None,
            keyframe_due: None,
            fir_seq: 0,
        });
        self.calls.metrics.rtc_tracks.inc();
        let _ = self.call.cast(CallMsg::Published(TrackInfo {
            id,
            participant: self.participant.clone(),
            user_id: self.user_id.clone(),
            kind: codec.kind,
            mid,
            codec: Some(codec),
            publisher: self.myself.clone(),
        }));
        Ok(
            json!({"track_id": id, "kind": kind_name(codec.kind), "codec": codec.name,
                  "pt": codec.pt, "ssrc": ssrc}),
        )
    }

    fn remove_track(&mut self, id: TrackId) -> Result<Value, CallError> {
        let at = self
            .published
            .iter()
            .position(|p| p.id == id)
            .ok_or(CallError::NoSuchTrack)?;
        let p = self.published.remove(at);
        self.calls.arc.release_ssrc(p.ssrc, self.myself.get_id());
        self.calls.metrics.rtc_tracks.dec();
        let _ = self.call.cast(CallMsg::Unpublished(p.id));
        Ok(json!({}))
    }

    fn track_json(&self, s: &Subscribed) -> Value {
        let info = &s.info;
        json!({
            "track_id": info.id,
            "participant_id": info.participant,
            "user_id": info.user_id,
            "kind": kind_name(info.kind),
            "codec": info.codec.map(|c| c.name),
            "pt": info.codec.map(|c| c.pt),
            "ssrc": s.ssrc,
        })
    }

    fn join_reply(&mut self) -> Value {
        self.replied = true;
        let endpoints = self.calls.arc.endpoints();
        let endpoint = |a: &SocketAddr| json!({"host": a.ip().to_string(), "port": a.port()});
        let publish: Vec<Value> = self
            .published
            .iter()
            .map(|p| {
                json!({"track_id": p.id, "kind": kind_name(p.codec.kind), "codec": p.codec.name,
                       "pt": p.codec.pt, "ssrc": p.ssrc})
            })
            .collect();
        let receive: Vec<Value> = self
            .subscribed
            .values()
            .map(|s| self.track_json(s))
            .collect();
        json!({
            "session_id": self.rtcp_ssrc,
            "endpoint": endpoints.first().map(endpoint),
            "endpoints": endpoints.iter().map(endpoint).collect::<Vec<_>>(),
            "srtp": {
                "profile": self.profile.name(),
                "client": self.client_keys.to_json(),
                "node": self.node_keys.to_json(),
            },
            "rtcp_ssrc": self.rtcp_ssrc,
            "node_ssrc": self.node_ssrc,
            "timeout_s": self.calls.config.arc_timeout_s,
            "publish": publish,
            "receive": receive,
            "extensions": {"1": HINTS_URI, "2": SEND_TIME_URI},
        })
    }

    fn subscribe(&mut self, info: Arc<TrackInfo>) {
        if !self.receive || self.subscribed.contains_key(&info.id) {
            return;
        }
        let ssrc = loop {
            let s: u32 = rand::random();
            if s != 0 && s != self.node_ssrc && !self.by_ssrc.contains_key(&s) {
                break s;
            }
        };
        self.by_ssrc.insert(ssrc, info.id);
        let sub = Subscribed {
            info: info.clone(),
            ssrc,
            seq: SeqMap::default(),
            sent: VecDeque::new(),
        };
        if self.replied {
            self.signal.push("arc_track_added", &self.track_json(&sub));
        }
        self.subscribed.insert(info.id, sub);
        if self.path.is_some() {
            want_keyframe(&info);
        }
    }

    fn unsubscribe(&mut self, id: TrackId) {
        if let Some(s) = self.subscribed.remove(&id) {
            self.by_ssrc.remove(&s.ssrc);
            if self.replied {
                self.signal
                    .push("arc_track_removed", &json!({"track_id": id}));
            }
        }
    }

    /// A packet of a track we receive: rewrite, protect, send, keep for NACKs.
    fn forward(&mut self, f: &Forwarded) {
        if self.path.is_none() {
            return;
        }
        let Some(codec) = ArcCodec::of(&f.params).filter(|c| self.codecs.contains(c)) else {
            self.dropped("codec");
            return;
        };
        let Some(sub) = self.subscribed.get_mut(&f.track) else {
            return;
        };
        let Some(seq) = sub.seq.out(f.ssrc, f.seq) else {
            return;
        };
        let packet = Rtp {
            pt: codec.pt,
            seq: seq as u16,
            timestamp: f.time,
            ssrc: sub.ssrc,
            marker: f.marker,
            ext: f.arc,
            payload: Bytes::copy_from_slice(&f.payload),
        };
        let track = f.track;
        let Some(bytes) = self.send(&packet.to_bytes(), false) else {
            return;
        };
        let now = Instant::now();
        if let Some(sub) = self.subscribed.get_mut(&track) {
            while sub.sent.len() >= RESEND_PACKETS
                || sub
                    .sent
                    .front()
                    .is_some_and(|p| now.duration_since(p.at) > RESEND_WINDOW)
            {
                sub.sent.pop_front();
            }
            sub.sent.push_back(Sent {
                seq: seq as u16,
                at: now,
                bytes,
                resent: None,
            });
        }
        let m = &self.calls.metrics;
        m.rtc_packets_forwarded.inc();
        m.rtc_bytes_forwarded.inc_by(f.payload.len() as u64);
    }

    fn receive(&mut self, data: &[u8], source: SocketAddr, local: SocketAddr, at: Instant) {
        match classify(data) {
            Some(Packet::Rtp { .. }) => {
                let Ok(clear) = self.srtp.unprotect_rtp(data) else {
                    return self.dropped("srtp");
                };
                let Some(rtp) = Rtp::parse(&clear) else {
                    self.heard(source, local, false);
                    return self.dropped("malformed");
                };
                // A late packet from an old path must not move the session back.
                let newest = self
                    .published
                    .iter()
                    .find(|p| p.ssrc == rtp.ssrc)
                    .is_none_or(|p| p.highest.is_none_or(|h| extend(Some(h), rtp.seq) > h));
                self.heard(source, local, newest);
                self.on_rtp(rtp, at);
            }
            Some(Packet::Rtcp { .. }) => {
                let Ok(clear) = self.srtp.unprotect_rtcp(data) else {
                    return self.dropped("srtp");
                };
                self.heard(source, local, true);
                match rtp::parse_rtcp(&clear) {
                    Some(packets) => packets.into_iter().for_each(|p| self.on_rtcp(p)),
                    None => self.dropped("malformed"),
                }
            }
            None => self.dropped("malformed"),
        }
    }

    /// An authenticated packet from `source`: the session's address from now on
    /// (when `may_move`: the newest packet of its stream, or RTCP).
    fn heard(&mut self, source: SocketAddr, local: SocketAddr, may_move: bool) {
        self.heard = Instant::now();
        let first = self.path.is_none();
        if self.path != Some((local, source)) && (first || may_move) {
            if !first {
                tracing::info!(participant = %self.participant, %source, "ArcRTC client moved");
            }
            self.path = Some((local, source));
        }
        if first {
            // Answer the hello; the media path works: ask for keyframes.
            let rr = rtp::receiver_report(self.node_ssrc, Vec::new());
            self.send(&rr, true);
            for s in self.subscribed.values() {
                want_keyframe(&s.info);
            }
            self.flush_keyframes(Instant::now());
        }
    }

    fn on_rtp(&mut self, rtp: Rtp, at: Instant) {
        let Some(track) = self.published.iter_mut().find(|p| p.ssrc == rtp.ssrc) else {
            return self.dropped("unknown_ssrc");
        };
        if rtp.pt != track.codec.pt {
            return self.dropped("unknown_pt");
        }
        self.calls.metrics.rtc_packets_in.inc();
        let seq = extend(track.highest, rtp.seq);
        track.received += 1;
        let mut lost = Vec::new();
        match track.highest {
            None => track.first = seq,
            Some(h) if seq > h + 1 && seq - h <= MAX_GAP => {
                for s in h + 1..seq {
                    track.missing.insert(s, (at, 1));
                    lost.push(s as u16);
                }
            }
            Some(h) if seq > h + MAX_GAP => {
                // A restart: forget what was missing before it.
                track.missing.clear();
                track.first = seq;
                track.received = 1;
            }
            _ => {
                // A retransmission. Karn's rule: only one NACKed once times a round trip.
                if let Some((nacked, 1)) = track.missing.remove(&seq) {
                    let sample = at.saturating_duration_since(nacked);
                    self.rtt = (self.rtt * 7 + sample) / 8;
                }
            }
        }
        track.highest = Some(track.highest.map_or(seq, |h| h.max(seq)));
        // RFC 3550 §6.4.1 interarrival jitter, in RTP clock units.
        let arrival =
            at.duration_since(self.epoch).as_secs_f64() * f64::from(track.codec.clock_rate);
        if let Some((then, ts)) = track.last.replace((arrival, rtp.timestamp)) {
            // Timestamps wrap: their difference is signed 32-bit.
            let d = (arrival - then) - f64::from(rtp.timestamp.wrapping_sub(ts) as i32);
            track.jitter += (d.abs() - track.jitter) / 16.0;
        }
        let media = track.ssrc;
        if !lost.is_empty() {
            self.calls.metrics.rtc_nacks.inc();
            let nack = rtp::nack(self.node_ssrc, media, &lost);
            self.send(&nack, true);
        }
        let Some(track) = self.published.iter().find(|p| p.ssrc == media) else {
            return;
        };
        if rtp.payload.is_empty() || track.subscribers.is_empty() {
            return;
        }
        let forwarded = Arc::new(Forwarded {
            track: track.id,
            kind: track.codec.kind,
            params: track.params,
            ssrc: rtp.ssrc,
            seq,
            time: rtp.timestamp,
            marker: rtp.marker,
            ext: ExtensionValues::default(),
            arc: rtp.ext,
            payload: Arc::from(&rtp.payload[..]),
            received: at,
        });
        fan_out(&track.subscribers, &forwarded, &self.calls.metrics);
    }

    fn on_rtcp(&mut self, packet: Rtcp) {
        match packet {
            Rtcp::Report { .. } => {}
            Rtcp::Nack { media, mut lost } => {
                let now = Instant::now();
                let rtt = self.rtt.clamp(RTT_MIN, RTT_MAX);
                let (Some(sub), Some((local, remote))) = (
                    self.by_ssrc
                        .get(&media)
                        .and_then(|id| self.subscribed.get_mut(id)),
                    self.path,
                ) else {
                    return;
                };
                self.calls.metrics.rtc_nacks.inc();
                // Each packet once per round trip, younger than the window, a few per NACK.
                lost.sort_unstable();
                lost.dedup();
                let mut resent = 0;
                for seq in lost {
                    if resent == MAX_RESEND_PER_NACK {
                        break;
                    }
                    let Some(p) = sub.sent.iter_mut().find(|p| p.seq == seq) else {
                        continue;
                    };
                    if now.duration_since(p.at) > RESEND_WINDOW
                        || p.resent.is_some_and(|r| now.duration_since(r) < rtt)
                    {
                        continue;
                    }
                    p.resent = Some(now);
                    resent += 1;
                    // The same protected bytes: a new protection would reuse the keystream.
                    self.traffic.sent(p.bytes.len());
                    self.calls.arc.send(local, remote, &p.bytes);
                }
            }
            Rtcp::Pli { media } | Rtcp::Fir { media } => {
                let kind = if matches!(packet, Rtcp::Fir { .. }) {
                    KeyframeRequestKind::Fir
                } else {
                    KeyframeRequestKind::Pli
                };
                if let Some(s) = self
                    .by_ssrc
                    .get(&media)
                    .and_then(|id| self.subscribed.get(id))
                {
                    let _ = s.info.publisher.cast(PeerMsg::Keyframe(s.info.mid, kind));
                }
            }
            Rtcp::Bye => {
                self.ending.get_or_insert("left");
            }
        }
    }

    /// A subscriber wants a keyframe of our track on `mid`.
    fn keyframe(&mut self, mid: Mid, kind: KeyframeRequestKind) {
        if let Some(t) = self.published.iter_mut().find(|p| p.mid == mid)
            && t.codec.kind == MediaKind::Video
        {
            t.keyframe_due = Some(merge_keyframe(t.keyframe_due, kind));
        }
        self.flush_keyframes(Instant::now());
    }

    /// Send the keyframe requests whose time has come (one per track per
    /// `calls.keyframe_interval_ms`).
    fn flush_keyframes(&mut self, now: Instant) {
        if self.path.is_none() {
            // Kept until the client's address is known.
            return;
        }
        let interval = Duration::from_millis(self.calls.config.keyframe_interval_ms);
        let mut out = Vec::new();
        for t in &mut self.published {
            let Some(kind) = t.keyframe_due else {
                continue;
            };
            if t.last_keyframe_request
                .is_some_and(|l| now.duration_since(l) < interval)
            {
                continue;
            }
            t.keyframe_due = None;
            t.last_keyframe_request = Some(now);
            let fir = (kind == KeyframeRequestKind::Fir).then(|| {
                t.fir_seq = t.fir_seq.wrapping_add(1);
                t.fir_seq
            });
            out.push(rtp::keyframe_request(self.node_ssrc, t.ssrc, fir));
        }
        for request in out {
            self.calls.metrics.rtc_keyframe_requests.inc();
            self.send(&request, true);
        }
    }

    fn tick(&mut self, now: Instant) {
        let timeout = Duration::from_secs(self.calls.config.arc_timeout_s);
        if now.duration_since(self.heard) > timeout {
            self.ending.get_or_insert("timeout");
            return;
        }
        self.flush_keyframes(now);
        // NACK again what is still missing, a few times.
        let mut nacks = Vec::new();
        let retry = self.rtt.clamp(RTT_MIN, RTT_MAX);
        for t in &mut self.published {
            let floor = t.highest.unwrap_or(0).saturating_sub(MAX_GAP);
            t.missing
                .retain(|seq, (_, tries)| *seq >= floor && *tries < NACK_TRIES);
            let due: Vec<u16> = t
                .missing
                .iter_mut()
                .filter(|(_, (at, _))| now.duration_since(*at) >= retry)
                .map(|(seq, entry)| {
                    *entry = (now, entry.1 + 1);
                    *seq as u16
                })
                .collect();
            if !due.is_empty() {
                nacks.push(rtp::nack(self.node_ssrc, t.ssrc, &due));
            }
        }
        for nack in nacks {
            self.calls.metrics.rtc_nacks.inc();
            self.send(&nack, true);
        }
        if self.path.is_some() && now.duration_since(self.sent) >= KEEPALIVE {
            let report = rtp::receiver_report(self.node_ssrc, self.reports());
            self.send(&report, true);
        }
    }

    /// Reception report blocks for the tracks the client publishes.
    fn reports(&self) -> Vec<ReceptionReport> {
        self.published
            .iter()
            .filter_map(|t| {
                let highest = t.highest?;
                let expected = highest - t.first + 1;
                let lost = expected.saturating_sub(t.received);
                Some(ReceptionReport {
                    ssrc: t.ssrc,
                    fraction_lost: ((lost * 256) / expected.max(1)).min(255) as u8,
                    total_lost: lost.min(0x7f_ffff) as u32,
                    last_sequence_number: highest as u32,
                    jitter: t.jitter as u32,
                    ..Default::default()
                })
            })
            .collect()
    }
}

fn want_keyframe(info: &TrackInfo) {
    if info.kind == MediaKind::Video {
        let _ = info
            .publisher
            .cast(PeerMsg::Keyframe(info.mid, KeyframeRequestKind::Pli));
    }
}

impl Actor for ArcPeer {
    type Msg = PeerMsg;
    type State = ArcState;
    type Arguments = ArcPeerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        args: ArcPeerArgs,
    ) -> Result<ArcState, ActorProcessingErr> {
        let join = args.join;
        let queued = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox {
            peer: myself.clone(),
            queued: queued.clone(),
        };
        let client_keys = Keys::generate(join.profile)?;
        let node_keys = Keys::generate(join.profile)?;
        let srtp = Session::new(join.profile, &node_keys, &client_keys)?;
        let rtcp_ssrc = args.calls.arc.assign_ssrc(&inbox);
        let ticker = myself.send_interval(TICK, || PeerMsg::Tick);
        let now = Instant::now();
        let mut state = ArcState {
            myself,
            backlog: args.backlog,
            queued,
            traffic: args.traffic,
            participant: args.participant,
            user_id: args.user_id,
            call: args.call,
            calls: args.calls,
            signal: args.signal,
            inbox,
            rtcp_ssrc,
            node_ssrc: rand::random::<u32>().max(1),
            profile: join.profile,
            client_keys,
            node_keys,
            srtp,
            codecs: join.codecs,
            receive: join.receive,
            path: None,
            heard: now,
            sent: now,
            rtt: RTT_INITIAL,
            published: Vec::new(),
            subscribed: HashMap::new(),
            by_ssrc: HashMap::new(),
            replied: false,
            epoch: now,
            ticker,
            ending: None,
        };
        state.calls.metrics.rtc_participants.inc();
        for codec in join.publish {
            state.add_track(codec)?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<PeerMsg>,
        msg: PeerMsg,
        state: &mut ArcState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PeerMsg::Datagram(d) => {
                state.queued.fetch_sub(1, Ordering::Relaxed);
                state.traffic.received(d.data.len());
                state.receive(&d.data, d.source, d.destination, d.at);
            }
            PeerMsg::Tick => state.tick(Instant::now()),
            PeerMsg::Offer(_, reply) | PeerMsg::Candidate(_, reply) => {
                let _ = reply.send(Err(CallError::TransportChosen));
            }
            PeerMsg::Answer { reply, .. } => {
                let _ = reply.send(Err(CallError::TransportChosen));
            }
            PeerMsg::Mute {
                kind,
                mid,
                muted,
                reply,
            } => {
                let tracks = state.published.iter().filter(|t| {
                    kind.is_none_or(|k| k == t.codec.kind)
                        && mid.as_deref().is_none_or(|m| m == t.id.to_string())
                });
                let muted = client_muted(&state.call, tracks.map(|t| t.id), muted);
                let _ = reply.send(muted);
            }
            PeerMsg::Subscribe(info) => state.subscribe(info),
            PeerMsg::Unsubscribe(id) => state.unsubscribe(id),
            PeerMsg::AddSubscriber { mid, subscriber } => {
                if let Some(p) = state.published.iter_mut().find(|p| p.mid == mid) {
                    add_subscriber(&mut p.subscribers, subscriber);
                }
            }
            PeerMsg::RemoveSubscriber(id) => {
                for p in &mut state.published {
                    p.subscribers.retain(|s| s.peer.get_id() != id);
                }
            }
            PeerMsg::Rtp(f) => {
                state.backlog.fetch_sub(1, Ordering::Relaxed);
                state.forward(&f);
                state
                    .calls
                    .metrics
                    .rtc_forward_seconds
                    .observe(f.received.elapsed().as_secs_f64());
            }
            PeerMsg::Keyframe(mid, kind) => state.keyframe(mid, kind),
            PeerMsg::ArcReply(reply) => {
                let _ = reply.send(Ok(state.join_reply()));
            }
            PeerMsg::ArcPublish(codec, reply) => {
                let _ = reply.send(state.add_track(codec));
            }
            PeerMsg::ArcUnpublish(id, reply) => {
                let _ = reply.send(state.remove_track(id));
            }
        }
        if let Some(reason) = state.ending {
            myself.stop(Some(reason.to_string()));
        }
        Ok(())
    }
}

impl Drop for ArcState {
    fn drop(&mut self) {
        self.ticker.abort();
        let bye = rtp::bye(self.node_ssrc);
        self.send(&bye, true);
        let me = self.myself.get_id();
        self.calls.arc.release_ssrc(self.rtcp_ssrc, me);
        for p in &self.published {
            self.calls.arc.release_ssrc(p.ssrc, me);
        }
        self.calls.metrics.rtc_participants.dec();
        self.calls
            .metrics
            .rtc_tracks
            .sub(self.published.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_extend_across_wraps_and_reordering() {
        assert_eq!(extend(None, 65_000), 65_000);
        assert_eq!(extend(Some(65_535), 0), 65_536);
        assert_eq!(extend(Some(65_536), 65_535), 65_535);
        assert_eq!(extend(Some(3 * 65_536 + 10), 9), 3 * 65_536 + 9);
        assert_eq!(extend(Some(100), 90), 90);
    }
}
