//! The node's shared parts, handed to every session, channel and route.
//!
//! Actors come and go (a restarted PresenceTracker has a new address); the hub is
//! where the current address of each long-lived actor is found.

use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use ractor::ActorCell;
use tokio::sync::watch;

use crate::actors::bridge::Handled;
use crate::actors::presence::Presence;
use crate::bus::{Bus, Outlet};
use crate::channels::Router;
use crate::config::Config;
use crate::jobs::Jobs;
use crate::metrics::Metrics;
use crate::protocols::jwt::Verifier;
use crate::pubsub::{Outbox, PubSub, SessionId};

/// A live connection, as the node sees it.
pub struct SessionEntry {
    pub outbox: Outbox,
    pub transport: &'static str,
    /// The connection's user (`sub`), so one call can close all of a user's sockets.
    pub user_id: Arc<str>,
}

/// Everything a connection needs from its node.
pub struct Hub {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub pubsub: Arc<PubSub>,
    pub router: Router,
    pub verifier: Verifier,
    /// Client-event buckets shared by each user's connections.
    pub user_limits: crate::limits::UserLimits,
    /// Offsets, epochs and recent messages per topic.
    pub history: crate::history::History,
    /// Presence state; outlives PresenceTracker restarts.
    pub presence: Arc<Presence>,
    /// The message bus, and the node's way of publishing its own events on it.
    pub bus: Arc<dyn Bus>,
    pub outlet: Outlet,
    /// Who handles each kind of work event, and which events were handled already
    /// (both outlive BusBridge restarts).
    pub jobs: Jobs,
    /// Transcoding on this node (`media.enabled` and an ffmpeg found).
    pub media: Option<Arc<crate::actors::transcode::MediaService>>,
    /// Notification sending on this node (a provider configured).
    pub notify: Option<Arc<crate::actors::notification::NotifyService>>,
    /// AI jobs on this node (an AI provider configured).
    pub ai: Option<Arc<crate::actors::ai::AiService>>,
    /// Chat moderation (`ai.moderation.mode` not `off`).
    pub moderation: Option<Arc<crate::ai::moderation::Moderator>>,
    /// The database (messages, job records), unless `database.url = "off"`.
    pub store: Option<Arc<crate::store::Store>>,
    /// This node's name in job records and the cluster.
    pub node_name: String,
    /// WebRTC calls (`calls.enabled`).
    pub calls: Option<Arc<crate::calls::Calls>>,
    pub handled: Handled,
    /// The bus's work queues are prepared (JetStream streams and consumers exist).
    bus_work_ready: std::sync::atomic::AtomicBool,
    /// Media owners seen on the bus, for `media:{id}` joins.
    pub media_owners: crate::channels::rooms::MediaOwners,
    session_supervisor: RwLock<Option<ActorCell>>,
    /// Live sessions and their outbound queues (for shutdown and queue-depth metrics).
    pub sessions: DashMap<SessionId, SessionEntry>,
    /// Long-poll sessions by their session token.
    pub longpoll: crate::http::longpoll::Registry,
    /// Recent activity, for the dashboard and the cluster heartbeats.
    pub activity: crate::dashboard::Activity,
    shutdown: watch::Sender<bool>,
}

/// What a node talks to besides its clients, each built by `Node::start`.
pub struct Services {
    pub bus: Arc<dyn Bus>,
    pub jobs: Jobs,
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
    pub media: Option<Arc<crate::actors::transcode::MediaService>>,
    pub notify: Option<Arc<crate::actors::notification::NotifyService>>,
    pub ai: Option<Arc<crate::actors::ai::AiService>>,
    pub moderation: Option<Arc<crate::ai::moderation::Moderator>>,
    pub store: Option<Arc<crate::store::Store>>,
    pub node_name: String,
    pub calls: Option<Arc<crate::calls::Calls>>,
}

