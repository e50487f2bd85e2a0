//! Actors: one unit of work each, supervised.
//!
//! - [`session::Session`]: one per connection (WebSocket or long-poll); owns its joined channels.
//! - [`presence::PresenceTracker`]: presence state and diffs for the node.
//! - [`gateway::Gateway`]: the HTTP listener.
//! - [`janitor::Janitor`]: periodic housekeeping (history sweeps).
//! - [`dashboard::Dashboard`]: activity samples, and the operations page's snapshots.
//! - [`bridge::BusBridge`]: the message bus's end: work in, results out, pushes.

pub mod ai;
pub mod bridge;
pub mod call;
pub mod dashboard;
pub mod gateway;
pub mod janitor;
pub mod notification;
pub mod presence;
pub mod session;
pub mod transcode;
