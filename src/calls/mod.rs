//! Calls: a WebRTC SFU. One [`Call`](crate::actors::call::Call) actor per call id,
//! one [`Peer`](peer::Peer) actor per participant (a child of its call), signaling
//! over the `signaling:call:{id}` channel (`channels::call`), media on the node's
//! UDP sockets ([`net`]). RTP is forwarded as it came, never decoded.
//!
//! ```text
//! CallSupervisor ── Call "42" ──┬── Peer alice (str0m Rtc: ICE-lite, DTLS, SRTP, RTCP)
//!                               └── Peer bob
//! alice's RTP → Peer alice ─Arc<Forwarded>→ Peer bob → write_rtp → UDP
//! ```
//! docs/calls.md is the client-facing contract.

pub mod arc;
pub mod config;
pub mod net;
pub mod peer;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};
use serde_json::{Value, json};
use str0m::media::{MediaKind, Mid};

use crate::actors::call::{Call, CallArgs, CallMsg};
use crate::bus::Outlet;
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::{Outbox, SessionId, offer};
use arc::codec::ArcCodec;
use config::CallsConfig;

/// The signaling topic prefix.
pub const TOPIC_PREFIX: &str = "signaling:call:";

/// Why a call request failed; the message is what the client reads.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("calls are not enabled on this node")]
    Disabled,
    #[error("this node already hosts {0} calls (calls.max_calls)")]
    TooManyCalls(usize),
    #[error("the call is full ({0} participants, calls.max_participants)")]
    Full(usize),
    #[error("not in this call: join the channel again")]
    NotInCall,
    #[error("invalid SDP: {0}")]
    Sdp(String),
    #[error("invalid ICE candidate: {0}")]
    Candidate(String),
    #[error("no published track matches")]
    NoSuchTrack,
    #[error("no offer is waiting for an answer")]
    NoPendingOffer,
    #[error("this answer is for offer {got}, the pending offer is {pending}")]
    StaleAnswer { got: u64, pending: u64 },
    #[error("the call ended")]
    Ended,
    #[error("the call is hosted on node {0}: connect to that node to join it")]
    Elsewhere(String),
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("no free UDP port on {0} in {1}..={2}")]
    NoPort(IpAddr, u16, u16),
    #[error("media socket: {0}")]
    Io(std::io::Error),
    #[error("transport already chosen")]
    TransportChosen,
    #[error("not an ArcRTC participant: send arc_join first")]
    NotArc,
    /// An `arc_join`/`arc_publish` the node cannot accept; the reason as the
    /// client reads it (docs/arcrtc.md §2.2).
    #[error("{0}")]
    ArcRefused(String),
    #[error("{0}")]
    Internal(String),
}

/// An `arc_join` as the channel checked it (docs/arcrtc.md §2.1).
#[derive(Debug)]
pub struct ArcJoin {
    /// What the client can receive, preferred first.
    pub codecs: Vec<&'static ArcCodec>,
    /// The tracks it will send.
    pub publish: Vec<&'static ArcCodec>,
    pub profile: arc::srtp::Profile,
    pub receive: bool,
}

