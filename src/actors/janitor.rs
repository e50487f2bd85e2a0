//! Janitor: the node's periodic housekeeping every `history.sweep_interval_s`:
//! expired history messages, forgotten topics, idle per-user rate buckets; and
//! every `database.retention_interval_s`, database retention (messages past their
//! topic's `database.retention` rule, finished jobs past `job_retention_days`).
//!
//! Supervised by the RootSupervisor (permanent); it owns nothing but its timer.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::hub::Hub;

pub struct Janitor;

pub enum JanitorMsg {
    Sweep,
    Retain,
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
        if hub.store.is_some() {
            let every = Duration::from_secs(hub.config.database.retention_interval_s);
            myself.send_interval(every, || JanitorMsg::Retain);
        }
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
            JanitorMsg::Retain => retain(hub).await,
        }
        Ok(())
    }
}

/// Apply `database.retention` and `database.job_retention_days` once.
pub async fn retain(hub: &Hub) {
    let Some(store) = &hub.store else {
        return;
    };
    let config = &hub.config.database;
    let now = crate::store::now_ms();
    match store.enforce_retention(&config.retention, now).await {
        Ok(0) => {}
        Ok(n) => {
            hub.metrics.store_retention_deleted.inc_by(n);
            tracing::info!(messages = n, "retention deleted messages");
        }
        Err(e) => {
            hub.metrics
                .store_errors
                .with_label_values(&["retention"])
                .inc();
            tracing::warn!(error = %e, "message retention failed");
        }
    }
    if let Err(e) = store.forget_empty_topics(now - 86_400_000).await {
        hub.metrics
            .store_errors
            .with_label_values(&["retention"])
            .inc();
        tracing::warn!(error = %e, "could not forget empty topics");
    }
    if config.job_retention_days > 0 {
        let before = now - config.job_retention_days as i64 * 86_400_000;
        match store.delete_finished_jobs(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "retention deleted finished jobs"),
            Err(e) => {
                hub.metrics
                    .store_errors
                    .with_label_values(&["retention"])
                    .inc();
                tracing::warn!(error = %e, "job retention failed");
            }
        }
    }
}
