//! Peer: one participant of a call — its server-side peer connection (a str0m
//! `Rtc` in RTP mode, ICE-lite) and the tracks it publishes and receives.
//!
//! A child of its Call actor: if it fails, only this participant leaves the call.
//! It publishes by sending each incoming RTP packet, once, as an
//! `Arc<Forwarded>` to the Peers subscribed to that track; it subscribes by
//! adding a send-only m-line per remote track (a server `call_offer`) and writing
//! what arrives there with its own SSRC, the publisher's payload type mapped to
//! its own, sequence numbers rebased to start in the first rollover.
//!
//! str0m's rule: after every change to the `Rtc` (input, write, SDP), poll its
//! output until it gives a timeout. [`PeerState::drain`] does that; the earliest
//! timeout goes to a timer task that sends [`PeerMsg::Tick`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::json;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::PayloadParams;
use str0m::media::{Direction, KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, RtpPacket, SeqNo, Ssrc};
use str0m::{Candidate, Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tokio::sync::watch;

use super::net::{Datagram, Endpoint};
use super::{CallError, Calls, SignalTarget, TrackId, TrackInfo, kind_name, next_track_id};
use crate::actors::call::CallMsg;

pub struct Peer;

pub struct PeerArgs {
    pub participant: Arc<str>,
    pub user_id: Arc<str>,
    pub call: ActorRef<CallMsg>,
    pub calls: Arc<Calls>,
    pub signal: SignalTarget,
}

pub enum PeerMsg {
    Datagram(Datagram),
    Tick,
    Offer(String, RpcReplyPort<Result<(), CallError>>),
    Answer {
        sdp: String,
        offer_id: Option<u64>,
        reply: RpcReplyPort<Result<(), CallError>>,
    },
    Candidate(String, RpcReplyPort<Result<(), CallError>>),
    Mute {
        kind: Option<MediaKind>,
        mid: Option<String>,
        muted: bool,
        reply: RpcReplyPort<Result<(), CallError>>,
    },
    /// Receive this remote track (negotiated with the next server offer).
    Subscribe(Arc<TrackInfo>),
    /// Stop receiving it (its publisher stopped or left).
    Unsubscribe(TrackId),
    /// Send what arrives on my m-line `mid` to `subscriber` too.
    AddSubscriber {
        mid: Mid,
        subscriber: ActorRef<PeerMsg>,
    },
    /// Stop sending anything to this peer.
    RemoveSubscriber(ActorId),
    /// One RTP packet of a track I subscribe to.
    Rtp(Arc<Forwarded>),
    /// A subscriber of my track on `mid` needs a keyframe.
    Keyframe(Mid, KeyframeRequestKind),
}

/// One RTP packet on its way from a publisher to its subscribers.
pub struct Forwarded {
    pub track: TrackId,
    pub kind: MediaKind,
    pub params: PayloadParams,
    pub seq: SeqNo,
    pub time: u32,
    pub marker: bool,
    pub ext: ExtensionValues,
    pub payload: Arc<[u8]>,
    /// When its datagram was read from the socket.
    pub received: Instant,
}

/// A track this peer publishes.
struct Published {
    id: TrackId,
    kind: MediaKind,
    subscribers: Vec<ActorRef<PeerMsg>>,
    last_keyframe_request: Option<Instant>,
    /// No packets for a while (str0m's StreamPaused).
    paused: bool,
    /// A simulcast publisher's layer that is forwarded (the first to arrive).
    layer: Option<Rid>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutState {
    /// Waiting for the next server offer.
    ToOpen,
    Negotiating(Mid),
    Open(Mid),
    ToStop(Mid),
    NegotiatingStop(Mid),
}

/// A remote track this peer receives.
struct Subscribed {
    info: Arc<TrackInfo>,
    state: OutState,
    /// Publisher payload type → ours (None: we cannot send that codec).
    pts: Vec<(u8, Option<str0m::media::Pt>)>,
    /// Subtracted from the publisher's extended sequence numbers, so the first
    /// one we send has rollover count 0 (the receiver's SRTP starts there).
    seq_base: Option<u64>,
}

impl Subscribed {
    fn mid(&self) -> Option<Mid> {
        match self.state {
            OutState::ToOpen => None,
            OutState::Negotiating(m)
            | OutState::Open(m)
            | OutState::ToStop(m)
            | OutState::NegotiatingStop(m) => Some(m),
        }
    }
}

pub struct PeerState {
    myself: ActorRef<PeerMsg>,
    participant: Arc<str>,
    user_id: Arc<str>,
    call: ActorRef<CallMsg>,
    calls: Arc<Calls>,
    signal: SignalTarget,
    rtc: Rtc,
    endpoint: Endpoint,
    deadline: watch::Sender<Instant>,
    timer: tokio::task::JoinHandle<()>,
    /// The client's first offer was accepted: the server may offer from now on.
    negotiated: bool,
    pending: Option<(u64, SdpPendingOffer)>,
    offers: u64,
    connected: bool,
    connect_by: Instant,
    published: HashMap<Mid, Published>,
    subscribed: HashMap<TrackId, Subscribed>,
    /// Incoming SSRC → the m-line it arrives on (and its simulcast rid).
    ssrc_mids: HashMap<Ssrc, (Mid, Option<Rid>)>,
    /// Egress NACK counters per m-line, to count new ones.
    nacks: HashMap<Mid, u64>,
    events: VecDeque<Event>,
    /// Set when the peer must end (and why).
    ending: Option<&'static str>,
}

fn ice_creds() -> IceCreds {
    // ufrag: 4..=256 ICE chars; 16 hex chars name the peer on the shared socket.
    let r: [u8; 8] = rand::random();
    let p: [u8; 16] = rand::random();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    IceCreds {
        ufrag: hex(&r),
        pass: hex(&p),
    }
}

fn build_rtc(calls: &Calls, creds: IceCreds) -> Rtc {
    let mut config = Rtc::builder()
        .set_rtp_mode(true)
        .set_ice_lite(true)
        .set_local_ice_credentials(creds)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .clear_codecs()
        .enable_opus(true, false);
    for codec in &calls.config.video_codecs {
        config = match codec.as_str() {
            "vp8" => config.enable_vp8(true),
            "h264" => config.enable_h264(true),
            "vp9" => config.enable_vp9(true),
            "av1" => config.enable_av1(true),
            _ => config,
        };
    }
    config.build(Instant::now())
}

impl PeerState {
    /// Poll the Rtc until it only has a timeout left, handling what came out
    /// (which may change the Rtc again, so poll again).
    fn drain(&mut self) {
        loop {
            loop {
                match self.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        self.endpoint.send(t.source, t.destination, &t.contents);
                    }
                    Ok(Output::Timeout(t)) => {
                        self.deadline.send_if_modified(|d| {
                            let changed = *d != t;
                            *d = t;
                            changed
                        });
                        break;
                    }
                    Ok(Output::Event(e)) => self.events.push_back(e),
                    Err(e) => {
                        tracing::warn!(participant = %self.participant, error = %e, "peer connection failed");
                        self.rtc.disconnect();
                        self.ending.get_or_insert("failed");
                        return;
                    }
                }
            }
            if self.events.is_empty() {
                break;
            }
            while let Some(e) = self.events.pop_front() {
                self.on_event(e);
            }
        }
        if !self.rtc.is_alive() {
            self.ending.get_or_insert("disconnected");
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::RtpPacket(p) => self.publish_rtp(p),
            Event::Connected => {
                self.connected = true;
                tracing::debug!(participant = %self.participant, "media connected");
                let opened: Vec<_> = self.subscribed.values().map(|s| s.info.id).collect();
                for id in opened {
                    self.want_keyframe(id);
                }
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                // ICE-lite: no consent check from the client for 15 s.
                self.ending.get_or_insert("ice_timeout");
            }
            Event::MediaAdded(m) if m.direction.is_receiving() => self.publish(m.mid, m.kind),
            Event::MediaChanged(m) => {
                let publishing = self.published.contains_key(&m.mid);
                if m.direction.is_receiving() && !publishing {
                    if let Some(kind) = self.rtc.media(m.mid).map(|x| x.kind()) {
                        self.publish(m.mid, kind);
                    }
                } else if !m.direction.is_receiving() && publishing {
                    self.unpublish(m.mid);
                }
            }
            Event::KeyframeRequest(req) => {
                let wanted = self
                    .subscribed
                    .values()
                    .find(|s| s.mid() == Some(req.mid))
                    .map(|s| s.info.clone());
                if let Some(info) = wanted {
                    let _ = info.publisher.cast(PeerMsg::Keyframe(info.mid, req.kind));
                }
            }
            Event::StreamPaused(p) => {
                if let Some(track) = self.published.get_mut(&p.mid)
                    && track.paused != p.paused
                {
                    track.paused = p.paused;
                    let _ = self.call.cast(CallMsg::Muted {
                        track: track.id,
                        muted: p.paused,
                        reason: "paused",
                    });
                }
            }
            Event::MediaEgressStats(s) => {
                let seen = self.nacks.entry(s.mid).or_default();
                if s.nacks > *seen {
                    self.calls.metrics.rtc_nacks.inc_by(s.nacks - *seen);
                    *seen = s.nacks;
                }
            }
            _ => {}
        }
    }

    fn publish(&mut self, mid: Mid, kind: MediaKind) {
        let id = next_track_id();
        self.published.insert(
            mid,
            Published {
                id,
                kind,
                subscribers: Vec::new(),
                last_keyframe_request: None,
                paused: false,
                layer: None,
            },
        );
        self.calls.metrics.rtc_tracks.inc();
        let _ = self.call.cast(CallMsg::Published(TrackInfo {
            id,
            participant: self.participant.clone(),
            user_id: self.user_id.clone(),
            kind,
            mid,
            publisher: self.myself.clone(),
        }));
    }

    fn unpublish(&mut self, mid: Mid) {
        if let Some(p) = self.published.remove(&mid) {
            self.calls.metrics.rtc_tracks.dec();
            let _ = self.call.cast(CallMsg::Unpublished(p.id));
        }
    }

    fn mid_of(&mut self, ssrc: Ssrc) -> Option<(Mid, Option<Rid>)> {
        if let Some(found) = self.ssrc_mids.get(&ssrc) {
            return Some(*found);
        }
        let found = self
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid()))?;
        self.ssrc_mids.insert(ssrc, found);
        Some(found)
    }

    fn publish_rtp(&mut self, p: RtpPacket) {
        let Some((mid, rid)) = self.mid_of(p.header.ssrc) else {
            return;
        };
        let Some(track) = self.published.get_mut(&mid) else {
            return;
        };
        self.calls.metrics.rtc_packets_in.inc();
        // Simulcast: one layer reaches subscribers (no layer switching yet).
        if let Some(rid) = rid
            && *track.layer.get_or_insert(rid) != rid
        {
            return;
        }
        if track.subscribers.is_empty() {
            return;
        }
        let pt = p.header.payload_type;
        let Some(params) = self.rtc.codec_config().find(|c| c.pt() == pt).copied() else {
            self.calls
                .metrics
                .rtc_dropped
                .with_label_values(&["unknown_pt"])
                .inc();
            return;
        };
        let ext = &p.header.ext_vals;
        let forwarded = Arc::new(Forwarded {
            track: track.id,
            kind: track.kind,
            params,
            seq: p.seq_no,
            time: p.header.timestamp,
            marker: p.header.marker,
            ext: ExtensionValues {
                audio_level: ext.audio_level,
                voice_activity: ext.voice_activity,
                video_orientation: ext.video_orientation,
                video_content_type: ext.video_content_type,
                ..Default::default()
            },
            payload: p.payload,
            received: p.timestamp,
        });
        for s in &track.subscribers {
            let _ = s.cast(PeerMsg::Rtp(forwarded.clone()));
        }
    }

    fn unsubscribe(&mut self, id: TrackId) {
        let Some(s) = self.subscribed.get_mut(&id) else {
            return;
        };
        match s.state {
            OutState::ToOpen => {
                self.subscribed.remove(&id);
            }
            OutState::Negotiating(m) | OutState::Open(m) => s.state = OutState::ToStop(m),
            OutState::ToStop(_) | OutState::NegotiatingStop(_) => {}
        }
    }

    /// Write a publisher's packet on our m-line for its track.
    fn forward(&mut self, f: &Forwarded) {
        let Some(sub) = self.subscribed.get_mut(&f.track) else {
            return;
        };
        let OutState::Open(mid) = sub.state else {
            return;
        };
        let in_pt = *f.params.pt();
        let pt = match sub.pts.iter().find(|(p, _)| *p == in_pt) {
            Some((_, pt)) => *pt,
            None => {
                let pt = self
                    .rtc
                    .codec_config()
                    .match_params(f.params)
                    .map(|p| p.pt());
                sub.pts.push((in_pt, pt));
                pt
            }
        };
        let Some(pt) = pt else {
            self.calls
                .metrics
                .rtc_dropped
                .with_label_values(&["codec"])
                .inc();
            return;
        };
        let seq = *f.seq;
        let base = *sub.seq_base.get_or_insert(seq & !0xffff);
        let Some(seq) = seq.checked_sub(base) else {
            return;
        };
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let write =
            str0m::rtp::RtpWrite::new(pt, seq.into(), f.time, f.received, f.payload.clone())
                .marker(f.marker)
                .ext_vals(f.ext.clone())
                .nackable(f.kind == MediaKind::Video);
        tx.write_rtp(write);
        let m = &self.calls.metrics;
        m.rtc_packets_forwarded.inc();
        m.rtc_bytes_forwarded.inc_by(f.payload.len() as u64);
    }

    /// Ask the publisher of a track we receive for a keyframe (video only).
    fn want_keyframe(&self, id: TrackId) {
        if let Some(s) = self.subscribed.get(&id)
            && s.info.kind == MediaKind::Video
            && matches!(s.state, OutState::Open(_))
        {
            let _ = s
                .info
                .publisher
                .cast(PeerMsg::Keyframe(s.info.mid, KeyframeRequestKind::Pli));
        }
    }

    fn keyframe(&mut self, mid: Mid, kind: KeyframeRequestKind) {
        let interval = Duration::from_millis(self.calls.config.keyframe_interval_ms);
        let Some(track) = self.published.get_mut(&mid) else {
            return;
        };
        if track.kind != MediaKind::Video
            || track
                .last_keyframe_request
                .is_some_and(|t| t.elapsed() < interval)
        {
            return;
        }
        let mut api = self.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, None) else {
            return;
        };
        rx.request_keyframe(kind);
        track.last_keyframe_request = Some(Instant::now());
        self.calls.metrics.rtc_keyframe_requests.inc();
    }

    fn on_offer(&mut self, sdp: &str) -> Result<(), CallError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(|e| CallError::Sdp(e.to_string()))?;
        let answer = self
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| CallError::Sdp(e.to_string()))?;
        // Glare: the server is the polite side. Its own offer is dropped and
        // made again once this one is answered.
        if self.pending.take().is_some() {
            for s in self.subscribed.values_mut() {
                s.state = match s.state {
                    OutState::Negotiating(_) => OutState::ToOpen,
                    OutState::NegotiatingStop(m) => OutState::ToStop(m),
                    other => other,
                };
            }
        }
        self.negotiated = true;
        self.signal.push(
            "call_answer",
            &json!({"sdp": answer.to_sdp_string(), "type": "answer"}),
        );
        Ok(())
    }

    fn on_answer(&mut self, sdp: &str, offer_id: Option<u64>) -> Result<(), CallError> {
        let Some((pending_id, _)) = &self.pending else {
            return Err(CallError::NoPendingOffer);
        };
        if let Some(got) = offer_id
            && got != *pending_id
        {
            return Err(CallError::StaleAnswer {
                got,
                pending: *pending_id,
            });
        }
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(|e| CallError::Sdp(e.to_string()))?;
        let (_, pending) = self.pending.take().expect("checked above");
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| CallError::Sdp(e.to_string()))?;
        let mut opened = Vec::new();
        self.subscribed.retain(|id, s| match s.state {
            OutState::Negotiating(m) => {
                s.state = OutState::Open(m);
                s.pts.clear();
                opened.push(*id);
                true
            }
            OutState::NegotiatingStop(_) => false,
            _ => true,
        });
        for id in opened {
            self.want_keyframe(id);
        }
        Ok(())
    }

    fn on_mute(
        &mut self,
        kind: Option<MediaKind>,
        mid: Option<&str>,
        muted: bool,
    ) -> Result<(), CallError> {
        let mut any = false;
        for (m, track) in &self.published {
            if kind.is_some_and(|k| k != track.kind) || mid.is_some_and(|x| x != m.to_string()) {
                continue;
            }
            any = true;
            let _ = self.call.cast(CallMsg::Muted {
                track: track.id,
                muted,
                reason: "client",
            });
        }
        if any {
            Ok(())
        } else {
            Err(CallError::NoSuchTrack)
        }
    }

    fn on_candidate(&mut self, candidate: &str) -> Result<(), CallError> {
        let line = candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            // End of candidates.
            return Ok(());
        }
        let c =
            Candidate::from_sdp_string(line).map_err(|e| CallError::Candidate(e.to_string()))?;
        self.rtc.add_remote_candidate(c);
        Ok(())
    }

    /// Offer the client our pending track changes, if it is our turn.
    fn negotiate(&mut self) {
        if !self.negotiated || self.pending.is_some() || !self.rtc.is_alive() {
            return;
        }
        let mut change = self.rtc.sdp_api();
        let mut tracks = Vec::new();
        for s in self.subscribed.values_mut() {
            match s.state {
                OutState::ToOpen => {
                    let mid = change.add_media(
                        s.info.kind,
                        Direction::SendOnly,
                        Some(s.info.participant.to_string()),
                        Some(format!("{}-{}", s.info.participant, s.info.id)),
                        None,
                    );
                    s.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(mid) => {
                    change.stop_media(mid);
                    s.state = OutState::NegotiatingStop(mid);
                }
                _ => {}
            }
        }
        if !change.has_changes() {
            return;
        }
        let Some((offer, pending)) = change.apply() else {
            return;
        };
        for s in self.subscribed.values() {
            if let OutState::Negotiating(mid) | OutState::Open(mid) = s.state {
                tracks.push(json!({
                    "mid": mid.to_string(),
                    "participant_id": s.info.participant,
                    "user_id": s.info.user_id,
                    "kind": kind_name(s.info.kind),
                    "track_id": s.info.id,
                }));
            }
        }
        self.offers += 1;
        self.pending = Some((self.offers, pending));
        self.signal.push(
            "call_offer",
            &json!({
                "sdp": offer.to_sdp_string(),
                "type": "offer",
                "offer_id": self.offers,
                "tracks": tracks,
            }),
        );
    }
}

