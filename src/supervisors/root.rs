//! RootSupervisor: the top of the tree; one_for_one over the node's services.
//!
//! Every child is `Permanent`. A child that exits (failure or not) outside shutdown
//! is restarted and counted in `armoricore_actor_restarts_total{supervisor="root"}`;
//! more than `supervision.max_restarts` restarts within `supervision.window_ms` and
//! the root fails itself, which ends `serve` with an error, as an OTP application
//! whose top supervisor gives up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::policy::{Exit, Intensity, RestartPolicy, exit_of};
use super::sessions::SessionSupervisor;
use crate::actors::bridge::BusBridge;
use crate::actors::gateway::{Gateway, GatewayArgs};
use crate::actors::janitor::Janitor;
use crate::actors::presence::PresenceTracker;
use crate::actors::transcode::TranscodeSupervisor;
use crate::hub::Hub;

/// The root's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Child {
    Gateway,
    Sessions,
    Presence,
    Janitor,
    Bridge,
    /// The TranscodeSupervisor (when the node transcodes).
    Media,
    /// The notifications' TaskSupervisor (when a notification provider is configured).
    Notifications,
    /// The AI jobs' TaskSupervisor (when an AI provider is configured).
    Ai,
    /// The CallSupervisor (when calls are enabled).
    Calls,
    /// Samples activity and feeds the dashboard (`admin:dashboard`).
    Dashboard,
}

impl Child {
    /// Start order; they stop in reverse (the bridge hands running jobs back
    /// after the sessions are gone).
    const ALL: [Child; 10] = [
        Child::Janitor,
        Child::Dashboard,
        Child::Presence,
        Child::Calls,
        Child::Media,
        Child::Notifications,
        Child::Ai,
        Child::Bridge,
        Child::Sessions,
        Child::Gateway,
    ];

    fn policy(self) -> RestartPolicy {
        RestartPolicy::Permanent
    }

    /// Its name on the dashboard.
    pub fn name(self) -> &'static str {
        match self {
            Child::Gateway => "gateway",
            Child::Sessions => "sessions",
            Child::Presence => "presence",
            Child::Janitor => "janitor",
            Child::Bridge => "bus_bridge",
            Child::Media => "transcode",
            Child::Notifications => "notifications",
            Child::Ai => "ai",
            Child::Calls => "calls",
            Child::Dashboard => "dashboard",
        }
    }
}

/// A child of the root as the dashboard shows it.
#[derive(Debug, Clone)]
pub struct ChildView {
    pub child: Child,
    pub cell: ActorCell,
    /// Times the root restarted it.
    pub restarts: u64,
}

pub struct RootSupervisor;

pub struct RootArgs {
    pub hub: Arc<Hub>,
    pub listener: Arc<std::net::TcpListener>,
}

pub enum RootMsg {
    /// Test and operations hook: the current cell of a child.
    Child(Child, ractor::RpcReplyPort<Option<ActorCell>>),
    /// Every running child, in start order, with its restart count.
    Children(ractor::RpcReplyPort<Vec<ChildView>>),
}

pub struct RootState {
    hub: Arc<Hub>,
    listener: Arc<std::net::TcpListener>,
    children: HashMap<ActorId, (Child, ActorCell)>,
    restarts: HashMap<Child, u64>,
    intensity: Intensity,
}

