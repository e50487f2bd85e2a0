//! A WebRTC test client: a thin wrapper around the `webrtc` crate (0.21).
//!
//! [`WebrtcPeer`] is one peer connection bound to 127.0.0.1 (host candidates on loopback only,
//! no STUN/TURN), offering Opus (PT 111) and VP8 (PT 96, with RTX on PT 97 and NACK/PLI
//! feedback). It sends raw RTP on at most one local track per [`Kind`] and records every RTP
//! packet of every remote track, including tracks the remote side adds later by renegotiating.
//!
//! Signaling is left to the caller: SDP travels as strings and ICE candidates as
//! [`IceCandidate`]s (trickle: [`WebrtcPeer::create_offer`] and friends return SDP without
//! candidates; read the local ones from [`WebrtcPeer::candidates`]).
//!
//! `rtc`, the sans-I/O core whose types appear in `webrtc`'s API (RTP packets, codec and
//! encoding parameters), is a private dependency of `webrtc` that this crate does not depend
//! on, so those types cannot be named here. [`default_arg`] builds them by inference instead.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use webrtc::media_stream::MediaStreamTrack;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceCandidateInit, RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription,
    Registry, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Media kind of a track.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }

    fn codec(self) -> CodecSpec {
        match self {
            Kind::Audio => OPUS,
            Kind::Video => VP8,
        }
    }

    /// RTP timestamp step between frames: 20 ms of Opus, one frame at 30 fps of video.
    fn timestamp_step(self) -> u32 {
        match self {
            Kind::Audio => 960,
            Kind::Video => 3000,
        }
    }
}

/// A codec as registered with the media engine.
#[derive(Clone, Copy)]
struct CodecSpec {
    mime_type: &'static str,
    clock_rate: u32,
    channels: u16,
    fmtp: &'static str,
    payload_type: u8,
}

const OPUS: CodecSpec = CodecSpec {
    mime_type: "audio/opus",
    clock_rate: 48000,
    channels: 2,
    fmtp: "minptime=10;useinbandfec=1",
    payload_type: 111,
};

const VP8: CodecSpec = CodecSpec {
    mime_type: "video/VP8",
    clock_rate: 90000,
    channels: 0,
    fmtp: "",
    payload_type: 96,
};

const VP8_RTX: CodecSpec = CodecSpec {
    mime_type: "video/rtx",
    clock_rate: 90000,
    channels: 0,
    fmtp: "apt=96",
    payload_type: 97,
};

const SDES_MID_URI: &str = "urn:ietf:params:rtp-hdrext:sdes:mid";

/// Fills an `rtc` `RTCRtpCodec` (a type this crate cannot name) from a [`CodecSpec`].
macro_rules! fill_codec {
    ($codec:expr, $spec:expr) => {{
        let spec: CodecSpec = $spec;
        $codec.mime_type = spec.mime_type.to_owned();
        $codec.clock_rate = spec.clock_rate;
        $codec.channels = spec.channels;
        $codec.sdp_fmtp_line = spec.fmtp.to_owned();
    }};
}

/// `T::default()`, where `T` is the parameter type of `_witness`, which is never called.
///
/// This names a type by where it is used: `default_arg(|p| track.write_rtp(p))` is a default
/// `rtc::rtp::Packet`, whose fields can then be set before passing it on for real.
fn default_arg<T: Default, R>(_witness: impl FnOnce(T) -> R) -> T {
    T::default()
}

/// Which local tracks [`WebrtcPeer::new`] adds.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerOptions {
    pub audio: bool,
    pub video: bool,
}

/// A local ICE candidate, as the remote side's `addIceCandidate` wants it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceCandidate {
    /// The candidate attribute, `candidate:<foundation> 1 udp <priority> 127.0.0.1 <port> typ host`.
    pub candidate: String,
    /// `webrtc` does not know which m-line a candidate belongs to (all are bundled): `None`.
    pub sdp_mid: Option<String>,
    /// Always `Some(0)`, the first (bundle-tagged) m-line.
    pub sdp_m_line_index: Option<u16>,
}

