//! CallSupervisor: parent of every Call actor (each the parent of its
//! participants' Peer actors).
//!
//! Calls are `Temporary`: a call that fails is not restarted — its participants
//! get `call_end` and join again, which starts a new call. The failure is logged
//! and counted in `armoricore_actor_restarts_total{supervisor="calls"}`.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::policy::{Exit, exit_of};
use crate::calls::Calls;

pub struct CallSupervisor;

impl Actor for CallSupervisor {
    type Msg = ();
    type State = Arc<Calls>;
    type Arguments = Arc<Calls>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        calls: Arc<Calls>,
    ) -> Result<Arc<Calls>, ActorProcessingErr> {
        Ok(calls)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        calls: &mut Arc<Calls>,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, exit)) = exit_of(&event) else {
            return Ok(());
        };
        calls.forget_actor(cell.get_id());
        if let Exit::Failed(reason) = exit {
            tracing::error!(%reason, "call crashed");
            calls.metrics.restarts.with_label_values(&["calls"]).inc();
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<()>,
        _calls: &mut Arc<Calls>,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(2)))
            .await;
        Ok(())
    }
}
