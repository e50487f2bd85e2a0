//! Dashboard: samples the node's activity every `dashboard.interval_ms` and, while
//! an operator's page is joined to `admin:dashboard` here, pushes it a `snapshot`
//! (see `crate::dashboard`).
//!
//! Supervised by the RootSupervisor (permanent). Its next tick is scheduled when
//! a snapshot is done, so a slow database never piles ticks up.

use std::sync::Arc;
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::dashboard::{Deltas, TOPIC, snapshot};
use crate::hub::Hub;
use crate::supervisors::root::{ChildView, RootMsg};

pub struct Dashboard;

pub enum DashboardMsg {
    Tick,
}

pub struct DashboardState {
    hub: Arc<Hub>,
    deltas: Deltas,
}

/// The root's children, asked of the root (this actor's supervisor).
async fn children(myself: &ActorRef<DashboardMsg>) -> Vec<ChildView> {
    let Some(root) = myself.try_get_supervisor() else {
        return Vec::new();
    };
    let root: ActorRef<RootMsg> = root.into();
    match root
        .call(RootMsg::Children, Some(Duration::from_secs(1)))
        .await
    {
        Ok(CallResult::Success(children)) => children,
        _ => Vec::new(),
    }
}

impl Actor for Dashboard {
    type Msg = DashboardMsg;
    type State = DashboardState;
    type Arguments = Arc<Hub>;

    async fn pre_start(
        &self,
        myself: ActorRef<DashboardMsg>,
        hub: Arc<Hub>,
    ) -> Result<DashboardState, ActorProcessingErr> {
        hub.activity.sample(&hub);
        myself.send_after(hub.config.dashboard_interval(), || DashboardMsg::Tick);
        Ok(DashboardState {
            hub,
            deltas: Deltas::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<DashboardMsg>,
        msg: DashboardMsg,
        state: &mut DashboardState,
    ) -> Result<(), ActorProcessingErr> {
        let DashboardMsg::Tick = msg;
        let hub = &state.hub;
        hub.activity.sample(hub);
        if hub.pubsub.subscriber_count(TOPIC) > 0 {
            let children = children(&myself).await;
            let snapshot = snapshot(hub, &children, &mut state.deltas).await;
            hub.pubsub
                .broadcast_local(TOPIC, "snapshot", &snapshot, None);
        } else {
            // Rates over a watcher's absence would be averages over it: start afresh.
            state.deltas = Deltas::default();
        }
        myself.send_after(hub.config.dashboard_interval(), || DashboardMsg::Tick);
        Ok(())
    }
}
