//! One typed [`Config`], read from `config/default.toml` (compiled in), an optional
//! file laid over it, then the environment.
//!
//! Every key must be known and well-typed: a mistake stops start-up with a message
//! that names the key (`socket.max_channels: invalid type: string "x", expected u32`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Table, Value};

/// The defaults: the documented file itself, so docs and behaviour cannot drift.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment prefix for `ARMORICORE_SECTION__KEY` overrides.
const ENV_PREFIX: &str = "ARMORICORE_";

/// The original Armoricore's variable names and the keys they set.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("PORT", "server.port"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("MESSAGE_BUS_URL", "bus.url"),
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "cluster.redis_url"),
    ("OBJECT_STORAGE_ENDPOINT", "storage.endpoint"),
    ("OBJECT_STORAGE_ACCESS_KEY", "storage.access_key"),
    ("OBJECT_STORAGE_SECRET_KEY", "storage.secret_key"),
    ("OBJECT_STORAGE_BUCKET", "storage.bucket"),
    ("OBJECT_STORAGE_REGION", "storage.region"),
    ("OPENAI_API_KEY", "ai.openai.api_key"),
    ("OPENAI_ORGANIZATION", "ai.openai.organization"),
    ("ANTHROPIC_API_KEY", "ai.anthropic.api_key"),
];

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub socket: SocketConfig,
    pub channels: ChannelsConfig,
    pub presence: PresenceConfig,
    pub history: HistoryConfig,
    pub limits: LimitsConfig,
    pub bus: BusConfig,
    pub cluster: ClusterConfig,
    pub api: ApiConfig,
    pub dashboard: DashboardConfig,
    pub media: MediaConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub notifications: NotificationsConfig,
    pub ai: AiConfig,
    pub calls: crate::calls::config::CallsConfig,
    pub supervision: SupervisionConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub listen_backlog: i32,
    pub data_dir: PathBuf,
    pub shutdown_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: String,
    pub algorithm: String,
    pub public_key_file: String,
    pub leeway_s: u64,
    pub require_exp: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketConfig {
    pub max_frame_bytes: usize,
    pub max_channels: usize,
    pub join_rate_per_s: u32,
    pub join_burst: u32,
    pub heartbeat_timeout_ms: u64,
    pub outbound_queue_frames: usize,
    pub outbound_queue_bytes: usize,
    pub read_buffer_bytes: usize,
    pub write_buffer_bytes: usize,
    pub longpoll_poll_ms: u64,
    pub longpoll_idle_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelsConfig {
    pub max_content_chars: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    pub broadcast_period_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    pub rules: Vec<HistoryRule>,
    pub idle_ttl_s: u64,
    pub sweep_interval_s: u64,
    pub idempotency_window_s: u64,
}

/// History kept by the topics starting with `prefix` (the longest match wins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub prefix: String,
    /// Messages kept (0: offsets and epoch only).
    pub size: usize,
    /// How long a message is kept, in seconds.
    pub ttl_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub connection_events_per_s: u32,
    pub connection_events_burst: u32,
    pub user_events_per_s: u32,
    pub user_events_burst: u32,
}

/// The message bus (`[bus]` in config/default.toml documents each key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub url: String,
    pub subject_prefix: String,
    pub source: String,
    pub stream: String,
    pub work_max_age_s: u64,
    pub consumer_prefix: String,
    pub dlq_prefix: String,
    pub dlq_stream: String,
    pub dlq_max_age_s: u64,
    pub ack_wait_ms: u64,
    pub max_deliver: u32,
    pub backoff_ms: Vec<u64>,
    pub max_ack_pending: i64,
    pub concurrency: usize,
    pub job_timeout_s: u64,
    pub dedupe_window_s: u64,
    pub buffer_events: usize,
    pub reconnect_max_delay_ms: u64,
    pub answer_unsupported: bool,
    pub publish_chat: bool,
    pub publish_presence: bool,
}