/// One received RTP packet.
#[derive(Clone, Debug)]
pub struct ReceivedPacket {
    pub ssrc: u32,
    pub sequence_number: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload_type: u8,
    pub payload: Vec<u8>,
}

/// A remote track and every RTP packet received on it so far.
#[derive(Clone, Debug)]
pub struct Received {
    /// The msid stream id of the track (`a=msid:<stream id> <track id>`).
    pub stream_id: String,
    /// The msid track id.
    pub track_id: String,
    pub kind: Kind,
    /// SSRC of the first packet.
    pub ssrc: u32,
    /// Packets in arrival order.
    pub packets: Vec<ReceivedPacket>,
    /// The track ended (the remote stopped sending it, or the connection closed).
    pub ended: bool,
}

impl Received {
    /// Payloads in arrival order.
    pub fn payloads(&self) -> Vec<Vec<u8>> {
        self.packets.iter().map(|p| p.payload.clone()).collect()
    }
}

/// A VP8 RTP payload carrying one whole frame: a payload descriptor (start of partition 0),
/// a VP8 frame header (a 640x480 key frame, or an inter frame) and then `body`.
///
/// Enough for a receiver that inspects the header (keyframe detection, dimensions) without
/// decoding; `body` is not a valid compressed frame.
pub fn vp8_payload(keyframe: bool, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0x10]; // X=0 N=0 S=1 PID=0
    let first_partition_size = body.len() as u32 & 0x7_ffff;
    // Frame tag: bit 0 = inter frame, bits 1-3 version 0, bit 4 show_frame, bits 5-23 size.
    let tag = u32::from(!keyframe) | 1 << 4 | first_partition_size << 5;
    out.extend_from_slice(&tag.to_le_bytes()[..3]);
    if keyframe {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&640u16.to_le_bytes());
        out.extend_from_slice(&480u16.to_le_bytes());
    }
    out.extend_from_slice(body);
    out
}

struct LocalTrack {
    track: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    sequence_number: u16,
    timestamp: u32,
}

/// State shared with the event handler and the remote-track readers.
struct Shared {
    received: Mutex<Vec<Received>>,
    /// Bumped whenever `received` changes.
    received_version: watch::Sender<u64>,
    state: watch::Sender<RTCPeerConnectionState>,
    candidates_tx: mpsc::UnboundedSender<IceCandidate>,
}

impl Shared {
    fn update_received(&self, f: impl FnOnce(&mut Vec<Received>)) {
        f(&mut self.received.lock().unwrap());
        self.received_version.send_modify(|v| *v += 1);
    }
}

struct Handler(Arc<Shared>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(init) = event.candidate.to_json() {
            let _ = self.0.candidates_tx.send(IceCandidate {
                candidate: init.candidate,
                sdp_mid: init.sdp_mid.filter(|mid| !mid.is_empty()),
                sdp_m_line_index: init.sdp_mline_index,
            });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.0.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let kind = match track.kind().await.to_string().as_str() {
            "audio" => Kind::Audio,
            "video" => Kind::Video,
            _ => return,
        };
        let shared = Arc::clone(&self.0);
        let stream_id = track.stream_id().await;
        let track_id = track.track_id().await;
        let index = {
            let mut received = shared.received.lock().unwrap();
            received.push(Received {
                stream_id,
                track_id,
                kind,
                ssrc: 0,
                packets: Vec::new(),
                ended: false,
            });
            received.len() - 1
        };
        shared.received_version.send_modify(|v| *v += 1);
        // Called on the connection's driver: read on a task of our own.
        tokio::spawn(async move {
            while let Some(event) = track.poll().await {
                match event {
                    TrackRemoteEvent::OnRtpPacket(packet) => shared.update_received(|received| {
                        let entry = &mut received[index];
                        if entry.packets.is_empty() {
                            entry.ssrc = packet.header.ssrc;
                        }
                        entry.packets.push(ReceivedPacket {
                            ssrc: packet.header.ssrc,
                            sequence_number: packet.header.sequence_number,
                            timestamp: packet.header.timestamp,
                            marker: packet.header.marker,
                            payload_type: packet.header.payload_type,
                            payload: packet.payload.to_vec(),
                        });
                    }),
                    TrackRemoteEvent::OnEnded => break,
                    _ => {}
                }
            }
            shared.update_received(|received| received[index].ended = true);
        });
    }
}

