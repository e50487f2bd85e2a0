//! Every Prometheus series Armoricore exports, defined in one place.
//!
//! One [`Metrics`] per node (not the global registry), so tests can run several
//! nodes in one process and read each node's own numbers.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The node's metrics and the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    /// Open connections by transport (`websocket`, `longpoll`).
    pub connections: IntGaugeVec,
    /// Connection attempts by transport and result (`ok`, `unauthorized`, `forbidden`, `bad_request`).
    pub connects: IntCounterVec,
    /// Channel joins by result (`ok`, `error`).
    pub joins: IntCounterVec,
    /// Frames received from clients.
    pub messages_in: IntCounter,
    /// Frames queued to clients (replies, pushes and every broadcast delivery).
    pub messages_out: IntCounter,
    /// Time to queue one broadcast to every local subscriber.
    pub fanout_seconds: Histogram,
    /// Subscribers a broadcast was queued to.
    pub fanout_subscribers: Histogram,
    /// Connections closed because their outbound queue was full.
    pub slow_consumers: IntCounter,
    /// Outbound frames waiting in connection queues (sampled at scrape).
    pub outbound_queue_depth: IntGauge,
    /// Failed children handled by a supervisor, by supervisor. Sessions and channels
    /// are restarted by the client's automatic reconnect/rejoin, as in Phoenix.
    pub restarts: IntCounterVec,
    /// Presence entries (one per tracked channel join).
    pub presences: IntGauge,
    /// Frames refused as malformed, oversize or unsupported.
    pub bad_frames: IntCounterVec,
    /// Client events refused by a rate limit.
    pub rate_limited: IntCounter,
    /// 1 while the message bus is reachable.
    pub bus_connected: IntGauge,
    /// Reconnections to the message bus after a loss.
    pub bus_reconnects: IntCounter,
    /// Events received from the bus, by subject (work deliveries and plain events).
    pub bus_events_in: IntCounterVec,
    /// Events this node put on the bus, by subject.
    pub bus_events_out: IntCounterVec,
    /// Events sent to the dead letters, by subject and reason (`invalid`, `max_deliveries`).
    pub bus_dead_letters: IntCounterVec,
    /// Work deliveries that were redeliveries, by subject.
    pub bus_redeliveries: IntCounterVec,
    /// Deliveries of an `event_id` already handled within the dedupe window, by subject.
    pub bus_duplicates: IntCounterVec,
    /// Events that could not be put on the bus (buffer full while unreachable).
    pub bus_dropped: IntCounter,
    /// Work waiting in the bus, by subject (sampled every few seconds).
    pub bus_pending: IntGaugeVec,
    /// Work handed out and not yet acknowledged, cluster-wide, by subject. At
    /// `bus.max_ack_pending` NATS stops delivering: keep an alert below it.
    pub bus_ack_pending: IntGaugeVec,
    /// 1 while both Redis connections (publish, subscribe) are up (cluster mode).
    pub redis_connected: IntGauge,
    /// Reconnections to Redis.
    pub redis_reconnects: IntCounter,
    /// Round trip of a Redis publish (the heartbeat's).
    pub redis_roundtrip_seconds: Histogram,
    /// Broadcasts received from other nodes.
    pub redis_messages_in: IntCounter,
    /// Broadcasts not sent to or not received from other nodes (buffer full, lag).
    pub redis_dropped: IntCounter,
    /// Nodes alive in the cluster, this one included.
    pub cluster_nodes: IntGauge,
    /// Jobs running on this node.
    pub jobs_running: IntGauge,
    /// Jobs ended, by work subject and result (`done`, `failed`, `retry`, `not_supported`).
    pub jobs: IntCounterVec,
    /// Time from a work delivery to its acknowledgement.
    pub job_seconds: Histogram,
    /// Transcodes running, and waiting for a slot (`media.concurrency`).
    pub media_jobs_running: IntGauge,
    pub media_jobs_queued: IntGauge,
    /// Time to commit one batch of messages to the database.
    pub store_write_seconds: Histogram,
    /// Messages per committed batch.
    pub store_batch_messages: Histogram,
    /// Database operations that failed, by operation.
    pub store_errors: IntCounterVec,
    /// Messages deleted by retention.
    pub store_retention_deleted: IntCounter,
    /// Notification sends by provider and result (`sent`, `invalid_token`,
    /// `permanent`, `auth`, `transient`, `provider_down`).
    pub notify_sends: IntCounterVec,
    /// Provider request time, by provider.
    pub notify_seconds: prometheus::HistogramVec,
    /// Provider requests in flight, by provider.
    pub notify_in_flight: IntGaugeVec,
    /// Retries after a transient failure, by provider.
    pub notify_retries: IntCounterVec,
    /// AI provider requests by provider, operation and result (`ok` or the
    /// failure class).
    pub ai_requests: IntCounterVec,
    /// AI provider request time, by provider and operation.
    pub ai_request_seconds: prometheus::HistogramVec,
    /// Tokens AI providers reported, by provider and direction (`input`, `output`).
    pub ai_tokens: IntCounterVec,
    /// Calls running on this node, their participants and published tracks.
    pub rtc_calls: IntGauge,
    pub rtc_participants: IntGauge,
    pub rtc_tracks: IntGauge,
    /// RTP packets received on published tracks.
    pub rtc_packets_in: IntCounter,
    /// RTP packets (and payload bytes) sent to subscribers.
    pub rtc_packets_forwarded: IntCounter,
    pub rtc_bytes_forwarded: IntCounter,
    /// Time from a packet's arrival to its copy leaving for one subscriber.
    pub rtc_forward_seconds: Histogram,
    /// Keyframe requests (PLI/FIR) sent to publishers.
    pub rtc_keyframe_requests: IntCounter,
    /// NACKs received from subscribers (answered from the retransmission buffer).
    pub rtc_nacks: IntCounter,
    /// Media packets dropped, by reason.
    pub rtc_dropped: IntCounterVec,
    /// Datagrams no participant claimed.
    pub rtc_unrouted: IntCounter,
    /// Datagrams the socket refused to send.
    pub rtc_send_errors: IntCounter,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: T) -> T {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let counter = |name: &str, help: &str| {
            register(&r, IntCounter::new(name, help).expect("valid metric"))
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid metric"));
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            register(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric"),
            )
        };
        Metrics {
            connections: gauge_vec(
                "armoricore_connections",
                "Open connections.",
                &["transport"],
            ),
            connects: counter_vec(
                "armoricore_connects_total",
                "Connection attempts by result.",
                &["transport", "result"],
            ),
            joins: counter_vec(
                "armoricore_joins_total",
                "Channel joins by result.",
                &["result"],
            ),
            messages_in: counter(
                "armoricore_messages_in_total",
                "Frames received from clients.",
            ),
            messages_out: counter("armoricore_messages_out_total", "Frames queued to clients."),
            fanout_seconds: histogram(
                "armoricore_broadcast_fanout_seconds",
                "Time to queue one broadcast to every local subscriber.",
                prometheus::exponential_buckets(1e-6, 4.0, 11).expect("valid buckets"),
            ),
            fanout_subscribers: histogram(
                "armoricore_broadcast_fanout_subscribers",
                "Local subscribers one broadcast was queued to.",
                prometheus::exponential_buckets(1.0, 4.0, 9).expect("valid buckets"),
            ),
            slow_consumers: counter(
                "armoricore_slow_consumer_disconnects_total",
                "Connections closed because their outbound queue was full.",
            ),
            outbound_queue_depth: gauge(
                "armoricore_outbound_queue_depth",
                "Outbound frames waiting in connection queues.",
            ),
            restarts: counter_vec(
                "armoricore_actor_restarts_total",
                "Failed children handled by their supervisor.",
                &["supervisor"],
            ),
            presences: gauge("armoricore_presences", "Tracked presence entries."),
            bad_frames: counter_vec(
                "armoricore_bad_frames_total",
                "Inbound frames refused, by reason.",
                &["reason"],
            ),
            rate_limited: counter(
                "armoricore_rate_limited_total",
                "Client events refused by a rate limit.",
            ),
            bus_connected: gauge(
                "armoricore_bus_connected",
                "1 while the message bus is reachable.",
            ),
            bus_reconnects: counter(
                "armoricore_bus_reconnects_total",
                "Reconnections to the message bus.",
            ),
            bus_events_in: counter_vec(
                "armoricore_bus_events_in_total",
                "Events received from the bus.",
                &["subject"],
            ),
            bus_events_out: counter_vec(
                "armoricore_bus_events_out_total",
                "Events put on the bus.",
                &["subject"],
            ),
            bus_dead_letters: counter_vec(
                "armoricore_bus_dead_letters_total",
                "Events sent to the dead-letter subject.",
                &["subject", "reason"],
            ),
            bus_redeliveries: counter_vec(
                "armoricore_bus_redeliveries_total",
                "Work deliveries that were redeliveries.",
                &["subject"],
            ),
            bus_duplicates: counter_vec(
                "armoricore_bus_duplicates_total",
                "Deliveries of an event_id already handled.",
                &["subject"],
            ),
            bus_dropped: counter(
                "armoricore_bus_dropped_total",
                "Events that could not be put on the bus.",
            ),
            bus_pending: gauge_vec(
                "armoricore_bus_pending",
                "Work waiting in the bus.",
                &["subject"],
            ),
            bus_ack_pending: gauge_vec(
                "armoricore_bus_ack_pending",
                "Work handed out and not yet acknowledged.",
                &["subject"],
            ),
            redis_connected: gauge(
                "armoricore_redis_connected",
                "1 while the Redis connections are up.",
            ),
            redis_reconnects: counter(
                "armoricore_redis_reconnects_total",
                "Connections (and reconnections) to Redis.",
            ),
            redis_roundtrip_seconds: histogram(
                "armoricore_redis_roundtrip_seconds",
                "Round trip of a Redis publish.",
                prometheus::exponential_buckets(1e-5, 4.0, 10).expect("valid buckets"),
            ),
            redis_messages_in: counter(
                "armoricore_redis_messages_in_total",
                "Broadcasts received from other nodes.",
            ),
            redis_dropped: counter(
                "armoricore_redis_dropped_total",
                "Broadcasts not exchanged with other nodes.",
            ),
            cluster_nodes: gauge(
                "armoricore_cluster_nodes",
                "Nodes alive in the cluster, this one included.",
            ),
            jobs_running: gauge("armoricore_jobs_running", "Jobs running on this node."),
            media_jobs_running: gauge(
                "armoricore_media_jobs_running",
                "Transcodes running on this node.",
            ),
            media_jobs_queued: gauge(
                "armoricore_media_jobs_queued",
                "Transcodes waiting for a slot (media.concurrency).",
            ),
            jobs: counter_vec(
                "armoricore_jobs_total",
                "Jobs ended, by work subject and result.",
                &["subject", "result"],
            ),
            job_seconds: histogram(
                "armoricore_job_seconds",
                "Time from a work delivery to its acknowledgement.",
                prometheus::exponential_buckets(1e-4, 4.0, 12).expect("valid buckets"),
            ),
            store_write_seconds: histogram(
                "armoricore_store_write_seconds",
                "Time to commit one batch of messages to the database.",
                prometheus::exponential_buckets(1e-4, 2.0, 16).expect("valid buckets"),
            ),
            store_batch_messages: histogram(
                "armoricore_store_batch_messages",
                "Messages per committed batch.",
                prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets"),
            ),
            store_errors: counter_vec(
                "armoricore_store_errors_total",
                "Database operations that failed, by operation.",
                &["op"],
            ),
            store_retention_deleted: counter(
                "armoricore_store_retention_deleted_total",
                "Messages deleted by retention.",
            ),
            notify_sends: counter_vec(
                "armoricore_notification_sends_total",
                "Notification sends by provider and result.",
                &["provider", "result"],
            ),
            notify_seconds: register(
                &r,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "armoricore_notification_send_seconds",
                        "Provider request time, by provider.",
                    )
                    .buckets(
                        prometheus::exponential_buckets(1e-3, 2.0, 14).expect("valid buckets"),
                    ),
                    &["provider"],
                )
                .expect("valid metric"),
            ),
            notify_in_flight: gauge_vec(
                "armoricore_notification_in_flight",
                "Provider requests in flight, by provider.",
                &["provider"],
            ),
            notify_retries: counter_vec(
                "armoricore_notification_retries_total",
                "Retries after a transient failure, by provider.",
                &["provider"],
            ),
            ai_requests: counter_vec(
                "armoricore_ai_requests_total",
                "AI provider requests by provider, operation and result.",
                &["provider", "op", "result"],
            ),
            ai_request_seconds: register(
                &r,
                prometheus::HistogramVec::new(
                    HistogramOpts::new(
                        "armoricore_ai_request_seconds",
                        "AI provider request time, by provider and operation.",
                    )
                    .buckets(
                        prometheus::exponential_buckets(0.01, 2.0, 15).expect("valid buckets"),
                    ),
                    &["provider", "op"],
                )
                .expect("valid metric"),
            ),
            ai_tokens: counter_vec(
                "armoricore_ai_tokens_total",
                "Tokens AI providers reported, by provider and direction.",
                &["provider", "direction"],
            ),
            rtc_calls: gauge("armoricore_rtc_calls", "Calls running on this node."),
            rtc_participants: gauge(
                "armoricore_rtc_participants",
                "Call participants on this node.",
            ),
            rtc_tracks: gauge(
                "armoricore_rtc_tracks",
                "Tracks published by call participants on this node.",
            ),
            rtc_packets_in: counter(
                "armoricore_rtc_packets_received_total",
                "RTP packets received on published tracks.",
            ),
            rtc_packets_forwarded: counter(
                "armoricore_rtc_packets_forwarded_total",
                "RTP packets forwarded to subscribers.",
            ),
            rtc_bytes_forwarded: counter(
                "armoricore_rtc_bytes_forwarded_total",
                "RTP payload bytes forwarded to subscribers.",
            ),
            rtc_forward_seconds: histogram(
                "armoricore_rtc_forward_seconds",
                "Time from a packet's arrival to its copy leaving for one subscriber.",
                prometheus::exponential_buckets(5e-6, 2.0, 16).expect("valid buckets"),
            ),
            rtc_keyframe_requests: counter(
                "armoricore_rtc_keyframe_requests_total",
                "Keyframe requests (PLI) sent to publishers.",
            ),
            rtc_nacks: counter(
                "armoricore_rtc_nacks_total",
                "NACKs received from subscribers.",
            ),
            rtc_dropped: counter_vec(
                "armoricore_rtc_dropped_total",
                "Media packets dropped, by reason.",
                &["reason"],
            ),
            rtc_unrouted: counter(
                "armoricore_rtc_unrouted_total",
                "Media datagrams that no participant claimed.",
            ),
            rtc_send_errors: counter(
                "armoricore_rtc_send_errors_total",
                "Media datagrams the socket did not send.",
            ),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding to a Vec cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
