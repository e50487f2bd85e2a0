//! What the operations dashboard shows (docs/dashboard.md): the data behind the
//! `admin:dashboard` channel's `snapshot` pushes.
//!
//! ```text
//! Activity      one sample per dashboard.interval_ms, always (cheap counters): the
//!               charts' series, and the rates each node puts in its heartbeat
//! snapshot()    built by the Dashboard actor while someone watches: this node,
//!               the cluster's nodes (from heartbeats), clients, busiest topics,
//!               supervision tree, jobs, calls, bus/Redis/database state
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde_json::{Map, Value, json};

use crate::bus::events::{MEDIA_UPLOADED, WORK_SUBJECTS};
use crate::hub::Hub;
use crate::store::JobStatus;
use crate::supervisors::root::{Child, ChildView};

/// The dashboard's channel.
pub const TOPIC: &str = "admin:dashboard";

/// Samples kept for the charts (two minutes at the default interval).
const SAMPLES: usize = 120;
/// Rows per list (topics, clients, jobs of one status, calls).
const ROWS: usize = 20;
/// Longest wait for one database query of a snapshot.
const QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters sampled for the charts.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    joins: u64,
    messages_in: u64,
    messages_out: u64,
}

impl Totals {
    fn read(hub: &Hub) -> Totals {
        let m = &hub.metrics;
        Totals {
            joins: m.joins.with_label_values(&["ok"]).get(),
            messages_in: m.messages_in.get(),
            messages_out: m.messages_out.get(),
        }
    }
}

/// One point of the charts: connections, and per-second rates since the last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Unix time, ms.
    pub at_ms: u64,
    pub connections: usize,
    pub joins: f64,
    pub messages_in: f64,
    pub messages_out: f64,
}