impl RootSupervisor {
    async fn start_child(
        myself: &ActorRef<RootMsg>,
        state: &mut RootState,
        child: Child,
    ) -> Result<(), ActorProcessingErr> {
        let hub = state.hub.clone();
        let sup = myself.get_cell();
        let cell = match child {
            Child::Gateway => {
                let args = GatewayArgs {
                    hub,
                    listener: state.listener.clone(),
                };
                Actor::spawn_linked(None, Gateway, args, sup)
                    .await?
                    .0
                    .get_cell()
            }
            Child::Sessions => {
                let (actor, _) =
                    Actor::spawn_linked(None, SessionSupervisor, hub.clone(), sup).await?;
                hub.set_session_supervisor(Some(actor.get_cell()));
                actor.get_cell()
            }
            Child::Bridge => Actor::spawn_linked(None, BusBridge, hub, sup)
                .await?
                .0
                .get_cell(),
            Child::Media => {
                let Some(service) = hub.media.clone() else {
                    return Ok(());
                };
                let (actor, _) =
                    Actor::spawn_linked(None, TranscodeSupervisor, service.clone(), sup).await?;
                service.set_supervisor(Some(actor.clone()));
                actor.get_cell()
            }
            Child::Notifications => {
                let Some(service) = hub.notify.clone() else {
                    return Ok(());
                };
                let (actor, _) = Actor::spawn_linked(
                    None,
                    crate::supervisors::tasks::TaskSupervisor::new("notifications"),
                    hub.metrics.clone(),
                    sup,
                )
                .await?;
                service.tasks.set_supervisor(Some(actor.clone()));
                actor.get_cell()
            }
            Child::Ai => {
                let Some(service) = hub.ai.clone() else {
                    return Ok(());
                };
                let (actor, _) = Actor::spawn_linked(
                    None,
                    crate::supervisors::tasks::TaskSupervisor::new("ai"),
                    hub.metrics.clone(),
                    sup,
                )
                .await?;
                service.tasks.set_supervisor(Some(actor.clone()));
                actor.get_cell()
            }
            Child::Calls => {
                let Some(calls) = hub.calls.clone() else {
                    return Ok(());
                };
                let (actor, _) = Actor::spawn_linked(
                    None,
                    crate::supervisors::calls::CallSupervisor,
                    calls.clone(),
                    sup,
                )
                .await?;
                calls.set_supervisor(Some(actor.get_cell()));
                actor.get_cell()
            }
            Child::Dashboard => {
                Actor::spawn_linked(None, crate::actors::dashboard::Dashboard, hub, sup)
                    .await?
                    .0
                    .get_cell()
            }
            Child::Janitor => Actor::spawn_linked(None, Janitor, hub, sup)
                .await?
                .0
                .get_cell(),
            Child::Presence => {
                let (actor, _) =
                    Actor::spawn_linked(None, PresenceTracker, hub.presence.clone(), sup).await?;
                hub.presence.set_tracker(Some(actor.clone()));
                actor.get_cell()
            }
        };
        state.children.insert(cell.get_id(), (child, cell));
        Ok(())
    }
}

impl Actor for RootSupervisor {
    type Msg = RootMsg;
    type State = RootState;
    type Arguments = RootArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RootMsg>,
        args: RootArgs,
    ) -> Result<RootState, ActorProcessingErr> {
        let sup = &args.hub.config.supervision;
        let mut state = RootState {
            intensity: Intensity::new(sup.max_restarts, Duration::from_millis(sup.window_ms)),
            hub: args.hub,
            listener: args.listener,
            children: HashMap::new(),
            restarts: HashMap::new(),
        };
        for child in Child::ALL {
            Self::start_child(&myself, &mut state, child).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RootMsg>,
        msg: RootMsg,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RootMsg::Child(which, reply) => {
                let cell = state
                    .children
                    .values()
                    .find(|(c, _)| *c == which)
                    .map(|(_, cell)| cell.clone());
                let _ = reply.send(cell);
            }
            RootMsg::Children(reply) => {
                let children = Child::ALL
                    .iter()
                    .filter_map(|which| {
                        let (child, cell) = state.children.values().find(|(c, _)| c == which)?;
                        Some(ChildView {
                            child: *child,
                            cell: cell.clone(),
                            restarts: state.restarts.get(child).copied().unwrap_or(0),
                        })
                    })
                    .collect();
                let _ = reply.send(children);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RootMsg>,
        event: SupervisionEvent,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, exit)) = exit_of(&event) else {
            return Ok(());
        };
        let Some((child, _)) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.hub.is_shutting_down() || !child.policy().restarts(&exit) {
            return Ok(());
        }
        match &exit {
            Exit::Failed(reason) => tracing::error!(?child, %reason, "child failed; restarting"),
            Exit::Normal => tracing::warn!(?child, "child exited; restarting"),
        }
        state
            .hub
            .metrics
            .restarts
            .with_label_values(&["root"])
            .inc();
        *state.restarts.entry(child).or_default() += 1;
        if !state.intensity.allow(Instant::now()) {
            return Err(
                format!("restart intensity exceeded ({child:?} keeps failing); giving up").into(),
            );
        }
        Self::start_child(&myself, state, child).await
    }

    async fn post_stop(
        &self,
        myself: ActorRef<RootMsg>,
        state: &mut RootState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop children in reverse start order, each getting its post_stop.
        for child in Child::ALL.iter().rev() {
            if let Some((_, cell)) = state.children.values().find(|(c, _)| c == child) {
                let _ = cell.stop_and_wait(None, Some(Duration::from_secs(3))).await;
            }
        }
        state.hub.presence.set_tracker(None);
        if let Some(media) = &state.hub.media {
            media.set_supervisor(None);
        }
        if let Some(notify) = &state.hub.notify {
            notify.tasks.set_supervisor(None);
        }
        if let Some(ai) = &state.hub.ai {
            ai.tasks.set_supervisor(None);
        }
        if let Some(calls) = &state.hub.calls {
            calls.set_supervisor(None);
        }
        state.hub.set_session_supervisor(None);
        myself.stop_children(None);
        Ok(())
    }
}
