//! The coordinator ↔ worker protocol: one JSON object per line.
//!
//! Coordinator → worker (worker's stdin): [`Cmd::Start`] with the [`WorkerSpec`],
//! then [`Cmd::Go`] once every worker is ready, then [`Cmd::Stop`]. End of input
//! means stop too, so a worker never outlives its coordinator for long.
//!
//! Worker → coordinator (worker's stdout): [`Event::Ready`] (tokens minted, address
//! resolved), [`Event::Joined`] (every connection attempted: counts, errors and the
//! latency histogram), [`Event::Done`] (connections closed).
//!
//! Latency histograms travel as hdrhistogram's V2 serialization in base64, so the
//! coordinator merges exact distributions rather than percentiles.

use std::collections::BTreeMap;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// What the workers are asked to do. Today both scenarios connect, join and hold;
/// later ones (fan-out, chat round trips) add behaviour here.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Connect, join, hold idle with heartbeats.
    Idle,
    /// Connect, join as fast as allowed; latency is the product.
    Connect,
    /// Subscribers in one topic, one publisher: delivery latency and deliveries/s.
    Fanout,
    /// Many small rooms, every member chatting: messages/s and latency.
    Rooms,
    /// A join storm into one presence topic: time until every view converged.
    Presence,
}

impl Scenario {
    /// The subcommand name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Connect => "connect",
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Presence => "presence",
        }
    }
}

/// Everything one worker needs to know.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct WorkerSpec {
    /// Scenario to run.
    pub scenario: Scenario,
    /// Worker index: source address 127.0.0.(2+index), users `u<index>-<i>`.
    pub index: usize,
    /// Protocol of the server under test.
    pub protocol: crate::driver::Proto,
    /// Global index of this worker's first connection (rooms are assigned globally).
    pub first_index: usize,
    /// Connections across all workers.
    pub total_connections: usize,
    /// Topic names are `<topic_prefix><room>`.
    pub topic_prefix: String,
    /// Connection with global index g publishes when `g % publisher_every == 0`
    /// (0: nobody publishes).
    pub publisher_every: usize,
    /// What publishers send once traffic is on.
    pub traffic: Option<crate::driver::Traffic>,
    /// Connections this worker opens.
    pub connections: usize,
    /// WebSocket endpoint without `vsn`/`token`.
    pub url: String,
    /// HS256 secret for the tokens (Pusher: the app secret).
    pub secret: String,
    /// Pusher app key.
    pub pusher_key: String,
    /// Topics joined per connection.
    pub topics_per_conn: usize,
    /// Distinct `chat:room:<n>` rooms.
    pub rooms: usize,
    /// New connections per second for this worker; `None`: no pacing.
    pub rate_per_s: Option<f64>,
    /// Attempts in flight at once; 0: no limit.
    pub concurrency: usize,
    /// Longest connect + upgrade + join, in ms.
    pub connect_timeout_ms: u64,
    /// Heartbeat interval, in ms.
    pub heartbeat_ms: u64,
    /// The worker stops everything this long after it received the spec, in ms.
    pub deadline_ms: u64,
}

/// A command to a worker.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Cmd {
    /// Prepare (mint tokens, resolve the address), then answer [`Event::Ready`].
    Start {
        /// The work.
        spec: Box<WorkerSpec>,
    },
    /// Start connecting.
    Go,
    /// Start publishing.
    Traffic,
    /// Close every connection and exit.
    Stop,
}

/// An event from a worker.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Ready to connect on [`Cmd::Go`].
    Ready {
        /// Worker index.
        worker: usize,
    },
    /// Every connection was attempted.
    Joined {
        /// Worker index.
        worker: usize,
        /// Connections joined to all their topics.
        ok: u64,
        /// Connections that failed, by reason.
        errors: BTreeMap<String, u64>,
        /// From Go to the last outcome, in seconds.
        elapsed_s: f64,
        /// Latency from TCP connect start to the last join reply, in µs (see [`encode_hist`]).
        latency_us: String,
        /// The worker's own VmRSS, in KiB.
        rss_kib: Option<u64>,
    },
    /// Connections closed; the worker exits next.
    Done {
        /// Worker index.
        worker: usize,
        /// Connections the server ended before we asked them to stop.
        dropped: u64,
        /// Connections we closed ourselves.
        closed: u64,
        /// Messages published.
        published: u64,
        /// Timestamped messages received.
        delivered: u64,
        /// Delivery latency, send → receive, in µs (see [`encode_hist`]).
        delivery_us: String,
    },
}

/// Serialize one command or event as a single line (no newline).
pub fn to_line<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("protocol messages always serialize")
}

/// A fresh latency histogram in µs: 1 µs to 10 min, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Histogram → V2 serialization → base64.
pub fn encode_hist(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .expect("serializing to a Vec cannot fail");
    STANDARD.encode(buf)
}

/// The inverse of [`encode_hist`].
pub fn decode_hist(s: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = STANDARD.decode(s).context("histogram: bad base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_round_trip_and_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        for v in 1..=1000u64 {
            a.record(v).unwrap();
            b.record(v * 1000).unwrap();
        }
        let mut merged = decode_hist(&encode_hist(&a)).unwrap();
        merged.add(decode_hist(&encode_hist(&b)).unwrap()).unwrap();
        assert_eq!(merged.len(), 2000);
        assert_eq!(merged.max(), b.max());
        assert_eq!(merged.min(), 1);
    }

    #[test]
    fn events_are_tagged_lines() {
        let line = to_line(&Event::Ready { worker: 3 });
        assert_eq!(line, r#"{"event":"ready","worker":3}"#);
        let cmd: Cmd = serde_json::from_str(r#"{"cmd":"go"}"#).unwrap();
        assert!(matches!(cmd, Cmd::Go));
    }
}