impl Sample {
    pub fn to_json(self) -> Value {
        json!({
            "at_ms": self.at_ms,
            "connections": self.connections,
            "joins_per_s": round(self.joins),
            "messages_in_per_s": round(self.messages_in),
            "messages_out_per_s": round(self.messages_out),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The node's recent activity, sampled by the Dashboard actor.
pub struct Activity {
    pub started: Instant,
    pub started_at: SystemTime,
    state: Mutex<ActivityState>,
}

#[derive(Default)]
struct ActivityState {
    last: Option<(Instant, Totals)>,
    samples: VecDeque<Sample>,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            started: Instant::now(),
            started_at: SystemTime::now(),
            state: Mutex::default(),
        }
    }
}

impl Activity {
    /// Take a sample: the rates since the previous one.
    pub fn sample(&self, hub: &Hub) {
        let now = Instant::now();
        let totals = Totals::read(hub);
        let mut state = self.state.lock();
        if let Some((then, before)) = state.last {
            let secs = now.duration_since(then).as_secs_f64().max(1e-3);
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let sample = Sample {
                at_ms: unix_ms(SystemTime::now()),
                connections: hub.sessions.len(),
                joins: rate(totals.joins, before.joins),
                messages_in: rate(totals.messages_in, before.messages_in),
                messages_out: rate(totals.messages_out, before.messages_out),
            };
            if state.samples.len() == SAMPLES {
                state.samples.pop_front();
            }
            state.samples.push_back(sample);
        }
        state.last = Some((now, totals));
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<Sample> {
        self.state.lock().samples.back().copied()
    }

    /// Every kept sample, oldest first.
    pub fn series(&self) -> Vec<Sample> {
        self.state.lock().samples.iter().copied().collect()
    }
}

/// Rates of growing counters between two snapshots, by key (a topic's
/// broadcasts, a participant's bytes). Keys not seen in a round are forgotten.
#[derive(Default)]
pub struct Deltas {
    last: HashMap<String, (Instant, u64)>,
    seen: Vec<String>,
}

impl Deltas {
    /// Per second since the last call for `key` (0 the first time).
    pub fn rate(&mut self, key: String, value: u64, now: Instant) -> f64 {
        let rate = match self.last.get(&key) {
            Some((then, before)) => {
                let secs = now.duration_since(*then).as_secs_f64().max(1e-3);
                value.saturating_sub(*before) as f64 / secs
            }
            None => 0.0,
        };
        self.last.insert(key.clone(), (now, value));
        self.seen.push(key);
        rate
    }

    /// End a round: forget the keys it did not mention.
    pub fn sweep(&mut self) {
        let seen: std::collections::HashSet<String> = self.seen.drain(..).collect();
        self.last.retain(|k, _| seen.contains(k));
    }
}

/// What this node says of itself in its cluster heartbeats.
pub fn node_summary(hub: &Hub) -> Value {
    let transcoding: Map<String, Value> = hub
        .media
        .as_ref()
        .map(|m| {
            m.progress_all()
                .into_iter()
                .map(|(id, p)| (id, progress_json(&p)))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": hub.activity.started.elapsed().as_secs(),
        "connections": hub.sessions.len(),
        "topics": hub.pubsub.topic_count(),
        "rates": hub.activity.latest().map(Sample::to_json),
        "bus": {"kind": hub.bus.kind(), "up": hub.bus_ready()},
        "ready": !hub.is_shutting_down(),
        "calls": hub.metrics.rtc_calls.get(),
        "jobs_running": hub.metrics.jobs_running.get(),
        "transcoding": transcoding,
    })
}

fn progress_json(p: &crate::media::Progress) -> Value {
    json!({
        "percent": round(p.percent),
        "stage": p.stage,
        "fps": round(p.fps),
        "speed": round(p.speed),
        "eta_s": p.eta_s.map(round),
    })
}

/// The cluster's nodes (this one first), or this node alone.
fn nodes(hub: &Hub) -> Vec<Value> {
    match hub.pubsub.cluster() {
        Some(cluster) => cluster
            .nodes()
            .into_iter()
            .enumerate()
            .map(|(i, n)| {
                json!({
                    "id": n.id,
                    "self": i == 0,
                    "alive": n.alive,
                    "last_seen_ms": n.last_seen.as_millis() as u64,
                    "summary": n.summary,
                })
            })
            .collect(),
        None => vec![json!({
            "id": hub.node_name,
            "self": true,
            "alive": true,
            "last_seen_ms": 0,
            "summary": node_summary(hub),
        })],
    }
}

/// This node's links: bus, Redis, database, providers.
async fn services(hub: &Hub) -> Value {
    let m = &hub.metrics;
    let pending: Map<String, Value> = WORK_SUBJECTS
        .iter()
        .map(|s| {
            let gauge = m.bus_pending.with_label_values(&[s]).get();
            ((*s).to_string(), json!(gauge))
        })
        .collect();
    let mut out = json!({
        "bus": {
            "kind": hub.bus.kind(),
            "up": hub.bus_ready(),
            "reconnects": m.bus_reconnects.get(),
            "dead_letters": sum(&m.bus_dead_letters),
            "pending": pending,
        },
        "redis": Value::Null,
        "database": Value::Null,
    });
    if let Some(cluster) = hub.pubsub.cluster() {
        out["redis"] = json!({
            "up": cluster.connected(),
            "nodes": cluster.size(),
            "reconnects": m.redis_reconnects.get(),
            "dropped": m.redis_dropped.get(),
        });
    }
    if let Some(store) = &hub.store {
        let up = tokio::time::timeout(QUERY_TIMEOUT, store.ping())
            .await
            .unwrap_or(false);
        out["database"] = json!({"kind": store.backend().name(), "up": up});
    }
    if let Some(notify) = &hub.notify {
        let providers: Map<String, Value> = notify
            .sender
            .status()
            .into_iter()
            .map(|(name, down)| {
                let status = match down {
                    None => json!({"up": true}),
                    Some(reason) => json!({"up": false, "reason": reason}),
                };
                (name.to_string(), status)
            })
            .collect();
        out["notifications"] = Value::Object(providers);
    }
    if let Some(ai) = &hub.ai {
        out["ai"] = json!(ai.providers());
    }
    out
}

fn sum(counter: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    counter
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The users connected here, most connections first.
fn clients(hub: &Hub) -> Value {
    /// Connections, and the (at most two) transports they use.
    type Seen = (usize, &'static str, Option<&'static str>);
    let mut users: HashMap<Arc<str>, Seen> = HashMap::with_capacity(hub.sessions.len());
    for entry in hub.sessions.iter() {
        let seen = users
            .entry(entry.user_id.clone())
            .or_insert((0, entry.transport, None));
        seen.0 += 1;
        if seen.1 != entry.transport {
            seen.2 = Some(entry.transport);
        }
    }
    let total = users.len();
    let mut users: Vec<(Arc<str>, Seen)> = users.into_iter().collect();
    let order =
        |a: &(Arc<str>, Seen), b: &(Arc<str>, Seen)| b.1.0.cmp(&a.1.0).then_with(|| a.0.cmp(&b.0));
    if users.len() > ROWS {
        users.select_nth_unstable_by(ROWS, order);
        users.truncate(ROWS);
    }
    users.sort_unstable_by(order);
    let rows: Vec<Value> = users
        .into_iter()
        .map(|(user, (connections, first, second))| {
            let transports: Vec<&str> = std::iter::once(first).chain(second).collect();
            json!({"user_id": user, "connections": connections, "transports": transports})
        })
        .collect();
    json!({"users": total, "connections": hub.sessions.len(), "top": rows})
}

fn topics(hub: &Hub, deltas: &mut Deltas, now: Instant) -> Value {
    let rows: Vec<Value> = hub
        .pubsub
        .busiest(ROWS)
        .into_iter()
        .map(|(topic, subscribers, broadcasts)| {
            let rate = deltas.rate(format!("t:{topic}"), broadcasts, now);
            json!({
                "topic": topic,
                "subscribers": subscribers,
                "broadcasts": broadcasts,
                "broadcasts_per_s": round(rate),
            })
        })
        .collect();
    json!({"count": hub.pubsub.topic_count(), "busiest": rows})
}

/// The supervision tree: the root, its children and how many each supervises.
pub fn tree(hub: &Hub, children: &[ChildView]) -> Value {
    let m = &hub.metrics;
    let failures = |label: &str| m.restarts.with_label_values(&[label]).get();
    let nodes: Vec<Value> = children
        .iter()
        .map(|c| {
            let kids = c.cell.get_children();
            let (label, strategy) = match c.child {
                Child::Sessions => (Some("sessions"), "temporary children"),
                Child::Calls => (Some("calls"), "temporary children"),
                Child::Media => (Some("transcode"), "one job actor per transcode"),
                Child::Notifications => (Some("notifications"), "one task actor per send"),
                Child::Ai => (Some("ai"), "one task actor per job"),
                _ => (None, "worker"),
            };
            json!({
                "name": c.child.name(),
                "status": format!("{:?}", c.cell.get_status()).to_lowercase(),
                "restarts": c.restarts,
                "children": kids.len(),
                "child_failures": label.map(failures),
                "kind": strategy,
            })
        })
        .collect();
    json!({
        "name": "root",
        "strategy": "one_for_one",
        "restarts": failures("root"),
        "max_restarts": hub.config.supervision.max_restarts,
        "window_ms": hub.config.supervision.window_ms,
        "children": nodes,
    })
}

/// Media progress here and (in a cluster) on the other nodes, by media id.
fn progress_everywhere(nodes: &[Value]) -> HashMap<String, (Value, String)> {
    let mut out = HashMap::new();
    for node in nodes {
        let id = node["id"].as_str().unwrap_or_default();
        if let Some(Value::Object(t)) = node["summary"].get("transcoding") {
            for (media, p) in t {
                out.insert(media.clone(), (p.clone(), id.to_string()));
            }
        }
    }
    out
}

async fn jobs(hub: &Hub, nodes: &[Value]) -> Value {
    let progress = progress_everywhere(nodes);
    let with_progress = |mut job: Value| {
        if job["kind"] == MEDIA_UPLOADED
            && let Some((p, _)) = job["subject_id"].as_str().and_then(|id| progress.get(id))
        {
            job["progress"] = p.clone();
        }
        job
    };
    let Some(store) = &hub.store else {
        // No records: what runs and waits here.
        let (running, queued) = match &hub.media {
            Some(media) => media.jobs().await.unwrap_or_default(),
            None => Default::default(),
        };
        let row = |id: String, status: &str| {
            with_progress(json!({
                "id": Value::Null, "kind": MEDIA_UPLOADED, "subject_id": id,
                "status": status, "node": hub.node_name,
            }))
        };
        return json!({
            "recorded": false,
            "running": running.into_iter().map(|id| row(id, "running")).collect::<Vec<_>>(),
            "queued": queued.into_iter().map(|id| row(id, "queued")).collect::<Vec<_>>(),
            "failed": [], "done": [],
        });
    };
    let mut out = json!({"recorded": true});
    for (status, key) in [
        (JobStatus::Running, "running"),
        (JobStatus::Queued, "queued"),
        (JobStatus::Retrying, "retrying"),
        (JobStatus::Failed, "failed"),
        (JobStatus::Done, "done"),
    ] {
        let listed = tokio::time::timeout(QUERY_TIMEOUT, store.jobs(Some(status), None, ROWS));
        let rows = match listed.await {
            Err(_) => {
                out["error"] = json!("the database did not answer in time");
                Vec::new()
            }
            Ok(Ok(jobs)) => jobs
                .iter()
                .map(|j| {
                    let mut row = crate::http::api::job_json(j);
                    if let Value::Object(m) = &mut row {
                        m.remove("result");
                    }
                    with_progress(row)
                })
                .collect(),
            Ok(Err(e)) => {
                out["error"] = json!(e.to_string());
                Vec::new()
            }
        };
        out[key] = Value::Array(rows);
    }
    out
}

async fn calls(hub: &Hub, deltas: &mut Deltas, now: Instant) -> Value {
    let Some(calls) = &hub.calls else {
        return Value::Null;
    };
    let mut out = Vec::new();
    for (id, members) in calls.overview(ROWS).await {
        let participants: Vec<Value> = members
            .iter()
            .map(|m| {
                let (received, sent) = m.traffic.totals();
                let key = &m.participant_id;
                let kbps_in = deltas.rate(format!("in:{key}"), received, now) * 8.0 / 1000.0;
                let kbps_out = deltas.rate(format!("out:{key}"), sent, now) * 8.0 / 1000.0;
                json!({
                    "participant_id": m.participant_id,
                    "user_id": m.user_id,
                    "transport": m.transport,
                    "tracks": m.tracks,
                    "kbps_in": round(kbps_in),
                    "kbps_out": round(kbps_out),
                    "bytes_in": received,
                    "bytes_out": sent,
                })
            })
            .collect();
        out.push(json!({"id": id, "participants": participants}));
    }
    out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    json!(out)
}

/// Everything the page shows, as one JSON object (the `snapshot` push).
pub async fn snapshot(hub: &Hub, children: &[ChildView], deltas: &mut Deltas) -> Value {
    let now = Instant::now();
    let nodes = nodes(hub);
    let series: Vec<Value> = hub
        .activity
        .series()
        .into_iter()
        .map(Sample::to_json)
        .collect();
    let snapshot = json!({
        "at_ms": unix_ms(SystemTime::now()),
        "node": {
            "id": hub.pubsub.cluster().map_or(hub.node_name.clone(), |c| c.node_id.clone()),
            "name": hub.node_name,
            "version": env!("CARGO_PKG_VERSION"),
            "started_at_ms": unix_ms(hub.activity.started_at),
            "uptime_s": hub.activity.started.elapsed().as_secs(),
            "shutting_down": hub.is_shutting_down(),
            "presences": hub.metrics.presences.get(),
            "slow_consumers": hub.metrics.slow_consumers.get(),
            "interval_ms": hub.config.dashboard.interval_ms,
        },
        "nodes": nodes,
        "series": series,
        "services": services(hub).await,
        "clients": clients(hub),
        "topics": topics(hub, deltas, now),
        "tree": tree(hub, children),
        "jobs": jobs(hub, &nodes).await,
        "calls": calls(hub, deltas, now).await,
    });
    deltas.sweep();
    snapshot
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_rate_and_forget() {
        let mut d = Deltas::default();
        let t0 = Instant::now();
        assert_eq!(d.rate("a".into(), 100, t0), 0.0);
        assert_eq!(d.rate("b".into(), 5, t0), 0.0);
        d.sweep();
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(d.rate("a".into(), 300, t1), 100.0);
        d.sweep(); // b not seen: forgotten
        assert_eq!(d.rate("b".into(), 50, t1 + Duration::from_secs(1)), 0.0);
        // A counter that went back (a topic that came again) is not negative.
        assert_eq!(d.rate("a".into(), 10, t1 + Duration::from_secs(1)), 0.0);
    }
}