/// Redis for a cluster of nodes (`[cluster]` in config/default.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub redis_url: String,
    pub node_name: String,
    pub channel_prefix: String,
    pub heartbeat_ms: u64,
    pub node_timeout_ms: u64,
    pub buffer_messages: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    pub key: String,
}

/// The operations page (`[dashboard]` in config/default.toml, docs/dashboard.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub password: String,
    pub interval_ms: u64,
    pub token_ttl_s: u64,
}

/// Transcoding (`[media]` in config/default.toml documents each key).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaConfig {
    pub enabled: bool,
    pub concurrency: usize,
    pub ffmpeg: String,
    pub ffprobe: String,
    pub work_dir: String,
    pub input_dirs: Vec<String>,
    pub download_max_mb: u64,
    pub probe_timeout_s: u64,
    pub video_codec: String,
    pub high_codec: String,
    pub preset: String,
    pub hwaccel: String,
    pub segment_s: u32,
    pub gop_s: u32,
    pub segment_type: String,
    pub audio_bitrate_k: u32,
    pub mp4_rungs: Vec<String>,
    pub rungs: Vec<Rung>,
    pub audio: Vec<AudioRendition>,
    pub thumbnails: u32,
    pub thumbnail_width: u32,
    pub sprite_interval_s: u32,
    pub sprite_width: u32,
    pub sprite_columns: u32,
    pub progress_interval_ms: u64,
}

/// One rung of the video ladder: `height` is the short side (360 for 640×360 and
/// for a portrait 360×640).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rung {
    pub name: String,
    pub height: u32,
    pub bitrate_k: u32,
}

/// One audio-only rendition (`codec`: aac, opus, mp3, flac, vorbis).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioRendition {
    pub codec: String,
    pub bitrate_k: u32,
}

/// Where media output goes (`[storage]`): a local directory, or S3-compatible.
/// Push and email delivery (`[notifications]`): a provider is on when configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Notifications in flight at once on this node.
    pub concurrency: usize,
    /// Sends of one notification to one target, retries included.
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Longest Retry-After honoured; a longer one fails the attempt.
    pub retry_after_max_s: u64,
    /// After refusing our credentials a provider is down for this long (jobs fail fast).
    pub down_for_s: u64,
    /// One provider request.
    pub timeout_s: u64,
    pub fcm: FcmConfig,
    pub apns: ApnsConfig,
    pub email: EmailConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// Google service-account JSON; empty: FCM off.
    pub service_account_file: String,
    pub base_url: String,
    pub concurrency: usize,
    /// Sends per second at most (0: no limit).
    pub rate_per_s: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` token-signing key; empty: APNs off (iOS tokens go through FCM).
    pub key_file: String,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `production` or `sandbox`.
    pub environment: String,
    /// Overrides the host `environment` picks (a relay, a test stand-in).
    pub base_url: String,
    pub concurrency: usize,
    /// Sends per second at most (0: no limit).
    pub rate_per_s: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// Empty: email off.
    pub smtp_host: String,
    pub smtp_port: u16,
    /// `starttls`, `tls` (implicit, port 465) or `none`.
    pub tls: String,
    /// PEM file of extra CA certificates to trust (a private relay's own CA);
    /// empty: the system's roots only.
    pub ca_file: String,
    pub username: String,
    pub password: String,
    pub from: String,
    pub reply_to: String,
    pub timeout_s: u64,
    pub concurrency: usize,
    /// Emails per second at most (0: no limit).
    pub rate_per_s: u32,
}

/// AI jobs (`[ai]`): transcription, translation, captions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiConfig {
    /// Jobs of each kind (transcription, translation) this node runs at once.
    pub concurrency: usize,
    /// Requests of one kind, retries included (429, 5xx, timeouts, bad replies).
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub retry_after_max_s: u64,
    /// One provider request at most this long.
    pub timeout_s: u64,
    /// Audio sent for transcription: `mp3`, `ogg` (Opus), `flac` or `wav`.
    pub audio_format: String,
    /// Audio chunks at most this long (they are also kept under `upload_max_mb`).
    pub chunk_max_s: u64,
    /// Chunk cuts look for a silence within this many seconds before the limit.
    pub silence_search_s: u64,
    pub silence_noise_db: i32,
    pub silence_min_ms: u64,
    /// A transcription also writes WebVTT and SRT captions.
    pub captions: bool,
    /// Languages every transcription's captions are translated into.
    pub caption_languages: Vec<String>,
    /// `openai` or `anthropic`: the translation provider when a request names none.
    pub translation_provider: String,
    /// Segments (and characters) per translation request at most.
    pub translation_batch: usize,
    pub translation_batch_chars: usize,
    pub caption_max_line_chars: usize,
    pub caption_max_lines: usize,
    pub caption_max_cue_s: f64,
    pub caption_min_cue_s: f64,
    pub openai: OpenAiConfig,
    pub anthropic: AnthropicConfig,
    pub moderation: ModerationConfig,
}

/// Chat moderation (`[ai.moderation]`) through `ai.openai`'s `/v1/moderations`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModerationConfig {
    /// `off`, `before` (checked before the broadcast) or `after` (checked after).
    pub mode: String,
    /// Flagged messages are kept from the topic: refused (`before`) or deleted (`after`).
    pub withhold: bool,
    /// `before`: publish when the check itself fails (else refuse the message).
    pub fail_open: bool,
    pub model: String,
    pub timeout_ms: u64,
    /// Topic prefixes whose messages are checked.
    pub topics: Vec<String>,
}

/// An OpenAI-compatible API (`[ai.openai]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Set it (or `base_url`, for a local server) to turn OpenAI jobs on.
    pub api_key: String,
    pub organization: String,
    pub base_url: String,
    pub transcription_model: String,
    /// `verbose_json` (timed segments) or `json` (text only: coarse timings).
    pub response_format: String,
    /// The provider refuses uploads above this (OpenAI: 25 MB).
    pub upload_max_mb: u64,
    pub chat_model: String,
}

