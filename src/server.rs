//! Starting and stopping a node: the testable entry point.
//!
//! [`Node::start`] takes an already-bound listener (tests bind `127.0.0.1:0`), a
//! config and a channel router, builds the [`Hub`] and spawns the RootSupervisor.
//! [`Node::shutdown`] is what SIGTERM does: stop accepting, close every socket with
//! 1001, wait for sessions to end (at most `server.shutdown_timeout_ms`), stop the tree.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::notification::{NotifyJobs, NotifyService};
use crate::actors::transcode::{MediaJobs, MediaService};
use crate::channels::Router;
use crate::config::Config;
use crate::hub::{Hub, Services};
use crate::jobs::Jobs;
use crate::media::Transcoder;
use crate::metrics::Metrics;
use crate::protocols::jwt::{self, KeyError, Verifier};
use crate::supervisors::root::{Child, RootArgs, RootMsg, RootSupervisor};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("auth: {0}")]
    Key(#[from] KeyError),
    #[error("JWT secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("message bus: {0}")]
    Bus(#[from] crate::bus::BusError),
    #[error("cluster: {0}")]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Notify(#[from] crate::notify::sender::SetupError),
    #[error("ai: {0}")]
    Ai(#[from] crate::ai::AiError),
    #[error("calls: {0}")]
    Calls(#[from] crate::calls::CallError),
    #[error("supervision tree failed to start: {0}")]
    Spawn(#[from] ractor::SpawnErr),
}

/// Bind the node's listening socket with an explicit accept backlog (`std`'s
/// `TcpListener::bind` uses 128, which drops SYNs in a reconnect storm).
pub fn bind(host: &str, port: u16, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("no address for {host}"),
        )
    })?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

/// The HS256 secret: configured, or generated once into `<data_dir>/jwt_secret` (0600).
pub fn hs256_secret(config: &Config) -> Result<Vec<u8>, StartError> {
    if !config.auth.jwt_secret.is_empty() {
        return Ok(config.auth.jwt_secret.as_bytes().to_vec());
    }
    let path = config.server.data_dir.join("jwt_secret");
    let err = |source| StartError::SecretFile {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(&config.server.data_dir).map_err(err)?;
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_private(&path, &secret).map_err(err)?;
    tracing::warn!(path = %path.display(), "no JWT_SECRET configured: generated a random secret");
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())
}

/// The token verifier the configuration describes (with the dashboard's key
/// when the dashboard is on).
pub fn verifier(config: &Config) -> Result<Verifier, StartError> {
    let verifier = app_verifier(config)?;
    Ok(match crate::http::dashboard::token_key(config) {
        Some(key) => verifier.with_dashboard_key(&key),
        None => verifier,
    })
}

fn app_verifier(config: &Config) -> Result<Verifier, StartError> {
    let leeway = Duration::from_secs(config.auth.leeway_s);
    let alg = jwt::parse_algorithm(&config.auth.algorithm)?;
    if alg == jsonwebtoken::Algorithm::HS256 {
        Ok(Verifier::hs256(
            &hs256_secret(config)?,
            leeway,
            config.auth.require_exp,
        ))
    } else {
        Ok(Verifier::from_public_key_file(
            alg,
            &config.auth.public_key_file,
            leeway,
            config.auth.require_exp,
        )?)
    }
}

/// Add the transcoder as the `media.uploaded` handler, unless media is off, the
/// caller brought its own handler, or ffmpeg cannot run here (then the node runs
/// without it and says so).
async fn with_media(
    config: &Config,
    jobs: Jobs,
    metrics: &Arc<Metrics>,
) -> (Jobs, Option<Arc<MediaService>>) {
    if !config.media.enabled || jobs.get(crate::bus::events::MEDIA_UPLOADED).is_some() {
        return (jobs, None);
    }
    match Transcoder::new(config).await {
        Ok(transcoder) => {
            let encoders = transcoder.encoders().video_codecs();
            let service = Arc::new(MediaService::new(
                transcoder,
                config.media.concurrency,
                metrics.clone(),
            ));
            tracing::info!(
                concurrency = service.limit(),
                storage = service.transcoder.storage().kind(),
                encoders = %encoders.join(", "),
                "transcoding"
            );
            let jobs = jobs.with(
                crate::bus::events::MEDIA_UPLOADED,
                MediaJobs(service.clone()),
            );
            (jobs, Some(service))
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "transcoding off: media.uploaded is answered not_supported (or left to other workers with bus.answer_unsupported = false)"
            );
            (jobs, None)
        }
    }
}

/// Add notification sending as the `notification.requested` handler when a provider
/// is configured and the caller brought no handler of its own. A provider whose
/// credentials cannot be read stops start-up.
fn with_notifications(
    config: &Config,
    jobs: Jobs,
    metrics: &Arc<Metrics>,
    store: &Option<Arc<crate::store::Store>>,
) -> Result<(Jobs, Option<Arc<NotifyService>>), StartError> {
    if jobs
        .get(crate::bus::events::NOTIFICATION_REQUESTED)
        .is_some()
    {
        return Ok((jobs, None));
    }
    let Some(sender) =
        crate::notify::sender::Sender::from_config(&config.notifications, metrics.clone())?
    else {
        return Ok((jobs, None));
    };
    let providers: Vec<&str> = sender.status().iter().map(|(p, _)| *p).collect();
    tracing::info!(providers = %providers.join(", "), "notifications");
    let service = Arc::new(NotifyService::new(
        sender,
        config.notifications.concurrency,
        Duration::from_secs(config.bus.dedupe_window_s),
        store.clone(),
    ));
    let jobs = jobs.with(
        crate::bus::events::NOTIFICATION_REQUESTED,
        NotifyJobs(service.clone()),
    );
    Ok((jobs, Some(service)))
}

/// Add the AI jobs (transcription, translation) when an AI provider is
/// configured, for the kinds the caller brought no handler of its own.
fn with_ai(
    config: &Config,
    mut jobs: Jobs,
    metrics: &Arc<Metrics>,
) -> Result<(Jobs, Option<Arc<crate::actors::ai::AiService>>), StartError> {
    use crate::actors::ai::{AiService, TranscriptionJobs, TranslationJobs};
    use crate::bus::events::{TRANSCRIPTION_REQUESTED, TRANSLATION_REQUESTED};
    let Some(service) = AiService::from_config(config, metrics.clone())? else {
        return Ok((jobs, None));
    };
    tracing::info!(providers = %service.providers().join(", "), "AI jobs");
    let service = Arc::new(service);
    if jobs.get(TRANSCRIPTION_REQUESTED).is_none() {
        jobs = jobs.with(TRANSCRIPTION_REQUESTED, TranscriptionJobs(service.clone()));
    }
    if jobs.get(TRANSLATION_REQUESTED).is_none() {
        jobs = jobs.with(TRANSLATION_REQUESTED, TranslationJobs(service.clone()));
    }
    Ok((jobs, Some(service)))
}

/// The database `database.url` names (none when `off`), migrated.
pub async fn open_store(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<crate::store::Store>>, StartError> {
    let Some(url) = crate::store::resolve_url(&config.database, &config.server.data_dir) else {
        tracing::info!("database off: messages and jobs are not kept");
        return Ok(None);
    };
    let store = crate::store::Store::open(&url, &config.database, metrics.clone()).await?;
    tracing::info!(backend = store.backend().name(), "database");
    Ok(Some(Arc::new(store)))
}

/// A running node.
pub struct Node {
    hub: Arc<Hub>,
    root: ActorRef<RootMsg>,
    root_done: JoinHandle<()>,
    addr: SocketAddr,
}

impl Node {
    /// Start a node serving on `listener` with the routes in `router` and the
    /// standard job handlers (transcoding, when `media.enabled`).
    pub async fn start(
        config: Config,
        router: Router,
        listener: std::net::TcpListener,
    ) -> Result<Node, StartError> {
        Node::start_with_jobs(config, router, Jobs::new(), listener).await
    }

    /// Start a node with the job handlers in `jobs`, plus transcoding for
    /// `media.uploaded` when `media.enabled` and `jobs` has no handler for it.
    pub async fn start_with_jobs(
        config: Config,
        router: Router,
        jobs: Jobs,
        listener: std::net::TcpListener,
    ) -> Result<Node, StartError> {
        let verifier = verifier(&config)?;
        let addr = listener.local_addr().map_err(StartError::Listener)?;
        let metrics = Arc::new(Metrics::new());
        // Unique per host and port, and the same when this node restarts.
        let node_name = if config.cluster.node_name.is_empty() {
            format!("{}:{}", crate::cluster::hostname(), addr.port())
        } else {
            config.cluster.node_name.clone()
        };
        let store = open_store(&config, &metrics).await?;
        let journal = store.clone().map(|store| crate::bus::memory::Journal {
            store,
            node: node_name.clone(),
        });
        let bus = crate::bus::connect(&config.bus, metrics.clone(), journal).await?;
        tracing::info!(bus = bus.kind(), "message bus");
        let cluster = if config.cluster.redis_url.is_empty() {
            None
        } else {
            let mut cluster_config = config.cluster.clone();
            cluster_config.node_name = node_name.clone();
            let c = crate::cluster::Cluster::connect(cluster_config, metrics.clone())?;
            tracing::info!(node = %c.node_id, "cluster through Redis");
            Some(Arc::new(c))
        };
        let (jobs, media) = with_media(&config, jobs, &metrics).await;
        let (jobs, notify) = with_notifications(&config, jobs, &metrics, &store)?;
        let (jobs, ai) = with_ai(&config, jobs, &metrics)?;
        let moderation = crate::ai::moderation::Moderator::from_config(
            &config.ai.moderation,
            &config.ai.openai,
            crate::ai::Meter {
                metrics: metrics.clone(),
            },
        )?
        .map(Arc::new);
        let calls = if config.calls.enabled {
            let outlet =
                crate::bus::outlet::Outlet::new(bus.clone(), config.bus.clone(), metrics.clone());
            Some(crate::calls::Calls::start(
                config.calls.clone(),
                metrics.clone(),
                outlet,
                node_name.clone(),
                cluster.clone(),
            )?)
        } else {
            None
        };
        let services = Services {
            bus,
            jobs,
            calls,
            cluster,
            media,
            notify,
            ai,
            moderation,
            store,
            node_name,
        };
        let hub = Arc::new(Hub::new(config, router, verifier, metrics, services));
        if let Some(cluster) = hub.pubsub.cluster() {
            let weak = Arc::downgrade(&hub);
            cluster.set_summary(Arc::new(move || {
                weak.upgrade().map_or(serde_json::Value::Null, |hub| {
                    crate::dashboard::node_summary(&hub)
                })
            }));
        }
        let args = RootArgs {
            hub: hub.clone(),
            listener: Arc::new(listener),
        };
        let (root, root_done) = Actor::spawn(None, RootSupervisor, args).await?;
        Ok(Node {
            hub,
            root,
            root_done,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// The current actor of one of the root's children.
    pub async fn child(&self, which: Child) -> Option<ractor::ActorCell> {
        ractor::call!(self.root, RootMsg::Child, which)
            .ok()
            .flatten()
    }

    /// Wait until the supervision tree stops by itself (restart intensity exceeded).
    pub async fn stopped(&mut self) {
        let _ = (&mut self.root_done).await;
    }

    /// Graceful stop: no new connections, every socket closed with 1001, sessions
    /// given `server.shutdown_timeout_ms` to end, then the tree stops.
    pub async fn shutdown(self) {
        let started = Instant::now();
        self.hub.begin_shutdown();
        self.hub.close_all_sessions(1001, "server shutting down");
        self.hub.longpoll.end_all();
        let deadline = started + self.hub.config.shutdown_timeout();
        while !self.hub.sessions.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let remaining = self.hub.sessions.len();
        self.root.stop(None);
        let _ = self.root_done.await;
        if let Some(cluster) = self.hub.pubsub.cluster() {
            cluster.stop().await;
        }
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            remaining,
            "stopped"
        );
    }
}
