//! SessionSupervisor: parent of every Session actor.
//!
//! Supervised by the RootSupervisor (permanent). Sessions are linked to it when a
//! connection is accepted and are `Temporary`: a failed session is cleaned up (its
//! subscriptions and presences removed, its socket closed with 1011) and counted in
//! `armoricore_actor_restarts_total{supervisor="sessions"}`; the client reconnects.
//! A session that ends normally has already cleaned up after itself.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::policy::{Exit, RestartPolicy, exit_of};
use crate::actors::presence::PresenceMsg;
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
        if let Exit::Failed(reason) = exit {
            tracing::error!(session = id, %reason, "session crashed");
            hub.metrics.restarts.with_label_values(&["sessions"]).inc();
            // The session's post_stop did not run: clean up for it.
            if let Some(entry) = hub.forget_session(id) {
                entry.outbox.close_now(1011, "internal error");
                hub.pubsub.unsubscribe_everywhere(id);
                hub.presence(PresenceMsg::UntrackSession { session: id });
            }
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