/// Anthropic's Messages API (`[ai.anthropic]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    pub api_key: String,
    pub base_url: String,
    pub model: String,
    /// The `anthropic-version` header.
    pub version: String,
    pub max_tokens: u32,
}

/// The default OpenAI host: with it, OpenAI is on only with an API key.
pub const OPENAI_HOST: &str = "https://api.openai.com";

impl AiConfig {
    /// Whether the OpenAI-compatible API is configured: a key, or a base URL of
    /// its own (local servers need no key).
    pub fn openai_on(&self) -> bool {
        !self.openai.api_key.is_empty() || self.openai.base_url.trim_end_matches('/') != OPENAI_HOST
    }

    pub fn anthropic_on(&self) -> bool {
        !self.anthropic.api_key.is_empty()
    }
}

/// Where messages and job records are kept (`[database]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `""`: SQLite at `<data_dir>/armoricore.db`; `sqlite://...`; `postgres://...`;
    /// `"off"`: nothing kept (history in memory only, as before persistence).
    pub url: String,
    pub max_connections: u32,
    pub connect_timeout_s: u64,
    /// Messages written in one transaction at most.
    pub batch_max: usize,
    /// How long the writer waits for a batch to fill (0: commit what is there).
    pub batch_linger_ms: u64,
    /// Messages one history page gives at most.
    pub page_max: usize,
    pub retention_interval_s: u64,
    /// Finished jobs are deleted this many days after they ended (0: kept).
    pub job_retention_days: u64,
    pub retention: Vec<RetentionRule>,
}