/// An ArcRTC client's request on the signaling channel.
#[derive(Debug)]
pub enum ArcRequest {
    Join(ArcJoin),
    Publish(&'static ArcCodec),
    Unpublish(TrackId),
}

/// A client's signaling message, as the channel decoded it.
#[derive(Debug)]
pub enum Signal {
    Offer(String),
    Answer {
        sdp: String,
        offer_id: Option<u64>,
    },
    Candidate(String),
    /// The client muted or unmuted its tracks of `kind` (all when `None`) or on `mid`.
    Mute {
        kind: Option<MediaKind>,
        mid: Option<String>,
        muted: bool,
    },
}

/// Renew the leases of the calls this node hosts until the node goes away.
async fn renew_leases(calls: std::sync::Weak<Calls>) {
    let mut every = tokio::time::interval(LEASE_TTL / 3);
    loop {
        every.tick().await;
        let Some(calls) = calls.upgrade() else {
            return;
        };
        let ids: Vec<Arc<str>> = calls.registry.iter().map(|r| r.key().clone()).collect();
        for id in ids {
            if let Err(CallError::Elsewhere(owner)) = calls.lease(&id).await {
                tracing::warn!(call = %id, %owner, "another node took this call's lease (Redis lost it?)");
            }
        }
    }
}

/// Where a participant's signaling events go: its connection, on the call topic.
#[derive(Clone)]
pub struct SignalTarget {
    pub outbox: Outbox,
    pub vsn: Vsn,
    pub join_ref: Option<String>,
    pub topic: Arc<str>,
    pub metrics: Arc<Metrics>,
}

impl SignalTarget {
    pub fn push(&self, event: &str, payload: &Value) {
        let frame = phoenix::encode(
            self.vsn,
            self.join_ref.as_deref(),
            None,
            &self.topic,
            event,
            payload,
        );
        offer(&self.outbox, frame, &self.metrics);
    }
}

/// Identifies a published track across the node.
pub type TrackId = u64;

static NEXT_TRACK: AtomicU64 = AtomicU64::new(1);

pub fn next_track_id() -> TrackId {
    NEXT_TRACK.fetch_add(1, Ordering::Relaxed)
}

/// A track a participant publishes, as the others subscribe to it.
#[derive(Debug)]
pub struct TrackInfo {
    pub id: TrackId,
    pub participant: Arc<str>,
    pub user_id: Arc<str>,
    pub kind: MediaKind,
    /// The m-line it arrives on at its publisher (ArcRTC: one made up per track).
    pub mid: Mid,
    /// Its codec, when known before packets flow (ArcRTC tracks; WebRTC audio).
    pub codec: Option<&'static ArcCodec>,
    pub publisher: ActorRef<peer::PeerMsg>,
}

/// Bytes a participant's media path carried, both ways: every UDP payload of
/// its session (media, RTCP, and for WebRTC DTLS and STUN), shared by its Peer
/// and the call so the dashboard can show bitrates.
#[derive(Debug, Default)]
pub struct Traffic {
    received: AtomicU64,
    sent: AtomicU64,
}

impl Traffic {
    pub fn received(&self, bytes: usize) {
        self.received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Bytes received from and sent to the participant so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.received.load(Ordering::Relaxed),
            self.sent.load(Ordering::Relaxed),
        )
    }
}

/// One participant of a call, as [`Calls::roster`] lists it.
#[derive(Debug, Clone)]
pub struct Member {
    pub participant_id: Arc<str>,
    pub user_id: Arc<str>,
    /// Its Peer actor.
    pub peer: ActorCell,
    /// `webrtc`, `arcrtc`, or `undecided` before its first signal.
    pub transport: &'static str,
    /// Tracks it publishes.
    pub tracks: usize,
    pub traffic: Arc<Traffic>,
}

