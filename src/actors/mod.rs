//! Actors: one unit of work each, supervised.
//!
//! - [`session::Session`]: one per connection (WebSocket or long-poll); owns its joined channels.
//! - [`presence::PresenceTracker`]: presence state and diffs for the node.
//! - [`gateway::Gateway`]: the HTTP listener.

pub mod gateway;
pub mod presence;
pub mod session;