/// Messages of topics starting with `prefix` are kept `days` days and/or the
/// newest `count` per topic (the longest matching prefix applies).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    pub prefix: String,
    #[serde(default)]
    pub days: Option<u64>,
    #[serde(default)]
    pub count: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub local_dir: String,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    pub region: String,
    pub path_style: bool,
    pub public_url: String,
    pub multipart_threshold_mb: u64,
    pub max_retries: usize,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub retry_timeout_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionConfig {
    pub max_restarts: u32,
    pub window_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Defaults, then `file`, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(file, std::env::vars())
    }

    /// Defaults, then `file`, then the given environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: Table = DEFAULT_TOML
            .parse()
            .expect("config/default.toml is valid TOML");
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let overlay: Table = text.parse().map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                source: Box::new(e),
            })?;
            merge(&mut table, overlay, "")?;
        }
        apply_env(&mut table, env)?;
        let config: Config =
            serde_path_to_error::deserialize(Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                invalid(&key, e.into_inner().to_string())
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Defaults only (tests start from here and adjust fields).
    pub fn defaults() -> Config {
        Config::load_from(None, std::iter::empty()).expect("defaults are valid")
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_database()?;
        self.calls.validate()?;
        crate::protocols::jwt::parse_algorithm(&self.auth.algorithm)
            .map_err(|e| invalid("auth.algorithm", e.to_string()))?;
        if self.auth.algorithm != "HS256" && self.auth.public_key_file.is_empty() {
            return Err(invalid(
                "auth.public_key_file",
                format!("required when auth.algorithm = {:?}", self.auth.algorithm),
            ));
        }
        let positive: [(&str, u64); 22] = [
            ("dashboard.interval_ms", self.dashboard.interval_ms),
            ("dashboard.token_ttl_s", self.dashboard.token_ttl_s),
            ("cluster.heartbeat_ms", self.cluster.heartbeat_ms),
            ("cluster.node_timeout_ms", self.cluster.node_timeout_ms),
            (
                "cluster.buffer_messages",
                self.cluster.buffer_messages as u64,
            ),
            ("bus.ack_wait_ms", self.bus.ack_wait_ms),
            ("bus.max_deliver", self.bus.max_deliver as u64),
            ("bus.concurrency", self.bus.concurrency as u64),
            ("bus.buffer_events", self.bus.buffer_events as u64),
            (
                "bus.max_ack_pending",
                self.bus.max_ack_pending.max(0) as u64,
            ),
            (
                "limits.connection_events_burst",
                self.limits.connection_events_burst as u64,
            ),
            (
                "limits.user_events_burst",
                self.limits.user_events_burst as u64,
            ),
            (
                "socket.outbound_queue_bytes",
                self.socket.outbound_queue_bytes as u64,
            ),
            ("history.sweep_interval_s", self.history.sweep_interval_s),
            (
                "server.listen_backlog",
                self.server.listen_backlog.max(0) as u64,
            ),
            ("socket.max_frame_bytes", self.socket.max_frame_bytes as u64),
            ("socket.max_channels", self.socket.max_channels as u64),
            ("socket.join_burst", self.socket.join_burst as u64),
            (
                "socket.heartbeat_timeout_ms",
                self.socket.heartbeat_timeout_ms,
            ),
            (
                "socket.outbound_queue_frames",
                self.socket.outbound_queue_frames as u64,
            ),
            ("socket.longpoll_poll_ms", self.socket.longpoll_poll_ms),
            ("supervision.window_ms", self.supervision.window_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if (self.bus.max_ack_pending as u64) < self.bus.concurrency as u64 {
            return Err(invalid(
                "bus.max_ack_pending",
                "must be at least bus.concurrency (NATS stops delivering at the limit)",
            ));
        }
        let ai = &self.ai;
        for (key, value, allowed) in [
            (
                "ai.audio_format",
                &ai.audio_format,
                &["mp3", "ogg", "flac", "wav"][..],
            ),
            (
                "ai.translation_provider",
                &ai.translation_provider,
                &["openai", "anthropic"][..],
            ),
            (
                "ai.openai.response_format",
                &ai.openai.response_format,
                &["verbose_json", "json"][..],
            ),
            (
                "ai.moderation.mode",
                &ai.moderation.mode,
                &["off", "before", "after"][..],
            ),
        ] {
            if !allowed.contains(&value.as_str()) {
                return Err(invalid(
                    key,
                    format!("{value:?} is not one of {}", allowed.join(", ")),
                ));
            }
        }
        if ai.moderation.mode != "off" && !ai.openai_on() {
            return Err(invalid(
                "ai.moderation.mode",
                "needs ai.openai (an API key, or the base_url of a compatible server)",
            ));
        }
        if ai.concurrency == 0 || ai.max_attempts == 0 || ai.translation_batch == 0 {
            return Err(invalid(
                "ai",
                "concurrency, max_attempts and translation_batch must be greater than 0",
            ));
        }
        if !(ai.caption_min_cue_s > 0.0 && ai.caption_max_cue_s > ai.caption_min_cue_s) {
            return Err(invalid(
                "ai.caption_max_cue_s",
                "must be greater than ai.caption_min_cue_s, itself greater than 0",
            ));
        }
        if (self.bus.max_ack_pending as u64) < self.notifications.concurrency as u64 {
            return Err(invalid(
                "bus.max_ack_pending",
                "must be at least notifications.concurrency (NATS stops delivering at the limit)",
            ));
        }
        let redis = &self.cluster.redis_url;
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return Err(invalid(
                "cluster.redis_url",
                format!("expected redis://host:port, got {redis:?}"),
            ));
        }
        if self.cluster.node_timeout_ms <= self.cluster.heartbeat_ms {
            return Err(invalid(
                "cluster.node_timeout_ms",
                "must be greater than cluster.heartbeat_ms",
            ));
        }
        if self.bus.backoff_ms.is_empty() {
            return Err(invalid("bus.backoff_ms", "needs at least one delay"));
        }
        let bus_url = &self.bus.url;
        if !bus_url.is_empty()
            && !bus_url
                .split(',')
                .all(|u| u.trim().starts_with("nats://") || u.trim().starts_with("tls://"))
        {
            return Err(invalid(
                "bus.url",
                format!("expected nats://host:port (or tls://), got {bus_url:?}"),
            ));
        }
        if self.socket.longpoll_idle_ms <= self.socket.longpoll_poll_ms {
            return Err(invalid(
                "socket.longpoll_idle_ms",
                "must be greater than socket.longpoll_poll_ms",
            ));
        }
        self.validate_media()?;
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            return Err(invalid("log.level", "not a valid RUST_LOG filter"));
        }
        Ok(())
    }

    fn validate_database(&self) -> Result<(), ConfigError> {
        let d = &self.database;
        let url = d.url.trim();
        if !(url.is_empty()
            || url == "off"
            || url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "expected \"\" (SQLite under data_dir), sqlite://PATH, postgres://... or \"off\"",
            ));
        }
        for (key, value) in [
            ("database.max_connections", d.max_connections as u64),
            ("database.batch_max", d.batch_max as u64),
            ("database.page_max", d.page_max as u64),
            ("database.retention_interval_s", d.retention_interval_s),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for rule in &d.retention {
            if rule.days.is_none() && rule.count.is_none() {
                return Err(invalid(
                    "database.retention",
                    format!("rule {:?} needs days, count or both", rule.prefix),
                ));
            }
            if rule.count == Some(0) {
                return Err(invalid(
                    "database.retention",
                    format!("rule {:?}: count must be at least 1", rule.prefix),
                ));
            }
        }
        Ok(())
    }

    fn validate_media(&self) -> Result<(), ConfigError> {
        let m = &self.media;
        for (key, value) in [
            ("media.segment_s", m.segment_s),
            ("media.gop_s", m.gop_s),
            ("media.audio_bitrate_k", m.audio_bitrate_k),
            ("media.thumbnail_width", m.thumbnail_width),
            ("media.sprite_interval_s", m.sprite_interval_s),
            ("media.sprite_width", m.sprite_width),
            ("media.sprite_columns", m.sprite_columns),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if !m.segment_s.is_multiple_of(m.gop_s) {
            return Err(invalid(
                "media.segment_s",
                "must be a multiple of media.gop_s (segments start on keyframes)",
            ));
        }
        for (key, value) in [
            ("media.video_codec", &m.video_codec),
            ("media.high_codec", &m.high_codec),
        ] {
            if crate::media::ladder::Codec::parse(value).is_none() {
                return Err(invalid(
                    key,
                    format!("expected h264, h265, vp9, av1 or vvc, got {value:?}"),
                ));
            }
        }
        let one_of = |key: &str, value: &str, allowed: &[&str]| {
            if allowed.contains(&value) {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("expected one of {allowed:?}, got {value:?}"),
                ))
            }
        };
        one_of(
            "media.segment_type",
            &m.segment_type,
            &["auto", "ts", "fmp4"],
        )?;
        if !(m.hwaccel == "none"
            || m.hwaccel == "auto"
            || crate::media::ladder::Hw::parse(&m.hwaccel).is_some())
        {
            return Err(invalid(
                "media.hwaccel",
                format!(
                    "expected none, auto, nvenc, vaapi, qsv or videotoolbox, got {:?}",
                    m.hwaccel
                ),
            ));
        }
        if m.rungs.is_empty() {
            return Err(invalid("media.rungs", "needs at least one rung"));
        }
        for (i, rung) in m.rungs.iter().enumerate() {
            if rung.height < 16 || rung.bitrate_k == 0 || rung.name.is_empty() {
                return Err(invalid(
                    &format!("media.rungs[{i}]"),
                    "needs a name, height ≥ 16 and bitrate_k > 0",
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, rung) in m.rungs.iter().enumerate() {
            if !names.insert(rung.name.clone()) {
                return Err(invalid(
                    &format!("media.rungs[{i}]"),
                    format!("{:?} named twice", rung.name),
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in m.audio.iter().enumerate() {
            let name = crate::media::ladder::audio_name(a);
            if !names.insert(name.clone()) {
                return Err(invalid(
                    &format!("media.audio[{i}]"),
                    format!("{name} listed twice (same codec and bitrate)"),
                ));
            }
            let key = format!("media.audio[{i}].codec");
            one_of(&key, &a.codec, &["aac", "opus", "mp3", "flac", "vorbis"])?;
            if a.codec != "flac" && !(8..=512).contains(&a.bitrate_k) {
                return Err(invalid(
                    &format!("media.audio[{i}].bitrate_k"),
                    "expected 8 to 512",
                ));
            }
        }
        let s = &self.storage;
        if !s.endpoint.is_empty() {
            if !(s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://")) {
                return Err(invalid(
                    "storage.endpoint",
                    format!("expected http(s)://host:port, got {:?}", s.endpoint),
                ));
            }
            if s.bucket.is_empty() {
                return Err(invalid(
                    "storage.bucket",
                    "required with storage.endpoint (OBJECT_STORAGE_BUCKET)",
                ));
            }
        }
        if s.multipart_threshold_mb < 5 {
            return Err(invalid(
                "storage.multipart_threshold_mb",
                "must be at least 5 (S3's smallest part)",
            ));
        }
        Ok(())
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.socket.heartbeat_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.server.shutdown_timeout_ms)
    }

    pub fn dashboard_interval(&self) -> Duration {
        Duration::from_millis(self.dashboard.interval_ms)
    }
}

/// Lay `overlay` over `base`; keys must already exist in `base` (the defaults).
fn merge(base: &mut Table, overlay: Table, prefix: &str) -> Result<(), ConfigError> {
    for (key, value) in overlay {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match (base.get_mut(&key), value) {
            (None, _) => return Err(invalid(&path, "unknown key")),
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o, &path)?,
            (Some(Value::Table(_)), _) => return Err(invalid(&path, "expected a table")),
            (Some(slot), v) => *slot = v,
        }
    }
    Ok(())
}

/// Apply `ARMORICORE_SECTION__KEY` and the legacy names. The value is typed by the
/// default it replaces, so `JWT_SECRET=123` stays a string and `PORT=x` is an error.
fn apply_env(
    table: &mut Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut overrides = Vec::new();
    for (name, raw) in env {
        // Only names with a `__` are config keys: ARMORICORE_CONFIG and friends are not.
        if let Some(rest) = name.strip_prefix(ENV_PREFIX).filter(|r| r.contains("__")) {
            let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if parts.iter().any(String::is_empty) {
                return Err(invalid(
                    &name,
                    "expected ARMORICORE_<SECTION>__<KEY> (or <SECTION>__<SUBSECTION>__<KEY>)",
                ));
            }
            overrides.push((name, parts, raw));
        } else if let Some((_, path)) = LEGACY_ENV.iter().find(|(n, _)| *n == name) {
            overrides.push((
                name.clone(),
                path.split('.').map(str::to_string).collect(),
                raw,
            ));
        }
    }
    for (name, parts, raw) in overrides {
        let path = parts.join(".");
        let (key, sections) = parts.split_last().expect("at least two parts");
        let slot = sections
            .iter()
            .try_fold(&mut *table, |t, s| {
                t.get_mut(s).and_then(Value::as_table_mut)
            })
            .and_then(|t| t.get_mut(key))
            .ok_or_else(|| invalid(&path, format!("unknown key (from {name})")))?;
        *slot = match slot {
            Value::String(_) => Value::String(raw),
            Value::Integer(_) => raw.trim().parse::<i64>().map(Value::Integer).map_err(|_| {
                invalid(
                    &path,
                    format!("expected an integer, got {raw:?} (from {name})"),
                )
            })?,
            Value::Boolean(_) => raw
                .trim()
                .parse::<bool>()
                .map(Value::Boolean)
                .map_err(|_| {
                    invalid(
                        &path,
                        format!("expected true or false, got {raw:?} (from {name})"),
                    )
                })?,
            Value::Array(_) => env_array(&raw).ok_or_else(|| {
                invalid(
                    &path,
                    format!(
                        "expected comma-separated values or a TOML array, got {raw:?} (from {name})"
                    ),
                )
            })?,
            _ => {
                return Err(invalid(
                    &path,
                    format!("cannot be set from the environment ({name})"),
                ));
            }
        };
    }
    Ok(())
}

/// An array from the environment: TOML (`["a", "b"]`, `[1, 2]`) or comma-separated
/// items, each an integer when it reads as one and a string otherwise.
fn env_array(raw: &str) -> Option<Value> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        let table: Table = format!("v = {raw}").parse().ok()?;
        return table.get("v").filter(|v| v.is_array()).cloned();
    }
    let items = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<i64>()
                .map(Value::Integer)
                .unwrap_or_else(|_| Value::String(s.to_string()))
        })
        .collect();
    Some(Value::Array(items))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_from_the_environment() {
        let ints = Value::Array(vec![Value::Integer(1), Value::Integer(2)]);
        assert_eq!(env_array("1, 2"), Some(ints.clone()));
        assert_eq!(env_array("[1, 2]"), Some(ints));
        let strs = Value::Array(vec![
            Value::String("127.0.0.1".into()),
            Value::String("::1".into()),
        ]);
        assert_eq!(env_array("127.0.0.1,::1"), Some(strs.clone()));
        assert_eq!(env_array(r#"["127.0.0.1", "::1"]"#), Some(strs));
        assert_eq!(env_array(""), Some(Value::Array(vec![])));
        assert_eq!(env_array("[1,"), None);
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load() {
        let c = Config::defaults();
        assert_eq!(c.server.port, 4000);
        assert_eq!(c.socket.max_frame_bytes, 65536);
        assert_eq!(c.log.format, LogFormat::Text);
    }

    #[test]
    fn env_overrides_and_legacy_names() {
        let c = Config::load_from(
            None,
            env(&[
                ("PORT", "4100"),
                ("JWT_SECRET", "123"),
                ("ARMORICORE_SOCKET__MAX_CHANNELS", "7"),
                ("MESSAGE_BUS_URL", "nats://127.0.0.1:4222"),
                ("ARMORICORE_BUS__BACKOFF_MS", "10, 20"),
                (
                    "ARMORICORE_NOTIFICATIONS__FCM__BASE_URL",
                    "http://relay:8080",
                ),
            ]),
        )
        .unwrap();
        assert_eq!(c.notifications.fcm.base_url, "http://relay:8080");
        assert_eq!(c.bus.url, "nats://127.0.0.1:4222");
        assert_eq!(c.bus.backoff_ms, vec![10, 20]);
        assert_eq!(c.server.port, 4100);
        assert_eq!(c.auth.jwt_secret, "123");
        assert_eq!(c.socket.max_channels, 7);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::load_from(None, env(&[("PORT", "http")])).unwrap_err();
        assert!(e.to_string().starts_with("server.port:"), "{e}");
        let e = Config::load_from(None, env(&[("ARMORICORE_SOCKET__NOPE", "1")])).unwrap_err();
        assert!(e.to_string().starts_with("socket.nope: unknown key"), "{e}");
        let e = Config::load_from(None, env(&[("ARMORICORE_SOCKET__A__B", "1")])).unwrap_err();
        assert!(e.to_string().starts_with("socket.a.b: unknown key"), "{e}");
        let e = Config::load_from(None, env(&[("ARMORICORE_SOCKET____B", "1")])).unwrap_err();
        assert!(e.to_string().contains("ARMORICORE_<SECTION>__<KEY>"), "{e}");
        assert!(Config::load_from(None, env(&[("ARMORICORE_CONFIG", "x.toml")])).is_ok());
        let e = Config::load_from(None, env(&[("PORT", "70000")])).unwrap_err();
        assert!(e.to_string().starts_with("server.port:"), "{e}");
        let e =
            Config::load_from(None, env(&[("ARMORICORE_AUTH__ALGORITHM", "none")])).unwrap_err();
        assert!(e.to_string().starts_with("auth.algorithm:"), "{e}");
        let e = Config::load_from(None, env(&[("MESSAGE_BUS_URL", "localhost")])).unwrap_err();
        assert!(
            e.to_string().starts_with("bus.url: expected nats://"),
            "{e}"
        );
        let e = Config::load_from(None, env(&[("ARMORICORE_BUS__BACKOFF_MS", "1,x")])).unwrap_err();
        assert!(
            e.to_string().starts_with("bus.backoff_ms[1]: invalid type"),
            "{e}"
        );
        let e = Config::load_from(None, env(&[("ARMORICORE_MEDIA__SEGMENT_S", "5")])).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("media.segment_s: must be a multiple"),
            "{e}"
        );
        let e = Config::load_from(None, env(&[("ARMORICORE_MEDIA__VIDEO_CODEC", "mpeg2")]))
            .unwrap_err();
        assert!(e.to_string().starts_with("media.video_codec:"), "{e}");
        let e = Config::load_from(None, env(&[("OBJECT_STORAGE_ENDPOINT", "http://s3:9000")]))
            .unwrap_err();
        assert!(e.to_string().starts_with("storage.bucket: required"), "{e}");
    }

    #[test]
    fn file_overlay_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[socket]\nmax_channels = 3\n").unwrap();
        let c = Config::load_from(Some(&path), std::iter::empty()).unwrap();
        assert_eq!(c.socket.max_channels, 3);
        std::fs::write(&path, "[socket]\nmax_chanels = 3\n").unwrap();
        let e = Config::load_from(Some(&path), std::iter::empty()).unwrap_err();
        assert!(
            e.to_string().starts_with("socket.max_chanels: unknown key"),
            "{e}"
        );
        std::fs::write(
            &path,
            "[media]\naudio = [{ codec = \"flac\", bitrate_k = 0 }, { codec = \"flac\", bitrate_k = 1 }]\n",
        )
        .unwrap();
        let e = Config::load_from(Some(&path), std::iter::empty()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("media.audio[1]: flac listed twice"),
            "{e}"
        );
        std::fs::write(&path, "[log]\nformat = \"xml\"\n").unwrap();
        let e = Config::load_from(Some(&path), std::iter::empty()).unwrap_err();
        assert!(e.to_string().starts_with("log.format:"), "{e}");
    }
}
