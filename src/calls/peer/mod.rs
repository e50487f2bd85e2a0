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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort};
use str0m::format::PayloadParams;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::rtp::{ExtensionValues, Ssrc};
use str0m::{Event, IceConnectionState, IceCreds, Input, Output, Rtc};
use tokio::sync::watch;

use super::arc::codec::ArcCodec;
use super::net::{Datagram, Endpoint, Inbox};
use super::{CallError, Calls, SignalTarget, TrackId, TrackInfo};
use crate::actors::call::CallMsg;

pub(crate) mod media;
mod sdp;

pub struct Peer;

pub struct PeerArgs {
    /// Forwarded packets waiting in this Peer's mailbox (shared with publishers).
    pub backlog: Arc<AtomicUsize>,
    pub traffic: Arc<crate::calls::Traffic>,
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
        subscriber: Subscriber,
    },
    /// Stop sending anything to this peer.
    RemoveSubscriber(ActorId),
    /// One RTP packet of a track I subscribe to.
    Rtp(Arc<Forwarded>),
    /// A subscriber of my track on `mid` needs a keyframe.
    Keyframe(Mid, KeyframeRequestKind),
    /// ArcRTC only: answer the `arc_join` (keys, SSRCs, what is received).
    ArcReply(RpcReplyPort<Result<serde_json::Value, CallError>>),
    /// ArcRTC only: `arc_publish`, `arc_unpublish`.
    ArcPublish(
        &'static ArcCodec,
        RpcReplyPort<Result<serde_json::Value, CallError>>,
    ),
    ArcUnpublish(TrackId, RpcReplyPort<Result<serde_json::Value, CallError>>),
}

/// A Peer as its publishers see it: its mailbox, and how many forwarded
/// packets wait in it.
#[derive(Clone)]
pub struct Subscriber {
    pub peer: ActorRef<PeerMsg>,
    pub backlog: Arc<AtomicUsize>,
}

/// Packets that may wait in a subscriber's mailbox; beyond, new ones are
/// dropped for it (a stalled Peer must not grow without bound; RTP survives loss).
pub(crate) const MAX_BACKLOG: usize = 2048;

/// Tracks one participant may publish (camera, microphone, screen and its audio).
pub(crate) const MAX_PUBLISHED: usize = 4;

/// One RTP packet on its way from a publisher to its subscribers.
pub struct Forwarded {
    pub track: TrackId,
    pub kind: MediaKind,
    pub params: PayloadParams,
    /// The publisher's SSRC, and its extended sequence number.
    pub ssrc: u32,
    pub seq: u64,
    pub time: u32,
    pub marker: bool,
    pub ext: ExtensionValues,
    /// ArcRTC's own header extensions, passed on to ArcRTC subscribers only.
    pub arc: ArcExt,
    pub payload: Arc<[u8]>,
    /// When its datagram was read from the socket.
    pub received: Instant,
}

/// The ArcRTC header extensions of a packet (docs/arcrtc.md §5.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArcExt {
    pub hints: Option<[u8; 3]>,
    pub send_time: Option<u64>,
}

/// A track this peer publishes.
struct Published {
    id: TrackId,
    kind: MediaKind,
    subscribers: Vec<Subscriber>,
    last_keyframe_request: Option<Instant>,
    /// A keyframe request waiting for `calls.keyframe_interval_ms` to pass.
    keyframe_due: Option<KeyframeRequestKind>,
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
    seq: media::SeqMap,
}