/// Lowercase `audio`/`video`, as the browser APIs name kinds.
pub fn kind_name(kind: MediaKind) -> &'static str {
    match kind {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

/// The node's calls: the registry, the media sockets, the limits.
pub struct Calls {
    pub config: CallsConfig,
    pub net: net::Net,
    /// The ArcRTC socket (docs/arcrtc.md).
    pub arc: arc::net::ArcNet,
    pub metrics: Arc<Metrics>,
    pub outlet: Outlet,
    pub node_name: String,
    /// With Redis: each call is leased to the node hosting it (`call:{id}`), so
    /// two nodes never run two halves of one call.
    cluster: Option<Arc<Cluster>>,
    registry: DashMap<Arc<str>, ActorRef<CallMsg>>,
    supervisor: Mutex<Option<ActorCell>>,
    /// Serializes call creation so two first joins make one call.
    create: tokio::sync::Mutex<()>,
}

/// How long a signaling request may wait for its call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A call's lease in Redis lasts this long and is renewed three times as often,
/// so a node that dies frees its calls' ids within it.
const LEASE_TTL: Duration = Duration::from_secs(15);

impl Calls {
    /// Bind the media sockets. Must run inside the Tokio runtime.
    pub fn start(
        config: CallsConfig,
        metrics: Arc<Metrics>,
        outlet: Outlet,
        node_name: String,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Arc<Calls>, CallError> {
        let net = net::Net::start(&config, metrics.clone())?;
        for addr in net.shared_addresses() {
            tracing::info!(%addr, "call media on UDP");
        }
        let arc = arc::net::ArcNet::start(&config, metrics.clone())?;
        for addr in arc.bound() {
            tracing::info!(%addr, "ArcRTC media on UDP");
        }
        let calls = Arc::new(Calls {
            config,
            net,
            arc,
            metrics,
            outlet,
            node_name,
            cluster,
            registry: DashMap::new(),
            supervisor: Mutex::new(None),
            create: tokio::sync::Mutex::new(()),
        });
        if calls.cluster.is_some() {
            tokio::spawn(renew_leases(Arc::downgrade(&calls)));
        }
        Ok(calls)
    }

    /// Hold the lease of call `id` for this node (`Elsewhere` when another node
    /// hosts it). Without Redis, or while it is unreachable, calls are local.
    async fn lease(&self, id: &str) -> Result<(), CallError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        match cluster
            .lease(&format!("call:{id}"), &self.node_name, LEASE_TTL)
            .await
        {
            Ok(None) => Ok(()),
            Ok(Some(owner)) => Err(CallError::Elsewhere(owner)),
            Err(e) => {
                tracing::warn!(call = id, error = %e, "call lease unavailable: hosting the call here");
                Ok(())
            }
        }
    }

    /// A call ended here: free its id for the cluster.
    pub(crate) fn release(&self, id: &str) {
        if let Some(cluster) = self.cluster.clone() {
            let (name, owner) = (format!("call:{id}"), self.node_name.clone());
            tokio::spawn(async move {
                if let Err(e) = cluster.release(&name, &owner).await {
                    tracing::debug!(%name, error = %e, "call lease not released (it expires)");
                }
            });
        }
    }

    /// The CallSupervisor new calls are linked to (set by the root supervisor).
    pub fn set_supervisor(&self, cell: Option<ActorCell>) {
        *self.supervisor.lock() = cell;
    }

    /// Forget a call that stopped (only if `id` still maps to that actor).
    fn forget(&self, id: &str, actor: ractor::ActorId) {
        self.registry.remove_if(id, |_, r| r.get_id() == actor);
    }

    /// Forget the call this actor ran (the supervisor saw it end).
    pub fn forget_actor(&self, actor: ractor::ActorId) {
        self.registry.retain(|_, r| r.get_id() != actor);
    }

    async fn call_actor(self: &Arc<Self>, id: &str) -> Result<ActorRef<CallMsg>, CallError> {
        if let Some(r) = self.registry.get(id) {
            return Ok(r.clone());
        }
        let _guard = self.create.lock().await;
        if let Some(r) = self.registry.get(id) {
            return Ok(r.clone());
        }
        if self.registry.len() >= self.config.max_calls {
            return Err(CallError::TooManyCalls(self.config.max_calls));
        }
        self.lease(id).await?;
        let supervisor = self.supervisor.lock().clone().ok_or(CallError::Disabled)?;
        let id: Arc<str> = Arc::from(id);
        let args = CallArgs {
            id: id.clone(),
            calls: self.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, Call, args, supervisor)
            .await
            .map_err(|e| CallError::Internal(format!("call did not start: {e}")))?;
        self.registry.insert(id, actor.clone());
        Ok(actor)
    }

    /// Add this connection to call `id` (created on its first join).
    pub async fn join(
        self: &Arc<Self>,
        id: &str,
        session: SessionId,
        user_id: Arc<str>,
        signal: SignalTarget,
    ) -> Result<Value, CallError> {
        // A call that is stopping refuses; the second try creates it again.
        for _ in 0..2 {
            let call = self.call_actor(id).await?;
            let (user_id, signal) = (user_id.clone(), signal.clone());
            match call
                .call(
                    |reply| CallMsg::Join {
                        session,
                        user_id,
                        signal,
                        reply,
                    },
                    Some(CALL_TIMEOUT),
                )
                .await
            {
                Ok(CallResult::Success(Err(CallError::Ended))) | Err(_) => {
                    self.forget(id, call.get_id());
                }
                Ok(CallResult::Success(r)) => {
                    return r.map(|mut v| {
                        v["ice_servers"] = json!(self.config.ice_servers);
                        v
                    });
                }
                Ok(CallResult::Timeout) => {
                    return Err(CallError::Internal("the call did not answer".into()));
                }
                Ok(CallResult::SenderError) => self.forget(id, call.get_id()),
            }
        }
        Err(CallError::Ended)
    }

    /// Ask call `id` something on behalf of a connection's participant.
    async fn ask<T: Send + 'static>(
        &self,
        id: &str,
        message: impl FnOnce(RpcReplyPort<Result<T, CallError>>) -> CallMsg,
    ) -> Result<T, CallError> {
        let call = self
            .registry
            .get(id)
            .map(|r| r.clone())
            .ok_or(CallError::NotInCall)?;
        match call.call(message, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(r)) => r,
            Ok(CallResult::Timeout) => Err(CallError::Internal("the call did not answer".into())),
            Ok(CallResult::SenderError) | Err(_) => Err(CallError::NotInCall),
        }
    }

    /// Hand a signaling message to this connection's participant in call `id`.
    pub async fn signal(
        &self,
        id: &str,
        session: SessionId,
        signal: Signal,
    ) -> Result<(), CallError> {
        self.ask(id, |reply| CallMsg::Signal {
            session,
            signal,
            reply,
        })
        .await
    }

    /// An ArcRTC request of this connection's participant in call `id`.
    pub async fn arc(
        &self,
        id: &str,
        session: SessionId,
        request: ArcRequest,
    ) -> Result<Value, CallError> {
        self.ask(id, |reply| CallMsg::Arc {
            session,
            request,
            reply,
        })
        .await
    }

    /// This connection left call `id` (channel left, connection gone, `call_end`).
    pub fn leave(&self, id: &str, session: SessionId, reason: &'static str) {
        if let Some(call) = self.registry.get(id) {
            let _ = call.cast(CallMsg::Leave { session, reason });
        }
    }

    /// Up to `max` calls running here (ids in order) and who is in them, asked of
    /// every call at once (for the dashboard).
    pub async fn overview(&self, max: usize) -> Vec<(Arc<str>, Vec<Member>)> {
        let mut calls: Vec<(Arc<str>, ActorRef<CallMsg>)> = self
            .registry
            .iter()
            .map(|r| (r.key().clone(), r.value().clone()))
            .collect();
        calls.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        calls.truncate(max);
        let rosters = calls.into_iter().map(|(id, call)| async move {
            match call
                .call(CallMsg::Roster, Some(Duration::from_millis(500)))
                .await
            {
                Ok(CallResult::Success(members)) => Some((id, members)),
                _ => None,
            }
        });
        futures_util::future::join_all(rosters)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Who is in call `id` (empty when no such call runs here).
    pub async fn roster(&self, id: &str) -> Vec<Member> {
        let Some(call) = self.registry.get(id).map(|r| r.clone()) else {
            return Vec::new();
        };
        match call.call(CallMsg::Roster, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(r)) => r,
            _ => Vec::new(),
        }
    }
}
