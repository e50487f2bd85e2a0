//! SessionSupervisor: parent of every Session actor.
//!
//! Supervised by the RootSupervisor (permanent). Sessions are linked to it when a
//! connection is accepted and are `Temporary`: a failed session is not restarted.
//! Its state's `Drop` has already removed its subscriptions and presences and closed
//! its socket with 1011; here it is logged and counted in
//! `armoricore_actor_restarts_total{supervisor="sessions"}`. The client reconnects.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::policy::{Exit, RestartPolicy, exit_of};
use crate::hub::Hub;

/// The restart policy of sessions.
pub const SESSION_POLICY: RestartPolicy = RestartPolicy::Temporary;

pub struct SessionSupervisor;

impl Actor for SessionSupervisor {
    type Msg = ();
    type State = Arc<Hub>;
    type Arguments = Arc<Hub>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        hub: Arc<Hub>,
    ) -> Result<Arc<Hub>, ActorProcessingErr> {
        Ok(hub)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        hub: &mut Arc<Hub>,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, exit)) = exit_of(&event) else {
            return Ok(());
        };
        debug_assert!(!SESSION_POLICY.restarts(&exit));
        let id = cell.get_id().pid();
        // The session's state cleaned up after itself when it was dropped
        // (subscriptions, presences, socket closed with 1011): count and log here.
        if let Exit::Failed(reason) = exit {
            tracing::error!(session = id, %reason, "session crashed");
            hub.metrics.restarts.with_label_values(&["sessions"]).inc();
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<()>,
        _hub: &mut Arc<Hub>,
    ) -> Result<(), ActorProcessingErr> {
        // Stop sessions gracefully (their post_stop cleans up) rather than letting
        // ractor kill them when this actor's cell terminates.
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(2)))
            .await;
        Ok(())
    }
}
