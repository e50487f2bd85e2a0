//! Protocol-neutral connections: what a scenario does with a client, whatever the
//! server under test speaks (Phoenix Channels for Armoricore; Socket.IO and Pusher
//! for the peers).
//!
//! A published message carries its send time (µs since the Unix epoch) so that
//! every receiver can record the delivery latency; all processes share the
//! machine's clock.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::phx::{self, Failure, Target};
use crate::proto;
use crate::{pusher, sio};

/// The protocol of the server under test.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Proto {
    /// Phoenix Channels V2 (Armoricore).
    Phoenix,
    /// Socket.IO v4 over WebSocket (the Node.js peer in benches/peers/socketio).
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
    /// The Pusher protocol (Sockudo): `--secret` is the app secret, `--pusher-key`
    /// the app key; rooms are `private-` channels, messages client events.
    Pusher,
}

impl Proto {
    /// Deliveries one publish makes in a room of `members`: Pusher never sends a
    /// client event back to its sender.
    pub fn deliveries_per_publish(self, members: u64) -> u64 {
        match self {
            Proto::Pusher => members.saturating_sub(1),
            Proto::Phoenix | Proto::SocketIo => members,
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// What a connection publishes while traffic is on.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Traffic {
    /// Messages per second from each publishing connection.
    pub rate_per_publisher: f64,
    /// Phoenix event pushed (`new_comment` on `comments:stream:*`, `new_message` on `chat:room:*`).
    pub event: String,
    /// Approximate payload size in bytes (the timestamp plus padding).
    pub payload_bytes: usize,
}

/// Delivery counters and latency, shared by a worker's connections.
pub struct Stats {
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    pub latency_us: Mutex<Histogram<u64>>,
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            delivered: AtomicU64::new(0),
            published: AtomicU64::new(0),
            latency_us: Mutex::new(proto::new_hist()),
        }
    }

    fn record_converged(&self, took: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency_us
            .lock()
            .saturating_record(took.as_micros().max(1) as u64);
    }

    fn record(&self, sent_us: u64) {
        let latency = now_us().saturating_sub(sent_us).max(1);
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency_us.lock().saturating_record(latency);
    }
}

/// The content of a published message: `"<send µs> <padding>"`.
fn content(payload_bytes: usize) -> String {
    let stamp = now_us().to_string();
    let pad = payload_bytes.saturating_sub(stamp.len() + 1);
    format!("{stamp} {}", "x".repeat(pad))
}

