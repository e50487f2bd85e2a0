//! Call: one actor per call id, created by the first join, stopped
//! `calls.empty_grace_ms` after the last participant left.
//!
//! It owns who is in the call and which tracks they publish, and wires
//! publishers to subscribers; media never passes through it. Every participant
//! is a [`Peer`] actor linked to it: a Peer that fails or ends (ICE timeout,
//! leave) comes back here as a supervision event, and only that participant
//! leaves — the call goes on.
//!
//! Bus events: `call.started`, `call.participant_joined`,
//! `call.participant_left`, `call.ended`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use serde_json::{Map, Value, json};

use crate::bus::events;
use crate::calls::arc::codec::ArcCodec;
use crate::calls::arc::peer::{ArcPeer, ArcPeerArgs};
use crate::calls::peer::{Peer, PeerArgs, PeerMsg, Subscriber};
use crate::calls::{
    ArcJoin, ArcRequest, CallError, Calls, Member, Signal, SignalTarget, TrackId, TrackInfo,
    Traffic, kind_name,
};
use crate::pubsub::SessionId;

pub struct Call;

pub struct CallArgs {
    pub id: Arc<str>,
    pub calls: Arc<Calls>,
}

pub enum CallMsg {
    Join {
        session: SessionId,
        user_id: Arc<str>,
        signal: SignalTarget,
        reply: RpcReplyPort<Result<Value, CallError>>,
    },
    Leave {
        session: SessionId,
        reason: &'static str,
    },
    Signal {
        session: SessionId,
        signal: Signal,
        reply: RpcReplyPort<Result<(), CallError>>,
    },
    /// An ArcRTC request (`arc_join`, `arc_publish`, `arc_unpublish`).
    Arc {
        session: SessionId,
        request: ArcRequest,
        reply: RpcReplyPort<Result<Value, CallError>>,
    },
    Published(TrackInfo),
    Unpublished(TrackId),
    /// A publisher's track went silent or came back (`reason`: `client` when it
    /// said so, `paused` when its packets stopped for 1.5 s).
    Muted {
        track: TrackId,
        muted: bool,
        reason: &'static str,
    },
    /// Who is in the call.
    Roster(RpcReplyPort<Vec<Member>>),
    /// Sent `empty_grace_ms` after the call became empty (the number tells
    /// which time it became empty).
    CheckEmpty(u64),
}

/// How a participant's media flows; chosen by its first signal.
enum Transport {
    Undecided,
    WebRtc,
    Arc {
        /// What it can receive (`arc_join.codecs`).
        codecs: Vec<&'static ArcCodec>,
        receive: bool,
    },
}

struct Participant {
    id: Arc<str>,
    transport: Transport,
    user_id: Arc<str>,
    session: SessionId,
    peer: ActorRef<PeerMsg>,
    backlog: Arc<AtomicUsize>,
    traffic: Arc<Traffic>,
    signal: SignalTarget,
    /// Why it is leaving, when the call asked it to.
    leaving: Option<&'static str>,
}

pub struct CallState {
    id: Arc<str>,
    calls: Arc<Calls>,
    started: Instant,
    participants: HashMap<ActorId, Participant>,
    tracks: Vec<Arc<TrackInfo>>,
    joined_total: u64,
    emptied: u64,
    /// Set once the call is stopping: joins are refused (the caller retries
    /// with a new call).
    ended: bool,
}

impl CallState {
    fn emit(&self, subject: &str, mut payload: Map<String, Value>) {
        payload.insert("call_id".into(), json!(self.id));
        payload.insert("node".into(), json!(self.calls.node_name));
        self.calls.outlet.emit(subject, payload);
    }

    /// This connection's participant (not one already on its way out).
    fn by_session(&self, session: SessionId) -> Option<&Participant> {
        self.participants
            .values()
            .find(|p| p.session == session && p.leaving.is_none())
    }

    fn push_others(&self, except: &ActorId, event: &str, payload: &Value) {
        for (id, p) in &self.participants {
            if id != except {
                p.signal.push(event, payload);
            }
        }
    }