impl Subscribed {
    fn new(info: Arc<TrackInfo>) -> Subscribed {
        Subscribed {
            info,
            state: OutState::ToOpen,
            pts: Vec::new(),
            seq: media::SeqMap::default(),
        }
    }

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
    /// Forwarded packets, and datagrams, waiting in our mailbox.
    backlog: Arc<AtomicUsize>,
    queued: Arc<AtomicUsize>,
    traffic: Arc<crate::calls::Traffic>,
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
    pending: Option<sdp::Pending>,
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
    /// (which may change the Rtc again, so poll again). Sets the timer.
    fn drain(&mut self) {
        loop {
            let deadline = loop {
                match self.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        self.traffic.sent(t.contents.len());
                        self.endpoint.send(t.source, t.destination, &t.contents);
                    }
                    Ok(Output::Timeout(t)) => break t,
                    Ok(Output::Event(e)) => self.events.push_back(e),
                    Err(e) => {
                        tracing::warn!(participant = %self.participant, error = %e, "peer connection failed");
                        self.rtc.disconnect();
                        self.ending.get_or_insert("failed");
                        return;
                    }
                }
            };
            if self.events.is_empty() {
                self.set_deadline(deadline);
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

    /// Wake at str0m's deadline, or earlier for our own: a delayed keyframe
    /// request, the connect timeout, an unanswered offer.
    fn set_deadline(&mut self, rtc: Instant) {
        let mut at = rtc;
        if let Some(k) = self.keyframe_wake() {
            at = at.min(k);
        }
        if !self.connected {
            at = at.min(self.connect_by);
        }
        if let Some(p) = &self.pending {
            at = at.min(p.at + sdp::OFFER_TIMEOUT);
        }
        self.deadline.send_if_modified(|d| {
            let changed = *d != at;
            *d = at;
            changed
        });
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
}

/// Sends [`PeerMsg::Tick`] when the deadline passes, once per deadline.
async fn timer(peer: ActorRef<PeerMsg>, mut deadline: watch::Receiver<Instant>) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {
                if peer.cast(PeerMsg::Tick).is_err() {
                    return;
                }
                // The Tick's drain sets the next deadline.
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
        let queued = Arc::new(AtomicUsize::new(0));
        let inbox = Inbox {
            peer: myself.clone(),
            queued: queued.clone(),
        };
        let endpoint = args.calls.net.endpoint(&creds.ufrag, inbox)?;
        let mut rtc = build_rtc(&args.calls, creds);
        for c in endpoint.candidates() {
            if rtc.add_local_candidate(c.clone()).is_none() {
                tracing::warn!(candidate = %c.to_sdp_string(), "ICE candidate refused");
            }
        }
        let now = Instant::now();
        let (deadline, watcher) = watch::channel(now + Duration::from_secs(1));
        let timer = tokio::spawn(timer(myself.clone(), watcher));
        args.calls.metrics.rtc_participants.inc();
        Ok(PeerState {
            myself,
            backlog: args.backlog,
            queued,
            traffic: args.traffic,
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
        let mut ticked = false;
        match msg {
            PeerMsg::Datagram(d) => {
                state.queued.fetch_sub(1, Ordering::Relaxed);
                state.traffic.received(d.data.len());
                state.receive(d);
            }
            PeerMsg::Tick => {
                ticked = true;
                let now = Instant::now();
                if let Err(e) = state.rtc.handle_input(Input::Timeout(now)) {
                    tracing::warn!(participant = %state.participant, error = %e, "peer timeout handling failed");
                    state.ending.get_or_insert("failed");
                }
                if !state.connected && now >= state.connect_by {
                    state.ending.get_or_insert("connect_timeout");
                }
                state.flush_keyframes(now);
                state.expire_offer(now);
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
                state
                    .subscribed
                    .entry(info.id)
                    .or_insert_with(|| Subscribed::new(info));
            }
            PeerMsg::Unsubscribe(id) => state.unsubscribe(id),
            PeerMsg::AddSubscriber { mid, subscriber } => {
                if let Some(p) = state.published.get_mut(&mid) {
                    media::add_subscriber(&mut p.subscribers, subscriber);
                }
            }
            PeerMsg::RemoveSubscriber(id) => {
                for p in state.published.values_mut() {
                    p.subscribers.retain(|s| s.peer.get_id() != id);
                }
            }
            PeerMsg::Rtp(f) => {
                state.backlog.fetch_sub(1, Ordering::Relaxed);
                state.forward(&f);
                // Written packets leave on the next timeout: make it now.
                let _ = state.rtc.handle_input(Input::Timeout(Instant::now()));
                forwarded_at = Some(f.received);
            }
            PeerMsg::Keyframe(mid, kind) => state.keyframe(mid, kind),
            PeerMsg::ArcReply(reply)
            | PeerMsg::ArcPublish(_, reply)
            | PeerMsg::ArcUnpublish(_, reply) => {
                let _ = reply.send(Err(CallError::TransportChosen));
            }
        }
        state.drain();
        if state.negotiate() {
            state.drain();
        }
        if let Some(received) = forwarded_at {
            state
                .calls
                .metrics
                .rtc_forward_seconds
                .observe(received.elapsed().as_secs_f64());
        }
        if ticked {
            // The timer waits for a new deadline after a Tick: always give it one.
            state.deadline.send_modify(|_| {});
        }
        if let Some(reason) = state.ending {
            myself.stop(Some(reason.to_string()));
        }
        Ok(())
    }
}

impl PeerState {
    fn receive(&mut self, d: Datagram) {
        let refused = |state: &Self, why: &str| {
            state
                .calls
                .metrics
                .rtc_dropped
                .with_label_values(&[why])
                .inc();
        };
        let Ok(receive) = Receive::new(Protocol::Udp, d.source, d.destination, &d.data) else {
            return refused(self, "malformed");
        };
        let input = Input::Receive(d.at, receive);
        if !self.rtc.accepts(&input) {
            return refused(self, "refused");
        }
        if let Err(e) = self.rtc.handle_input(input) {
            // A bad packet (SRTP authentication, malformed RTCP...): drop it.
            tracing::debug!(participant = %self.participant, error = %e, "datagram refused");
            refused(self, "refused");
        }
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
