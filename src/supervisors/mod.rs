//! The supervision tree.
//!
//! ```text
//! RootSupervisor (one_for_one, intensity from [supervision])
//! ├── Gateway            permanent   HTTP listener
//! ├── SessionSupervisor  permanent
//! │    └── Session       temporary   one per connection
//! ├── PresenceTracker    permanent
//! └── Janitor            permanent   history sweeps
//! ```
//! Restart policies and intensity are in [`policy`], shared by every supervisor.

pub mod policy;
pub mod root;
pub mod sessions;
pub mod tasks;
