//! The supervision tree.
//!
//! ```text
//! RootSupervisor (one_for_one, intensity from [supervision])
//! ├── Gateway            permanent   HTTP listener
//! ├── SessionSupervisor  permanent
//! │    └── Session       temporary   one per connection
//! ├── PresenceTracker    permanent
//! ├── Janitor            permanent   history sweeps
//! ├── TranscodeSupervisor, TaskSupervisor ×2 (notifications, ai)  permanent
//! └── CallSupervisor     permanent   (calls.enabled)
//!      └── Call          temporary   one per call id
//!           └── Peer     temporary   one per participant
//! ```
//! Restart policies and intensity are in [`policy`], shared by every supervisor.

pub mod calls;
pub mod policy;
pub mod root;
pub mod sessions;
pub mod tasks;