/// One WebRTC peer connection on loopback. Cloning gives another handle to the same connection.
#[derive(Clone)]
pub struct WebrtcPeer {
    pc: Arc<dyn PeerConnection>,
    shared: Arc<Shared>,
    stream_id: String,
    local: Arc<tokio::sync::Mutex<HashMap<Kind, LocalTrack>>>,
    candidates_rx: Arc<Mutex<Option<mpsc::UnboundedReceiver<IceCandidate>>>>,
    /// Remote candidates that arrived before the remote description.
    pending_candidates: Arc<tokio::sync::Mutex<Vec<RTCIceCandidateInit>>>,
}

impl WebrtcPeer {
    /// A peer connection bound to 127.0.0.1, with a local send track for each kind asked for.
    /// Must be called inside a Tokio runtime.
    pub async fn new(options: PeerOptions) -> Result<WebrtcPeer> {
        let mut media_engine = MediaEngine::default();
        for kind in [Kind::Audio, Kind::Video] {
            let spec = kind.codec();
            let mut codec = default_arg(|c| media_engine.register_codec(c, kind.as_str().into()));
            fill_codec!(codec.rtp_codec, spec);
            codec.payload_type = spec.payload_type;
            media_engine.register_codec(codec, kind.as_str().into())?;

            // So that audio, too, can be routed by MID when the remote signals no SSRCs
            // (the default interceptors register it for video only).
            let mut mid = default_arg(|e| {
                media_engine.register_header_extension(e, kind.as_str().into(), None)
            });
            mid.uri = SDES_MID_URI.to_owned();
            media_engine.register_header_extension(mid, kind.as_str().into(), None)?;
        }
        // NACK generator/responder, RTCP receiver/sender reports, TWCC receiver; this also adds
        // `nack` and `nack pli` feedback to the video codecs registered so far.
        let registry = register_default_interceptors(Registry::new(), &mut media_engine)?;
        // Registered after the interceptors so that RTX carries no feedback of its own.
        let mut rtx = default_arg(|c| media_engine.register_codec(c, "video".into()));
        fill_codec!(rtx.rtp_codec, VP8_RTX);
        rtx.payload_type = VP8_RTX.payload_type;
        media_engine.register_codec(rtx, "video".into())?;

        let (candidates_tx, candidates_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            received_version: watch::channel(0).0,
            state: watch::channel(RTCPeerConnectionState::New).0,
            candidates_tx,
        });