/// The send time in a received Phoenix broadcast, found without parsing the
/// whole frame: the digits after `"content":"`.
fn phoenix_stamp(frame: &str) -> Option<u64> {
    let at = frame.find(r#""content":""#)? + r#""content":""#.len();
    let digits: &str = frame[at..].split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// Who a connection is.
#[derive(Clone, Copy)]
pub struct Who<'a> {
    /// The JWT (Phoenix, Socket.IO).
    pub token: &'a str,
    /// The user id (Pusher presence).
    pub user: &'a str,
    /// Pusher app credentials.
    pub app: &'a pusher::App,
    /// Join as a presence member (Pusher: `presence-` channels).
    pub presence: bool,
}

/// The send time in a received message whose payload is `{"content": "<µs> ..."}`.
fn content_stamp(payload: &serde_json::Value) -> Option<u64> {
    let content = payload.get("content")?.as_str()?;
    content.split(' ').next()?.parse().ok()
}

/// One open, joined connection.
pub enum Conn {
    Phoenix(phx::Conn),
    SocketIo(sio::Conn),
    Pusher(Box<pusher::Conn>),
}

impl Conn {
    /// Connect from `source`, authenticate with `token` (Pusher: with `app`), join
    /// `topics` (Pusher: as presence channels, as `user`, when `presence`).
    pub async fn connect(
        proto: Proto,
        target: &Target,
        source: IpAddr,
        who: Who<'_>,
        topics: &[String],
    ) -> Result<Conn, Failure> {
        let Who {
            token,
            user,
            app,
            presence,
        } = who;
        match proto {
            Proto::Phoenix => Ok(Conn::Phoenix(
                phx::Conn::connect(target, source, token, topics).await?,
            )),
            Proto::SocketIo => {
                let mut c = sio::Conn::connect(target, source, token).await?;
                for topic in topics {
                    c.join(topic).await?;
                }
                Ok(Conn::SocketIo(c))
            }
            Proto::Pusher => {
                let mut c = pusher::Conn::connect(target, source, app).await?;
                for topic in topics {
                    if presence {
                        c.join_presence(topic, user).await?;
                    } else {
                        c.join(topic).await?;
                    }
                }
                Ok(Conn::Pusher(Box::new(c)))
            }
        }
    }

    async fn publish(&mut self, topic: &str, traffic: &Traffic) -> Result<(), Failure> {
        match self {
            Conn::Phoenix(c) => {
                let payload =
                    serde_json::json!({ "content": content(traffic.payload_bytes) }).to_string();
                c.publish(topic, &traffic.event, &payload).await
            }
            Conn::SocketIo(c) => {
                let payload = serde_json::json!({ "content": content(traffic.payload_bytes) });
                c.publish(topic, &payload).await
            }
            Conn::Pusher(c) => {
                let payload = serde_json::json!({ "content": content(traffic.payload_bytes) });
                c.publish(topic, &payload).await
            }
        }
    }

    /// The next message; `Some(sent_us)` for a timestamped broadcast.
    async fn recv(&mut self, presence: Option<&mut PresenceView>) -> Result<Option<u64>, Failure> {
        match self {
            Conn::Phoenix(c) => {
                let text = c.recv().await?;
                if let Some(view) = presence {
                    view.apply_phoenix(text.as_str());
                }
                // Replies to our own pushes carry no content; broadcasts do.
                Ok(phoenix_stamp(text.as_str()))
            }
            Conn::SocketIo(c) => {
                let (_event, payload) = c.recv().await?;
                Ok(content_stamp(&payload))
            }
            Conn::Pusher(c) => {
                let (event, payload) = c.recv().await?;
                if let Some(view) = presence {
                    view.apply_pusher(&event, &payload);
                }
                if event == pusher::PUBLISH_EVENT {
                    Ok(content_stamp(&payload))
                } else {
                    Ok(None)
                }
            }
        }
    }

    async fn keepalive(&mut self) -> Result<(), Failure> {
        match self {
            Conn::Phoenix(c) => c.heartbeat().await,
            // The Socket.IO server pings; `recv` answers.
            Conn::SocketIo(_) => Ok(()),
            Conn::Pusher(c) => c.keepalive().await,
        }
    }

    async fn close(self) {
        match self {
            Conn::Phoenix(c) => c.close().await,
            Conn::SocketIo(c) => c.close().await,
            Conn::Pusher(c) => (*c).close().await,
        }
    }
}

/// One client's view of a topic's presence, kept as phoenix.js's `Presence` keeps
/// it: metas by `phx_ref` under each key; a key goes when its last meta leaves
/// (a user who reconnects has an old meta leaving and a new one joining).
pub struct PresenceView {
    keys: HashMap<String, HashSet<String>>,
    /// Diffs received before the first `presence_state`, applied after it, as
    /// phoenix.js does (a flush may overtake the joiner's state).
    early: Option<Vec<Diff>>,
    /// Keys the view must hold to have converged.
    expect: usize,
    /// When the worker started connecting.
    since: tokio::time::Instant,
    converged: bool,
}

/// `{key: {metas: [{phx_ref, ..}]}}`, other meta fields skipped.
type Entries = HashMap<String, Metas>;

#[derive(Deserialize)]
struct Metas {
    metas: Vec<MetaRef>,
}

#[derive(Deserialize)]
struct MetaRef {
    phx_ref: String,
}

#[derive(Deserialize)]
struct Diff {
    joins: Entries,
    leaves: Entries,
}

impl PresenceView {
    pub fn new(expect: usize, since: tokio::time::Instant) -> PresenceView {
        PresenceView {
            keys: HashMap::new(),
            early: Some(Vec::new()),
            expect,
            since,
            converged: false,
        }
    }

    /// Apply a `presence_state` or `presence_diff` frame; other frames are ignored
    /// cheaply (no parse).
    fn apply_phoenix(&mut self, frame: &str) {
        let is_state = frame.contains(r#","presence_state","#);
        if !is_state && !frame.contains(r#","presence_diff","#) {
            return;
        }
        type Frame<P> = (IgnoredAny, IgnoredAny, IgnoredAny, IgnoredAny, P);
        if is_state {
            if let Ok((_, _, _, _, state)) = serde_json::from_str::<Frame<Entries>>(frame) {
                self.keys = state
                    .into_iter()
                    .map(|(key, m)| (key, m.metas.into_iter().map(|r| r.phx_ref).collect()))
                    .collect();
                for diff in self.early.take().unwrap_or_default() {
                    self.apply_diff(diff);
                }
            }
        } else if let Ok((_, _, _, _, diff)) = serde_json::from_str::<Frame<Diff>>(frame) {
            match self.early.as_mut() {
                Some(early) => early.push(diff),
                None => self.apply_diff(diff),
            }
        }
    }

    /// Apply a Pusher presence event: the member list on subscription, then
    /// members added and removed (one connection per user here).
    fn apply_pusher(&mut self, event: &str, data: &serde_json::Value) {
        let id = |v: &serde_json::Value| {
            v.get("user_id")
                .and_then(|u| u.as_str())
                .map(str::to_string)
        };
        match event {
            "pusher_internal:subscription_succeeded" => {
                let ids = data["presence"]["ids"].as_array().into_iter().flatten();
                self.keys = ids
                    .filter_map(|v| v.as_str())
                    .map(|k| (k.to_string(), HashSet::from([String::new()])))
                    .collect();
                for diff in self.early.take().unwrap_or_default() {
                    self.apply_diff(diff);
                }
            }
            "pusher_internal:member_added" => {
                if let Some(user) = id(data) {
                    self.keys.entry(user).or_default().insert(String::new());
                }
            }
            "pusher_internal:member_removed" => {
                if let Some(user) = id(data) {
                    self.keys.remove(&user);
                }
            }
            _ => {}
        }
    }

    /// Joins first, then leaves, as phoenix.js applies a diff.
    fn apply_diff(&mut self, diff: Diff) {
        for (key, m) in diff.joins {
            self.keys
                .entry(key)
                .or_default()
                .extend(m.metas.into_iter().map(|r| r.phx_ref));
        }
        for (key, m) in diff.leaves {
            if let Some(refs) = self.keys.get_mut(&key) {
                for r in m.metas {
                    refs.remove(&r.phx_ref);
                }
                if refs.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
    }

    /// Time from the start until this view first held every key, once.
    fn newly_converged(&mut self) -> Option<Duration> {
        if self.converged || self.keys.len() < self.expect {
            return None;
        }
        self.converged = true;
        Some(self.since.elapsed())
    }
}

/// How a held connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// We were told to stop and closed it.
    Stopped,
    /// The server closed it, or it failed, first.
    Dropped,
}

/// What a held connection does besides staying alive.
pub struct Role {
    /// Publish to this topic while traffic is on (`None`: only receive).
    pub publish_to: Option<String>,
    pub traffic: Option<Arc<Traffic>>,
    /// Turns true when traffic starts.
    pub traffic_on: watch::Receiver<bool>,
    pub stats: Arc<Stats>,
    /// Follow the topic's presence and record when this view converged.
    pub presence: Option<PresenceView>,
}

/// Keep `conn` open until `stop`: keepalive every `heartbeat`, record every
/// timestamped delivery, and publish at the traffic rate once traffic is on.
pub async fn hold(
    mut conn: Conn,
    heartbeat: Duration,
    mut role: Role,
    mut stop: watch::Receiver<bool>,
) -> HoldEnd {
    let start = tokio::time::Instant::now() + heartbeat;
    let mut beat = tokio::time::interval_at(start, heartbeat);
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let period = role
        .traffic
        .as_ref()
        .filter(|t| t.rate_per_publisher > 0.0 && role.publish_to.is_some())
        .map(|t| Duration::from_secs_f64(1.0 / t.rate_per_publisher));
    let mut publish: Option<tokio::time::Interval> = None;
    let mut traffic_on = false;
    loop {
        if *stop.borrow_and_update() {
            conn.close().await;
            return HoldEnd::Stopped;
        }
        let publishing = traffic_on && publish.is_some();
        tokio::select! {
            changed = stop.changed() => {
                if changed.is_err() {
                    conn.close().await;
                    return HoldEnd::Stopped;
                }
            }
            changed = role.traffic_on.changed(), if !traffic_on => {
                if changed.is_ok() && *role.traffic_on.borrow() {
                    traffic_on = true;
                    // Start the publish clock now, not when the connection joined, at a
                    // random phase so that thousands of publishers do not tick together.
                    publish = period.map(|p| {
                        let phase = p.mul_f64(rand::random::<f64>());
                        let mut i = tokio::time::interval_at(tokio::time::Instant::now() + phase, p);
                        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                        i
                    });
                }
            }
            _ = async { publish.as_mut().expect("publishing").tick().await }, if publishing => {
                let (Some(topic), Some(traffic)) = (role.publish_to.as_deref(), role.traffic.as_deref()) else {
                    continue;
                };
                match conn.publish(topic, traffic).await {
                    Ok(()) => role.stats.published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => return HoldEnd::Dropped,
                };
            }
            _ = beat.tick() => {
                if conn.keepalive().await.is_err() {
                    return HoldEnd::Dropped;
                }
            }
            msg = conn.recv(role.presence.as_mut()) => match msg {
                Ok(Some(sent_us)) => role.stats.record(sent_us),
                Ok(None) => {
                    if let Some(took) = role.presence.as_mut().and_then(PresenceView::newly_converged) {
                        role.stats.record_converged(took);
                    }
                }
                Err(_) => return HoldEnd::Dropped,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_found_in_phoenix_broadcasts() {
        let frame = r#"[null,null,"comments:stream:0","new_comment",{"content":"1764201234567890 xxxx","id":"a","offset":3}]"#;
        assert_eq!(phoenix_stamp(frame), Some(1764201234567890));
        let reply = r#"["1","5","comments:stream:0","phx_reply",{"status":"ok","response":{"id":"a","offset":3}}]"#;
        assert_eq!(phoenix_stamp(reply), None);
    }

    #[test]
    fn presence_views_follow_state_and_diffs() {
        let mut view = PresenceView::new(2, tokio::time::Instant::now());
        view.apply_phoenix(
            r#"["1",null,"chat:room:0","presence_state",{"a":{"metas":[{"phx_ref":"1"}]}}]"#,
        );
        assert!(view.newly_converged().is_none());
        // b reconnects: its old meta leaves in the same diff its new one joins.
        view.apply_phoenix(
            r#"[null,null,"chat:room:0","presence_diff",{"joins":{"b":{"metas":[{"phx_ref":"3"}]}},"leaves":{"b":{"metas":[{"phx_ref":"2"}]}}}]"#,
        );
        assert!(view.newly_converged().is_some());
        assert!(view.newly_converged().is_none(), "converges once");
    }

    #[test]
    fn diffs_before_the_state_are_applied_after_it() {
        let mut view = PresenceView::new(3, tokio::time::Instant::now());
        // A flush overtook the joiner's state: "c" joined after the state was taken.
        view.apply_phoenix(
            r#"[null,null,"t","presence_diff",{"joins":{"c":{"metas":[]}},"leaves":{}}]"#,
        );
        view.apply_phoenix(
            r#"["1",null,"t","presence_state",{"a":{"metas":[]},"b":{"metas":[]}}]"#,
        );
        assert!(view.newly_converged().is_some());
    }

    #[test]
    fn pusher_presence_events() {
        let mut view = PresenceView::new(2, tokio::time::Instant::now());
        let ids = serde_json::json!({"presence": {"ids": ["a"], "hash": {}, "count": 1}});
        view.apply_pusher("pusher_internal:subscription_succeeded", &ids);
        assert!(view.newly_converged().is_none());
        view.apply_pusher(
            "pusher_internal:member_added",
            &serde_json::json!({"user_id": "b"}),
        );
        assert!(view.newly_converged().is_some());
    }

    #[test]
    fn content_has_the_requested_size() {
        let c = content(100);
        assert_eq!(c.len(), 100);
        assert!(c.split(' ').next().unwrap().parse::<u64>().is_ok());
    }
}