    fn roster(&self) -> Vec<Value> {
        self.participants
            .values()
            .map(|p| json!({"participant_id": p.id, "user_id": p.user_id}))
            .collect()
    }

    async fn join(
        &mut self,
        myself: &ActorRef<CallMsg>,
        session: SessionId,
        user_id: Arc<str>,
        signal: SignalTarget,
    ) -> Result<Value, CallError> {
        if self.ended {
            return Err(CallError::Ended);
        }
        let max = self.calls.config.max_participants;
        if self.participants.len() >= max {
            return Err(CallError::Full(max));
        }
        let participant: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let backlog = Arc::new(AtomicUsize::new(0));
        let traffic = Arc::new(Traffic::default());
        let args = PeerArgs {
            backlog: backlog.clone(),
            traffic: traffic.clone(),
            participant: participant.clone(),
            user_id: user_id.clone(),
            call: myself.clone(),
            calls: self.calls.clone(),
            signal: signal.clone(),
        };
        let (peer, _) = Actor::spawn_linked(None, Peer, args, myself.get_cell())
            .await
            .map_err(|e| CallError::Internal(format!("participant did not start: {e}")))?;
        let others = self.roster();
        let subscriber = Subscriber {
            peer: peer.clone(),
            backlog: backlog.clone(),
        };
        for track in &self.tracks {
            offer_track(
                &self.calls,
                &Transport::Undecided,
                &subscriber,
                &signal,
                track,
            );
        }
        let joined = json!({"participant_id": participant, "user_id": user_id});
        self.push_others(&peer.get_id(), "participant_joined", &joined);
        self.participants.insert(
            peer.get_id(),
            Participant {
                id: participant.clone(),
                transport: Transport::Undecided,
                user_id: user_id.clone(),
                session,
                peer,
                backlog,
                traffic,
                signal,
                leaving: None,
            },
        );
        self.joined_total += 1;
        if let Value::Object(m) = joined {
            self.emit(events::CALL_PARTICIPANT_JOINED, m);
        }
        Ok(json!({"call_id": self.id, "participant_id": participant, "participants": others}))
    }

    fn published(&mut self, track: TrackInfo) {
        let Some(publisher) = self.participants.get(&track.publisher.get_id()) else {
            return;
        };
        tracing::debug!(call = %self.id, participant = %publisher.id, kind = kind_name(track.kind), "track published");
        let track = Arc::new(track);
        for (id, p) in &self.participants {
            if *id != track.publisher.get_id() {
                let subscriber = Subscriber {
                    peer: p.peer.clone(),
                    backlog: p.backlog.clone(),
                };
                offer_track(&self.calls, &p.transport, &subscriber, &p.signal, &track);
            }
        }
        self.tracks.push(track);
    }

    /// A WebRTC signal: the participant uses WebRTC from now on.
    fn webrtc_signal(&mut self, actor: ActorId) -> Result<(), CallError> {
        let p = self
            .participants
            .get_mut(&actor)
            .ok_or(CallError::NotInCall)?;
        match p.transport {
            Transport::Undecided => {
                p.transport = Transport::WebRtc;
                // Now it is a browser: tell it which tracks it will not get.
                for track in &self.tracks {
                    if let Some(reason) = refusal(&self.calls, &p.transport, track) {
                        p.signal
                            .push("track_unavailable", &unavailable(track, &reason));
                    }
                }
                Ok(())
            }
            Transport::WebRtc => Ok(()),
            Transport::Arc { .. } => Err(CallError::TransportChosen),
        }
    }