        // No ICE servers by default; the mDNS mode stays at its default, QueryOnly (host
        // candidates carry IPs, not .local names): `Disabled` is not reachable without `rtc`.
        let pc = PeerConnectionBuilder::new()
            .with_media_engine(media_engine)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler(Arc::clone(&shared))))
            .with_udp_addrs(vec!["127.0.0.1:0"])
            .build()
            .await?;

        let peer = WebrtcPeer {
            pc: Arc::new(pc),
            shared,
            stream_id: format!("stream-{:08x}", rand::random::<u32>()),
            local: Arc::default(),
            candidates_rx: Arc::new(Mutex::new(Some(candidates_rx))),
            pending_candidates: Arc::default(),
        };
        if options.audio {
            peer.add_track(Kind::Audio).await?;
        }
        if options.video {
            peer.add_track(Kind::Video).await?;
        }
        Ok(peer)
    }

    /// The msid stream id of this peer's local tracks.
    pub fn local_stream_id(&self) -> &str {
        &self.stream_id
    }

    /// SSRC of the local track of `kind`, if there is one.
    pub async fn local_ssrc(&self, kind: Kind) -> Option<u32> {
        self.local.lock().await.get(&kind).map(|t| t.ssrc)
    }

    /// Adds a local send track of `kind` (at most one per kind). After the initial
    /// negotiation this needs a renegotiation ([`create_offer`](Self::create_offer)).
    pub async fn add_track(&self, kind: Kind) -> Result<()> {
        let mut local = self.local.lock().await;
        if local.contains_key(&kind) {
            return Err(format!("already have a local {} track", kind.as_str()).into());
        }
        let ssrc = rand::random::<u32>();
        let mut media = MediaStreamTrack::new(
            self.stream_id.clone(),
            format!("{}-{}", kind.as_str(), self.stream_id),
            kind.as_str().to_owned(),
            kind.as_str().into(),
            vec![],
        );
        let mut coding = default_arg(|c| media.add_coding(c));
        coding.rtp_coding_parameters.ssrc = Some(ssrc);
        fill_codec!(coding.codec, kind.codec());
        media.add_coding(coding);

        let track = Arc::new(TrackLocalStaticRTP::new(media));
        let sender = self
            .pc
            .add_track(Arc::clone(&track) as Arc<dyn TrackLocal>)
            .await?;
        local.insert(
            kind,
            LocalTrack {
                track,
                sender,
                ssrc,
                sequence_number: rand::random(),
                timestamp: rand::random(),
            },
        );
        Ok(())
    }

    /// Creates an offer, sets it as the local description and returns its SDP.
    pub async fn create_offer(&self) -> Result<String> {
        let offer = self.pc.create_offer(None).await?;
        self.pc.set_local_description(offer.clone()).await?;
        Ok(offer.sdp)
    }

    /// Applies the remote answer to our offer.
    pub async fn apply_answer(&self, sdp: &str) -> Result<()> {
        let answer = RTCSessionDescription::answer(sdp.to_owned())?;
        self.pc.set_remote_description(answer).await?;
        self.flush_pending_candidates().await
    }

    /// Applies a remote offer, creates and sets an answer, and returns its SDP.
    pub async fn apply_offer(&self, sdp: &str) -> Result<String> {
        let offer = RTCSessionDescription::offer(sdp.to_owned())?;
        self.pc.set_remote_description(offer).await?;
        self.flush_pending_candidates().await?;
        let answer = self.pc.create_answer(None).await?;
        self.pc.set_local_description(answer.clone()).await?;
        Ok(answer.sdp)
    }

    /// The current local description (after gathering, it lists the candidates too).
    pub async fn local_sdp(&self) -> Option<String> {
        self.pc.local_description().await.map(|d| d.sdp)
    }

    /// Adds a remote ICE candidate (`candidate:...` with or without the `candidate:` prefix;
    /// an empty one is ignored). Candidates that arrive before the remote description are kept
    /// until it is applied.
    pub async fn add_remote_candidate(
        &self,
        candidate: &str,
        sdp_mid: Option<String>,
        sdp_m_line_index: Option<u16>,
    ) -> Result<()> {
        let init = RTCIceCandidateInit {
            candidate: candidate.to_owned(),
            sdp_mid,
            sdp_mline_index: sdp_m_line_index,
            ..Default::default()
        };
        let mut pending = self.pending_candidates.lock().await;
        if self.pc.remote_description().await.is_none() {
            pending.push(init);
            return Ok(());
        }
        self.pc.add_ice_candidate(init).await?;
        Ok(())
    }

    async fn flush_pending_candidates(&self) -> Result<()> {
        let mut pending = self.pending_candidates.lock().await;
        for init in pending.drain(..) {
            self.pc.add_ice_candidate(init).await?;
        }
        Ok(())
    }

    /// The local ICE candidates, as they are gathered (gathering starts with the first
    /// `set_local_description`, i.e. in `create_offer`/`apply_offer`). Can be taken once.
    pub fn candidates(&self) -> mpsc::UnboundedReceiver<IceCandidate> {
        self.candidates_rx
            .lock()
            .unwrap()
            .take()
            .expect("WebrtcPeer::candidates() can be taken only once")
    }

    /// Waits until the connection is `Connected` (ICE and DTLS up).
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        let mut state = self.shared.state.subscribe();
        let wait = state.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        });
        let reached = match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(state)) => *state,
            Ok(Err(_)) => return Err("connection state channel closed".into()),
            Err(_) => {
                let state = *self.shared.state.borrow();
                return Err(format!("not connected after {timeout:?}: {state:?}").into());
            }
        };
        match reached {
            RTCPeerConnectionState::Connected => Ok(()),
            other => Err(format!("connection {other:?}").into()),
        }
    }

    /// The current connection state.
    pub fn connection_state(&self) -> RTCPeerConnectionState {
        *self.shared.state.borrow()
    }

    /// Sends one RTP packet with exactly `payload` on the local track of `kind`.
    ///
    /// Sequence numbers advance by one per packet; the timestamp advances by one frame
    /// (20 ms of audio; 1/30 s of video) per audio packet and after every video packet with
    /// `marker` set. The payload type is the one negotiated for Opus/VP8.
    ///
    /// The track must be negotiated; packets sent before the connection is up are dropped,
    /// and `webrtc` only logs packets it refuses (unknown SSRC or payload type).
    pub async fn send(&self, kind: Kind, payload: &[u8], marker: bool) -> Result<()> {
        let (track, sender, ssrc, sequence_number, timestamp) = {
            let mut local = self.local.lock().await;
            let t = local
                .get_mut(&kind)
                .ok_or_else(|| format!("no local {} track", kind.as_str()))?;
            let sequence_number = t.sequence_number;
            let timestamp = t.timestamp;
            t.sequence_number = t.sequence_number.wrapping_add(1);
            if kind == Kind::Audio || marker {
                t.timestamp = t.timestamp.wrapping_add(kind.timestamp_step());
            }
            (
                Arc::clone(&t.track),
                Arc::clone(&t.sender),
                t.ssrc,
                sequence_number,
                timestamp,
            )
        };
        let spec = kind.codec();
        let parameters = sender.get_parameters().await?;
        let payload_type = parameters
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(spec.mime_type))
            .map_or(spec.payload_type, |c| c.payload_type);

        let mut packet = default_arg(|p| track.write_rtp(p));
        packet.header.version = 2;
        packet.header.marker = marker;
        packet.header.payload_type = payload_type;
        packet.header.sequence_number = sequence_number;
        packet.header.timestamp = timestamp;
        packet.header.ssrc = ssrc;
        packet.payload = payload.to_vec().into();
        track.write_rtp(packet).await?;
        Ok(())
    }

    /// Every remote track seen so far, with its packets.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the remote tracks received so far and returns them, or
    /// fails after `timeout` with a summary of what was received.
    pub async fn wait_for<F>(&self, mut pred: F, timeout: Duration) -> Result<Vec<Received>>
    where
        F: FnMut(&[Received]) -> bool,
    {
        let mut version = self.shared.received_version.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            version.borrow_and_update();
            let received = self.received();
            if pred(&received) {
                return Ok(received);
            }
            match tokio::time::timeout_at(deadline, version.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err("peer dropped".into()),
                Err(_) => {
                    let summary: Vec<String> = received
                        .iter()
                        .map(|r| {
                            format!(
                                "{:?} stream={} track={} packets={}",
                                r.kind,
                                r.stream_id,
                                r.track_id,
                                r.packets.len()
                            )
                        })
                        .collect();
                    return Err(format!(
                        "condition not met after {timeout:?}; received: {summary:?}"
                    )
                    .into());
                }
            }
        }
    }

    /// Closes the connection (for every clone of this handle).
    pub async fn close(self) -> Result<()> {
        self.pc.close().await?;
        Ok(())
    }
}