/// Sends [`PeerMsg::Tick`] when the Rtc's deadline passes.
async fn timer(peer: ActorRef<PeerMsg>, mut deadline: watch::Receiver<Instant>) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {
                if peer.cast(PeerMsg::Tick).is_err() {
                    return;
                }
                // The next deadline comes with the Tick's drain.
                if deadline.changed().await.is_err() {
                    return;
                }
            }
            changed = deadline.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

impl Actor for Peer {
    type Msg = PeerMsg;
    type State = PeerState;
    type Arguments = PeerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PeerMsg>,
        args: PeerArgs,
    ) -> Result<PeerState, ActorProcessingErr> {
        let creds = ice_creds();
        let endpoint = args.calls.net.endpoint(&creds.ufrag, myself.clone())?;
        let mut rtc = build_rtc(&args.calls, creds);
        for c in endpoint.candidates() {
            rtc.add_local_candidate(c);
        }
        let now = Instant::now();
        let (deadline, watcher) = watch::channel(now + Duration::from_secs(1));
        let timer = tokio::spawn(timer(myself.clone(), watcher));
        args.calls.metrics.rtc_participants.inc();
        Ok(PeerState {
            myself,
            participant: args.participant,
            user_id: args.user_id,
            call: args.call,
            connect_by: now + Duration::from_secs(args.calls.config.connect_timeout_s),
            calls: args.calls,
            signal: args.signal,
            rtc,
            endpoint,
            deadline,
            timer,
            negotiated: false,
            pending: None,
            offers: 0,
            connected: false,
            published: HashMap::new(),
            subscribed: HashMap::new(),
            ssrc_mids: HashMap::new(),
            nacks: HashMap::new(),
            events: VecDeque::new(),
            ending: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<PeerMsg>,
        msg: PeerMsg,
        state: &mut PeerState,
    ) -> Result<(), ActorProcessingErr> {
        let mut forwarded_at = None;
        match msg {
            PeerMsg::Datagram(d) => {
                match Receive::new(Protocol::Udp, d.source, d.destination, &d.data) {
                    Ok(receive) => {
                        let input = Input::Receive(d.at, receive);
                        if state.rtc.accepts(&input) {
                            if let Err(e) = state.rtc.handle_input(input) {
                                // A bad packet (SRTP auth, malformed RTCP...): drop it.
                                tracing::debug!(participant = %state.participant, error = %e, "datagram refused");
                                state
                                    .calls
                                    .metrics
                                    .rtc_dropped
                                    .with_label_values(&["refused"])
                                    .inc();
                            }
                        } else {
                            state
                                .calls
                                .metrics
                                .rtc_dropped
                                .with_label_values(&["refused"])
                                .inc();
                        }
                    }
                    Err(_) => {
                        state
                            .calls
                            .metrics
                            .rtc_dropped
                            .with_label_values(&["malformed"])
                            .inc();
                    }
                }
            }
            PeerMsg::Tick => {
                let now = Instant::now();
                if let Err(e) = state.rtc.handle_input(Input::Timeout(now)) {
                    tracing::warn!(participant = %state.participant, error = %e, "peer timeout handling failed");
                    state.ending.get_or_insert("failed");
                }
                if !state.connected && now >= state.connect_by {
                    state.ending.get_or_insert("connect_timeout");
                }
                // The timer waits for a new deadline: always give it one.
                state.deadline.send_modify(|_| {});
            }
            PeerMsg::Offer(sdp, reply) => {
                let _ = reply.send(state.on_offer(&sdp));
            }
            PeerMsg::Answer {
                sdp,
                offer_id,
                reply,
            } => {
                let _ = reply.send(state.on_answer(&sdp, offer_id));
            }
            PeerMsg::Candidate(c, reply) => {
                let _ = reply.send(state.on_candidate(&c));
            }
            PeerMsg::Mute {
                kind,
                mid,
                muted,
                reply,
            } => {
                let _ = reply.send(state.on_mute(kind, mid.as_deref(), muted));
            }
            PeerMsg::Subscribe(info) => {
                state.subscribed.entry(info.id).or_insert(Subscribed {
                    info,
                    state: OutState::ToOpen,
                    pts: Vec::new(),
                    seq_base: None,
                });
            }
            PeerMsg::Unsubscribe(id) => state.unsubscribe(id),
            PeerMsg::AddSubscriber { mid, subscriber } => {
                if let Some(p) = state.published.get_mut(&mid)
                    && !p
                        .subscribers
                        .iter()
                        .any(|s| s.get_id() == subscriber.get_id())
                {
                    p.subscribers.push(subscriber);
                }
            }
            PeerMsg::RemoveSubscriber(id) => {
                for p in state.published.values_mut() {
                    p.subscribers.retain(|s| s.get_id() != id);
                }
            }
            PeerMsg::Rtp(f) => {
                state.forward(&f);
                forwarded_at = Some(f.received);
            }
            PeerMsg::Keyframe(mid, kind) => state.keyframe(mid, kind),
        }
        state.drain();
        if let Some(received) = forwarded_at {
            state
                .calls
                .metrics
                .rtc_forward_seconds
                .observe(received.elapsed().as_secs_f64());
        }
        state.negotiate();
        if let Some(reason) = state.ending {
            myself.stop(Some(reason.to_string()));
        }
        Ok(())
    }
}

impl Drop for PeerState {
    fn drop(&mut self) {
        self.timer.abort();
        self.calls.metrics.rtc_participants.dec();
        self.calls
            .metrics
            .rtc_tracks
            .sub(self.published.len() as i64);
        self.rtc.disconnect();
    }
}