    /// `arc_join`: the participant's WebRTC Peer (which never negotiated) is
    /// replaced by an ArcPeer, subscribed to what it can receive.
    async fn arc_join(
        &mut self,
        myself: &ActorRef<CallMsg>,
        old: ActorId,
        join: ArcJoin,
        reply: RpcReplyPort<Result<Value, CallError>>,
    ) {
        let Some(p) = self.participants.get(&old) else {
            let _ = reply.send(Err(CallError::NotInCall));
            return;
        };
        if !matches!(p.transport, Transport::Undecided) {
            let _ = reply.send(Err(CallError::TransportChosen));
            return;
        }
        let backlog = Arc::new(AtomicUsize::new(0));
        let transport = Transport::Arc {
            codecs: join.codecs.clone(),
            receive: join.receive,
        };
        let args = ArcPeerArgs {
            backlog: backlog.clone(),
            traffic: p.traffic.clone(),
            participant: p.id.clone(),
            user_id: p.user_id.clone(),
            call: myself.clone(),
            calls: self.calls.clone(),
            signal: p.signal.clone(),
            join,
        };
        let peer = match Actor::spawn_linked(None, ArcPeer, args, myself.get_cell()).await {
            Ok((peer, _)) => peer,
            Err(e) => {
                let _ = reply.send(Err(CallError::Internal(format!(
                    "ArcRTC session did not start: {e}"
                ))));
                return;
            }
        };
        let Some(mut p) = self.participants.remove(&old) else {
            peer.stop(None);
            let _ = reply.send(Err(CallError::NotInCall));
            return;
        };
        // The WebRTC Peer goes quietly: its end is not the participant's.
        let previous = std::mem::replace(&mut p.peer, peer.clone());
        previous.stop(Some("arcrtc".into()));
        p.backlog = backlog;
        p.transport = transport;
        let subscriber = Subscriber {
            peer: peer.clone(),
            backlog: p.backlog.clone(),
        };
        for track in &self.tracks {
            let _ = track.publisher.cast(PeerMsg::RemoveSubscriber(old));
            offer_track(&self.calls, &p.transport, &subscriber, &p.signal, track);
        }
        self.participants.insert(peer.get_id(), p);
        let _ = peer.cast(PeerMsg::ArcReply(reply));
    }

    fn unpublished(&mut self, id: TrackId) {
        let Some(at) = self.tracks.iter().position(|t| t.id == id) else {
            return;
        };
        let track = self.tracks.remove(at);
        let ended = json!({
            "participant_id": track.participant,
            "track_id": track.id,
            "kind": kind_name(track.kind),
        });
        for p in self.participants.values() {
            if p.peer.get_id() != track.publisher.get_id() {
                let _ = p.peer.cast(PeerMsg::Unsubscribe(track.id));
                p.signal.push("track_ended", &ended);
            }
        }
    }

    fn muted(&self, id: TrackId, muted: bool, reason: &str) {
        let Some(track) = self.tracks.iter().find(|t| t.id == id) else {
            return;
        };
        let payload = json!({
            "participant_id": track.participant,
            "track_id": track.id,
            "kind": kind_name(track.kind),
            "muted": muted,
            "reason": reason,
        });
        self.push_others(&track.publisher.get_id(), "track_muted", &payload);
    }

    /// A Peer actor ended (`Ok(stop reason)`) or failed (`Err`): the
    /// participant is out of the call.
    fn left(
        &mut self,
        myself: &ActorRef<CallMsg>,
        actor: ActorId,
        exit: Result<Option<String>, String>,
    ) {
        let Some(p) = self.participants.remove(&actor) else {
            return;
        };
        let reason = match (&p.leaving, &exit) {
            (Some(r), _) => r.to_string(),
            (None, Err(why)) => {
                tracing::error!(call = %self.id, participant = %p.id, reason = %why, "participant crashed");
                self.calls
                    .metrics
                    .restarts
                    .with_label_values(&["calls"])
                    .inc();
                "failed".to_string()
            }
            (None, Ok(Some(r))) => r.clone(),
            (None, Ok(None)) => "left".to_string(),
        };
        if p.leaving.is_none() {
            // The client did not ask to leave: tell it it is out.
            p.signal.push("call_end", &json!({"reason": reason}));
        }
        let gone: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|t| t.publisher.get_id() == actor)
            .map(|t| t.id)
            .collect();
        self.tracks.retain(|t| t.publisher.get_id() != actor);
        let payload = json!({"participant_id": p.id, "user_id": p.user_id, "reason": reason});
        for other in self.participants.values() {
            let _ = other.peer.cast(PeerMsg::RemoveSubscriber(actor));
            for id in &gone {
                let _ = other.peer.cast(PeerMsg::Unsubscribe(*id));
            }
            other.signal.push("participant_left", &payload);
        }
        if let Value::Object(m) = payload {
            self.emit(events::CALL_PARTICIPANT_LEFT, m);
        }
        if self.participants.is_empty() {
            self.emptied += 1;
            myself.send_after(Duration::from_millis(self.calls.config.empty_grace_ms), {
                let n = self.emptied;
                move || CallMsg::CheckEmpty(n)
            });
        }
    }
}

