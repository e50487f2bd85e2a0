//! TaskSupervisor: runs each task in its own actor, linked to it, as a job
//! supervisor in OTP starts one worker per job. A task that panics kills only
//! its actor: the supervisor counts it (`armoricore_actor_restarts_total{supervisor}`)
//! and the caller gets `None`, so the bus delivers the job again.
//!
//! ```text
//! Tasks::run(task) ─cast→ TaskSupervisor ─spawn_linked→ TaskActor (runs the task,
//!                                                       answers, stops)
//! ```

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::oneshot;

use super::policy::exit_of;
use crate::metrics::Metrics;

type Reply<T> = Arc<Mutex<Option<oneshot::Sender<T>>>>;

pub enum TaskMsg<T> {
    Run(BoxFuture<'static, T>, oneshot::Sender<T>),
}

/// The handle jobs use: the current supervisor, set by the root supervisor.
pub struct Tasks<T> {
    supervisor: Mutex<Option<ActorRef<TaskMsg<T>>>>,
}

impl<T: Send + 'static> Default for Tasks<T> {
    fn default() -> Self {
        Tasks {
            supervisor: Mutex::new(None),
        }
    }
}

impl<T: Send + 'static> Tasks<T> {
    pub fn set_supervisor(&self, actor: Option<ActorRef<TaskMsg<T>>>) {
        *self.supervisor.lock() = actor;
    }

    /// Run `task` in its own actor; `None` if that actor died first (or no
    /// supervisor runs).
    pub async fn run(&self, task: BoxFuture<'static, T>) -> Option<T> {
        let sup = self.supervisor.lock().clone()?;
        let (reply, answer) = oneshot::channel();
        sup.cast(TaskMsg::Run(task, reply)).ok()?;
        answer.await.ok()
    }
}

/// Spawns one [`TaskActor`] per task. `label` names it in the restart metric.
pub struct TaskSupervisor<T> {
    pub label: &'static str,
    _task: PhantomData<fn() -> T>,
}

impl<T> TaskSupervisor<T> {
    pub fn new(label: &'static str) -> TaskSupervisor<T> {
        TaskSupervisor {
            label,
            _task: PhantomData,
        }
    }
}

pub struct SupervisorState<T> {
    metrics: Arc<Metrics>,
    running: HashMap<ActorId, Reply<T>>,
}

impl<T: Send + 'static> Actor for TaskSupervisor<T> {
    type Msg = TaskMsg<T>;
    type State = SupervisorState<T>;
    type Arguments = Arc<Metrics>;

    async fn pre_start(
        &self,
        _myself: ActorRef<TaskMsg<T>>,
        metrics: Arc<Metrics>,
    ) -> Result<SupervisorState<T>, ActorProcessingErr> {
        Ok(SupervisorState {
            metrics,
            running: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TaskMsg<T>>,
        msg: TaskMsg<T>,
        state: &mut SupervisorState<T>,
    ) -> Result<(), ActorProcessingErr> {
        let TaskMsg::Run(task, reply) = msg;
        let reply: Reply<T> = Arc::new(Mutex::new(Some(reply)));
        let actor = TaskActor::<T>(PhantomData);
        match Actor::spawn_linked(None, actor, (task, reply.clone()), myself.get_cell()).await {
            Ok((actor, _)) => {
                state.running.insert(actor.get_id(), reply);
            }
            Err(e) => {
                tracing::error!(supervisor = self.label, error = %e, "could not start a task actor");
                reply.lock().take(); // the caller sees the actor gone
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<TaskMsg<T>>,
        event: SupervisionEvent,
        state: &mut SupervisorState<T>,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, exit)) = exit_of(&event) else {
            return Ok(());
        };
        if let Some(reply) = state.running.remove(&cell.get_id())
            && reply.lock().take().is_some()
        {
            // Died before answering: counted; the caller hands the job back.
            state
                .metrics
                .restarts
                .with_label_values(&[self.label])
                .inc();
            tracing::error!(supervisor = self.label, ?exit, "task actor crashed");
        }
        Ok(())
    }
}

/// One task: runs it in its own actor task, answers, stops.
pub struct TaskActor<T>(PhantomData<fn() -> T>);

type TaskArgs<T> = (BoxFuture<'static, T>, Reply<T>);

impl<T: Send + 'static> Actor for TaskActor<T> {
    type Msg = ();
    type State = Option<TaskArgs<T>>;
    type Arguments = TaskArgs<T>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        args: TaskArgs<T>,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Some(args))
    }

    async fn post_start(
        &self,
        myself: ActorRef<()>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((task, reply)) = state.take() {
            let value = task.await;
            if let Some(reply) = reply.lock().take() {
                let _ = reply.send(value);
            }
        }
        myself.stop(None);
        Ok(())
    }
}
