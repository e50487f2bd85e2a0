//! OTP restart policies and restart intensity, written once for every supervisor.
//!
//! We evaluated `ractor-supervisor` 0.2 and chose not to use it: its children must be
//! registered under globally unique names (one registry entry per WebSocket session),
//! its meltdown count covers temporary children too (a burst of client-side crashes
//! would take every connection down), and it offers no hook to count restarts in our
//! metrics. What we need is small: the policy table below, an intensity window, and
//! ractor's own linked spawning and supervision events.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use ractor::{ActorCell, SupervisionEvent};

/// When a child that has exited is started again (Erlang/OTP `restart` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restarted: the node's long-lived services.
    Permanent,
    /// Restarted only after a failure (panic or error), not after a normal exit.
    Transient,
    /// Never restarted: connections, whose state lives in the client, which
    /// reconnects and rejoins by itself.
    Temporary,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Normal,
    Failed(String),
}

impl RestartPolicy {
    /// Should a child with this policy be started again after `exit`?
    pub fn restarts(self, exit: &Exit) -> bool {
        match self {
            RestartPolicy::Permanent => true,
            RestartPolicy::Transient => matches!(exit, Exit::Failed(_)),
            RestartPolicy::Temporary => false,
        }
    }
}

/// The child and how it ended, if the event is an exit.
pub fn exit_of(event: &SupervisionEvent) -> Option<(ActorCell, Exit)> {
    match event {
        SupervisionEvent::ActorTerminated(cell, _, _) => Some((cell.clone(), Exit::Normal)),
        SupervisionEvent::ActorFailed(cell, err) => {
            Some((cell.clone(), Exit::Failed(err.to_string())))
        }
        _ => None,
    }
}

/// Restart intensity: at most `max` restarts within `window`; one more and the
/// supervisor gives up and fails upward.
#[derive(Debug)]
pub struct Intensity {
    max: u32,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl Intensity {
    pub fn new(max: u32, window: Duration) -> Intensity {
        Intensity {
            max,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Record a restart at `now`; `false` when the limit is exceeded.
    pub fn allow(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent.push_back(now);
        self.recent.len() as u32 <= self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let failed = Exit::Failed("boom".into());
        assert!(RestartPolicy::Permanent.restarts(&Exit::Normal));
        assert!(RestartPolicy::Permanent.restarts(&failed));
        assert!(!RestartPolicy::Transient.restarts(&Exit::Normal));
        assert!(RestartPolicy::Transient.restarts(&failed));
        assert!(!RestartPolicy::Temporary.restarts(&failed));
    }

    #[test]
    fn intensity_window() {
        let mut i = Intensity::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(i.allow(t0));
        assert!(i.allow(t0 + Duration::from_secs(1)));
        assert!(
            !i.allow(t0 + Duration::from_secs(2)),
            "third restart in the window"
        );
        // Old restarts fall out of the window.
        let mut i = Intensity::new(2, Duration::from_secs(10));
        assert!(i.allow(t0));
        assert!(i.allow(t0 + Duration::from_secs(1)));
        assert!(i.allow(t0 + Duration::from_secs(12)));
    }
}