/// Why a participant cannot receive `track` (a codec it lacks), if it cannot.
fn refusal(calls: &Calls, transport: &Transport, track: &TrackInfo) -> Option<String> {
    let codec = track.codec?;
    let refused = match transport {
        Transport::Arc { codecs, .. } => !codecs.contains(&codec),
        Transport::Undecided | Transport::WebRtc => {
            !codec.browsers
                || (codec.kind == str0m::media::MediaKind::Video
                    && !calls.config.video_codecs.iter().any(|v| v == codec.name))
        }
    };
    refused.then(|| format!("codec \"{}\" not supported by this participant", codec.name))
}

fn unavailable(track: &TrackInfo, reason: &str) -> Value {
    json!({
        "track_id": track.id,
        "participant_id": track.participant,
        "user_id": track.user_id,
        "kind": kind_name(track.kind),
        "codec": track.codec.map(|c| c.name),
        "reason": reason,
    })
}

/// Offer `track` to a participant: subscribe it when it can receive the track,
/// or tell it why not (`track_unavailable`: a codec it lacks). A participant
/// that has not chosen its transport yet hears about refusals when it does.
fn offer_track(
    calls: &Calls,
    transport: &Transport,
    subscriber: &Subscriber,
    signal: &SignalTarget,
    track: &Arc<TrackInfo>,
) {
    if let Transport::Arc { receive: false, .. } = transport {
        return;
    }
    if let Some(reason) = refusal(calls, transport, track) {
        if !matches!(transport, Transport::Undecided) {
            signal.push("track_unavailable", &unavailable(track, &reason));
        }
        return;
    }
    let _ = subscriber.peer.cast(PeerMsg::Subscribe(track.clone()));
    let _ = track.publisher.cast(PeerMsg::AddSubscriber {
        mid: track.mid,
        subscriber: subscriber.clone(),
    });
}