impl Hub {
    pub fn new(
        config: Config,
        router: Router,
        verifier: Verifier,
        metrics: Arc<Metrics>,
        services: Services,
    ) -> Hub {
        let Services {
            bus,
            jobs,
            cluster,
            media,
            notify,
            ai,
            moderation,
            store,
            node_name,
            calls,
        } = services;
        let persist = store.clone().map(|store| crate::history::Persist {
            writer: crate::store::Writer::start(
                store.clone(),
                config.database.batch_max,
                std::time::Duration::from_millis(config.database.batch_linger_ms),
            ),
            page_max: config.database.page_max,
            store,
        });
        let outlet = Outlet::new(bus.clone(), config.bus.clone(), metrics.clone());
        let presence_outlet = config.bus.publish_presence.then(|| outlet.clone());
        let pubsub = Arc::new(PubSub::new(metrics.clone(), cluster.clone()));
        let presence_period = std::time::Duration::from_millis(config.presence.broadcast_period_ms);
        let history = config.history.clone();
        let (user_per_s, user_burst) = (
            config.limits.user_events_per_s,
            config.limits.user_events_burst,
        );
        let presence = Arc::new(Presence::new(
            pubsub.clone(),
            metrics.clone(),
            presence_period,
            presence_outlet,
        ));
        if let Some(cluster) = &cluster {
            cluster.start(Arc::downgrade(&pubsub), Arc::downgrade(&presence));
        }
        Hub {
            config: Arc::new(config),
            presence,
            bus,
            outlet,
            jobs,
            media,
            notify,
            ai,
            moderation,
            calls,
            handled: Handled::default(),
            media_owners: Default::default(),
            bus_work_ready: Default::default(),
            history: crate::history::History::new(history, pubsub.clone(), persist),
            store,
            node_name,
            user_limits: crate::limits::UserLimits::new(user_per_s, user_burst),
            pubsub,
            metrics,
            router,
            verifier,
            session_supervisor: RwLock::new(None),
            sessions: DashMap::new(),
            longpoll: Default::default(),
            activity: Default::default(),
            shutdown: watch::channel(false).0,
        }
    }

    /// The supervisor new sessions are linked to.
    pub fn session_supervisor(&self) -> Option<ActorCell> {
        self.session_supervisor.read().clone()
    }

    pub(crate) fn set_session_supervisor(&self, cell: Option<ActorCell>) {
        *self.session_supervisor.write() = cell;
    }

    /// Whether the cluster's Redis is reachable (`None`: not in a cluster).
    pub fn cluster_ready(&self) -> Option<bool> {
        self.pubsub.cluster().map(|c| c.connected())
    }

    /// Whether the bus is connected and its work queues are prepared.
    pub fn bus_ready(&self) -> bool {
        self.bus.connected()
            && self
                .bus_work_ready
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn set_bus_work_ready(&self, ready: bool) {
        self.bus_work_ready
            .store(ready, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ask every part of the node to stop (SIGTERM).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub async fn shutting_down(&self) {
        let mut rx = self.shutdown.subscribe();
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Record a new session (counted in `armoricore_connections`).
    pub fn register_session(&self, id: SessionId, entry: SessionEntry) {
        self.metrics
            .connections
            .with_label_values(&[entry.transport])
            .inc();
        self.sessions.insert(id, entry);
    }

    /// Remove a session; `None` if it was already gone (so cleanup runs once).
    pub fn forget_session(&self, id: SessionId) -> Option<SessionEntry> {
        let (_, entry) = self.sessions.remove(&id)?;
        self.metrics
            .connections
            .with_label_values(&[entry.transport])
            .dec();
        Some(entry)
    }

    /// Close every connection (shutdown): queued frames first, then `code`.
    pub fn close_all_sessions(&self, code: u16, reason: &'static str) {
        for entry in self.sessions.iter() {
            entry.value().outbox.close(code, reason);
        }
    }

    /// Close every connection of `user_id` (`POST /api/disconnect`); how many.
    pub fn disconnect_user(&self, user_id: &str, code: u16, reason: &'static str) -> usize {
        let mut closed = 0;
        for entry in self.sessions.iter() {
            if &*entry.value().user_id == user_id {
                entry.value().outbox.close(code, reason);
                closed += 1;
            }
        }
        closed
    }

    /// Outbound frames waiting across all connections (sampled for `/metrics`).
    pub fn outbound_queue_depth(&self) -> usize {
        self.sessions.iter().map(|e| e.value().outbox.len()).sum()
    }
}
