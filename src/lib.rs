//! Armoricore: a realtime and media backend in one Rust binary, speaking the
//! Phoenix Channels protocol so the stock `phoenix` JavaScript client works unchanged.
//!
//! # Layout
//!
//! - [`server`]: start and stop a node ([`server::Node`]); the testable entry point.
//! - [`supervisors`]: the supervision tree and the OTP restart policies it shares.
//!   - [`supervisors::root`]: RootSupervisor over the gateway, sessions and presence.
//!   - [`supervisors::sessions`]: parent of every connection's Session.
//!   - [`supervisors::policy`]: permanent / transient / temporary, restart intensity.
//!   - [`supervisors::tasks`]: one actor per task (AI jobs), crashes counted.
//!   - [`supervisors::calls`]: parent of every Call actor.
//! - [`actors`]: one unit of work each.
//!   - [`actors::session`]: one per connection; runs its channels, contains their crashes.
//!   - [`actors::presence`]: Phoenix.Presence state and diffs.
//!   - [`actors::gateway`]: the HTTP listener.
//!   - [`actors::bridge`]: BusBridge: work events to their handlers, results to pushes.
//!   - [`actors::call`]: one per call: its participants, their tracks, the wiring.
//! - [`channels`]: the `Channel` trait, the topic router, and the standard topics
//!   (`chat:room:*`, `comments:stream:*`, `presence:room:*`, `user:*`) in [`channels::rooms`].
//! - [`pubsub`]: topic registry and broadcast fan-out (encode once, queue the same
//!   bytes to every subscriber); [`pubsub::outbox`] is a connection's outbound queue.
//! - [`protocols`]: wire formats: [`protocols::phoenix`] frames (V1/V2), [`protocols::jwt`].
//! - [`http`]: routes: WebSocket and long-poll transports, `/metrics`, `/health`,
//!   `/ready`, and the server API ([`http::api`]).
//! - [`history`]: per-topic offsets, epochs and recent messages; missed-message recovery.
//! - [`store`]: the database (SQLite by default, PostgreSQL): messages, topic
//!   epochs, job records; [`store::writer`] commits messages in batches.
//! - [`hub`]: the node's shared parts, handed to sessions and routes.
//! - [`bus`]: the message bus: `Bus` trait, in-process and NATS/JetStream
//!   implementations, [`bus::events`] (envelope and payload schemas), [`bus::Outlet`].
//! - [`jobs`]: the `JobHandler` a work subject is handed to, and how a job ends.
//! - [`notify`]: push (FCM HTTP v1, APNs) and email (SMTP) providers, with errors
//!   classified from the providers' own answers.
//! - [`ai`]: transcription (OpenAI-compatible), translation (OpenAI, Anthropic),
//!   SRT/WebVTT captions, chat moderation; the jobs are in [`actors::ai`].
//! - [`calls`]: the WebRTC SFU: [`calls::peer`] (one actor per participant, a str0m
//!   connection), [`calls::net`] (UDP sockets, one port for all), `signaling:call:*`
//!   in [`channels::call`].
//! - [`media`]: transcoding with ffmpeg, storage, fetching a job's input.
//! - [`cluster`]: Redis pub/sub between nodes (broadcasts, heartbeats) with `REDIS_URL`.
//! - [`limits`]: token buckets for joins and client events, per connection and per user.
//! - [`config`]: the typed configuration (`config/default.toml` + file + env).
//! - [`metrics`]: every Prometheus series, defined in one place.

pub mod actors;
pub mod ai;
pub mod bus;
pub mod calls;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod history;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod protocols;
pub mod pubsub;
pub mod server;
pub mod store;
pub mod supervisors;
