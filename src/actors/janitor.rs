//! Janitor: the node's periodic housekeeping every `history.sweep_interval_s`:
//! expired history messages, forgotten topics, idle per-user rate buckets.
//!
//! Supervised by the RootSupervisor (permanent); it owns nothing but its timer.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::hub::Hub;

pub struct Janitor;

pub enum JanitorMsg {
    Sweep,
}

impl Actor for Janitor {
    type Msg = JanitorMsg;
    type State = Arc<Hub>;
    type Arguments = Arc<Hub>;

    async fn pre_start(
        &self,
        myself: ActorRef<JanitorMsg>,
        hub: Arc<Hub>,
    ) -> Result<Arc<Hub>, ActorProcessingErr> {
        let every = Duration::from_secs(hub.config.history.sweep_interval_s);
        myself.send_interval(every, || JanitorMsg::Sweep);
        Ok(hub)
    }

    async fn handle(
        &self,
        _myself: ActorRef<JanitorMsg>,
        msg: JanitorMsg,
        hub: &mut Arc<Hub>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            JanitorMsg::Sweep => {
                hub.history.sweep();
                hub.user_limits.sweep();
            }
        }
        Ok(())
    }
}