impl Actor for Call {
    type Msg = CallMsg;
    type State = CallState;
    type Arguments = CallArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CallMsg>,
        args: CallArgs,
    ) -> Result<CallState, ActorProcessingErr> {
        let state = CallState {
            id: args.id,
            calls: args.calls,
            started: Instant::now(),
            participants: HashMap::new(),
            tracks: Vec::new(),
            joined_total: 0,
            emptied: 0,
            ended: false,
        };
        state.calls.metrics.rtc_calls.inc();
        state.emit(events::CALL_STARTED, Map::new());
        tracing::info!(call = %state.id, "call started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CallMsg>,
        msg: CallMsg,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CallMsg::Join {
                session,
                user_id,
                signal,
                reply,
            } => {
                let joined = state.join(&myself, session, user_id, signal).await;
                let _ = reply.send(joined);
            }
            CallMsg::Leave { session, reason } => {
                let actor = state.by_session(session).map(|p| p.peer.get_id());
                if let Some(p) = actor.and_then(|a| state.participants.get_mut(&a)) {
                    p.leaving = Some(reason);
                    p.peer.stop(Some(reason.to_string()));
                }
            }
            CallMsg::Signal {
                session,
                signal,
                reply,
            } => match state.by_session(session).map(|p| p.peer.get_id()) {
                None => {
                    let _ = reply.send(Err(CallError::NotInCall));
                }
                Some(actor) => {
                    if !matches!(signal, Signal::Mute { .. })
                        && let Err(e) = state.webrtc_signal(actor)
                    {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                    let Some(p) = state.participants.get(&actor) else {
                        return Ok(());
                    };
                    let msg = match signal {
                        Signal::Offer(sdp) => PeerMsg::Offer(sdp, reply),
                        Signal::Answer { sdp, offer_id } => PeerMsg::Answer {
                            sdp,
                            offer_id,
                            reply,
                        },
                        Signal::Candidate(c) => PeerMsg::Candidate(c, reply),
                        Signal::Mute { kind, mid, muted } => PeerMsg::Mute {
                            kind,
                            mid,
                            muted,
                            reply,
                        },
                    };
                    // A peer that is gone drops the reply port: the caller sees NotInCall.
                    let _ = p.peer.cast(msg);
                }
            },
            CallMsg::Arc {
                session,
                request,
                reply,
            } => {
                let Some(p) = state.by_session(session) else {
                    let _ = reply.send(Err(CallError::NotInCall));
                    return Ok(());
                };
                let (actor, arc) = (
                    p.peer.get_id(),
                    matches!(p.transport, Transport::Arc { .. }),
                );
                match request {
                    ArcRequest::Join(join) => state.arc_join(&myself, actor, join, reply).await,
                    _ if !arc => {
                        let _ = reply.send(Err(CallError::NotArc));
                    }
                    ArcRequest::Publish(codec) => {
                        let _ = p.peer.cast(PeerMsg::ArcPublish(codec, reply));
                    }
                    ArcRequest::Unpublish(id) => {
                        let _ = p.peer.cast(PeerMsg::ArcUnpublish(id, reply));
                    }
                }
            }
            CallMsg::Published(track) => state.published(track),
            CallMsg::Unpublished(id) => state.unpublished(id),
            CallMsg::Muted {
                track,
                muted,
                reason,
            } => state.muted(track, muted, reason),
            CallMsg::Roster(reply) => {
                let roster = state
                    .participants
                    .values()
                    .map(|p| Member {
                        participant_id: p.id.clone(),
                        user_id: p.user_id.clone(),
                        peer: p.peer.get_cell(),
                        transport: match p.transport {
                            Transport::Undecided => "undecided",
                            Transport::WebRtc => "webrtc",
                            Transport::Arc { .. } => "arcrtc",
                        },
                        tracks: state
                            .tracks
                            .iter()
                            .filter(|t| t.participant == p.id)
                            .count(),
                        traffic: p.traffic.clone(),
                    })
                    .collect();
                let _ = reply.send(roster);
            }
            CallMsg::CheckEmpty(n) => {
                if state.participants.is_empty() && n == state.emptied {
                    state.ended = true;
                    myself.stop(Some("empty".into()));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<CallMsg>,
        event: SupervisionEvent,
        state: &mut CallState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                state.left(&myself, cell.get_id(), Ok(reason));
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.left(&myself, cell.get_id(), Err(err.to_string()));
            }
            _ => {}
        }
        Ok(())
    }
}

/// Runs however the call ends (empty, failed, node shutting down).
impl Drop for CallState {
    fn drop(&mut self) {
        for p in self.participants.values() {
            p.signal.push("call_end", &json!({"reason": "call ended"}));
            p.peer.stop(Some("call ended".into()));
        }
        self.calls.metrics.rtc_calls.dec();
        self.calls.release(&self.id);
        let mut m = Map::new();
        m.insert(
            "duration_s".into(),
            json!(self.started.elapsed().as_secs_f64()),
        );
        m.insert("participants_total".into(), json!(self.joined_total));
        self.emit(events::CALL_ENDED, m);
        tracing::info!(call = %self.id, "call ended");
    }
}
