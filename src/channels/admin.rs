//! `admin:dashboard`: the operations page's channel (docs/dashboard.md). Only
//! tokens with the `admin` claim may join (the router checks it).
//!
//! ```text
//! join                                   → {node, version, interval_ms}; then a
//!                                          `snapshot` push every dashboard.interval_ms
//! presence {topic}                       → {topic, presences}   (Presence.list)
//! broadcast {topic, event, payload?}     → {topic, subscribers} (cluster-wide)
//! disconnect {user_id}                   → {user_id, disconnected} (this node's sockets)
//! cancel_job {job_id} | {media_id}       → {media_id}           (media.cancel on the bus)
//! retry_job {job_id}                     → {job_id, retry_of}   (the failed job's request,
//!                                                                published again)
//! ```
//!
//! Every action is logged with the operator's user id.

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Channel, ChannelCtx, ChannelError, Reply};
use crate::bus::events::{MEDIA_CANCEL, MEDIA_UPLOADED};
use crate::dashboard::TOPIC;
use crate::store::JobStatus;

pub struct AdminChannel;

/// A required non-empty string (or number) field of a request.
fn field<'a>(payload: &'a Value, name: &str) -> Result<std::borrow::Cow<'a, str>, Reply> {
    match payload.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str().into()),
        Some(Value::Number(n)) => Ok(n.to_string().into()),
        _ => Err(Reply::error(format!("{name} must be a non-empty string"))),
    }
}

fn presence(ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Reply, Reply> {
    let topic = field(payload, "topic")?;
    let presences = ctx.hub.presence.list(&topic);
    Ok(Reply::Ok(json!({"topic": topic, "presences": presences})))
}

fn broadcast(ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Reply, Reply> {
    let topic = field(payload, "topic")?;
    let event = field(payload, "event")?;
    if event.starts_with("phx_") || topic.starts_with("admin:") {
        return Err(Reply::error(
            "phx_ events and admin: topics are reserved for the node",
        ));
    }
    let body = match payload.get("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(Reply::error("payload must be a JSON object")),
    };
    let subscribers = ctx.hub.pubsub.subscriber_count(&topic);
    ctx.hub.pubsub.broadcast(&topic, &event, &body, None);
    tracing::info!(operator = %ctx.user.user_id, %topic, %event, "dashboard: broadcast");
    Ok(Reply::Ok(
        json!({"topic": topic, "subscribers": subscribers}),
    ))
}

fn disconnect(ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Reply, Reply> {
    let user_id = field(payload, "user_id")?;
    let closed = ctx
        .hub
        .disconnect_user(&user_id, 1000, "disconnected by an operator");
    tracing::info!(operator = %ctx.user.user_id, %user_id, closed, "dashboard: disconnect");
    Ok(Reply::Ok(
        json!({"user_id": user_id, "disconnected": closed}),
    ))
}

/// The job record `job_id`, or a clear refusal.
async fn record(ctx: &ChannelCtx<'_>, job_id: &str) -> Result<crate::store::JobRecord, Reply> {
    let store = ctx
        .hub
        .store
        .as_ref()
        .ok_or_else(|| Reply::error("jobs are not recorded here: database.url is \"off\""))?;
    store
        .job(job_id)
        .await
        .map_err(|e| Reply::error(format!("database: {e}")))?
        .ok_or_else(|| Reply::error(format!("no job {job_id:?}")))
}

async fn cancel_job(ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Reply, Reply> {
    let (media_id, user_id) = if payload.get("job_id").is_some() {
        let job = record(ctx, &field(payload, "job_id")?).await?;
        if job.kind != MEDIA_UPLOADED {
            return Err(Reply::error(format!(
                "only media jobs can be cancelled (this one is {})",
                job.kind
            )));
        }
        if job.status.is_final() {
            return Err(Reply::error(format!(
                "the job is {} already",
                job.status.as_str()
            )));
        }
        let media_id = job
            .subject_id
            .ok_or_else(|| Reply::error("the job names no media_id"))?;
        (media_id, job.user_id)
    } else {
        (field(payload, "media_id")?.into_owned(), None)
    };
    let mut cancel = Map::new();
    cancel.insert("media_id".into(), json!(media_id));
    if let Some(user_id) = user_id {
        cancel.insert("user_id".into(), json!(user_id));
    }
    ctx.hub
        .outlet
        .publish(MEDIA_CANCEL, cancel)
        .await
        .map_err(|e| Reply::error(format!("bus: {e}")))?;
    tracing::info!(operator = %ctx.user.user_id, %media_id, "dashboard: media job cancelled");
    Ok(Reply::Ok(json!({"media_id": media_id})))
}

async fn retry_job(ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Reply, Reply> {
    let job = record(ctx, &field(payload, "job_id")?).await?;
    if job.status != JobStatus::Failed {
        return Err(Reply::error(format!(
            "only failed jobs are retried (this one is {})",
            job.status.as_str()
        )));
    }
    let Ok(Value::Object(mut request)) = serde_json::from_str::<Value>(&job.request) else {
        return Err(Reply::error("the job's request is not readable"));
    };
    // A new event: the old id is within the bus's dedupe window, and the new job
    // gets its own record.
    request.remove("event_id");
    request.remove("timestamp");
    request.insert("source".into(), json!("dashboard"));
    request.insert("retry_of".into(), json!(job.id));
    let new_id = crate::http::api::publish(ctx.hub, request)
        .await
        .map_err(|refusal| Reply::error(refusal.reason))?;
    tracing::info!(operator = %ctx.user.user_id, job_id = %job.id, new_id, "dashboard: job retried");
    Ok(Reply::Ok(json!({"job_id": new_id, "retry_of": job.id})))
}

#[async_trait]
impl Channel for AdminChannel {
    async fn join(&self, ctx: &ChannelCtx<'_>, _payload: &Value) -> Result<Value, Value> {
        if ctx.topic != TOPIC {
            return Err(json!({"reason": format!("unknown admin topic (only {TOPIC})")}));
        }
        tracing::info!(operator = %ctx.user.user_id, "dashboard: joined");
        Ok(json!({
            "node": ctx.hub.node_name,
            "version": env!("CARGO_PKG_VERSION"),
            "interval_ms": ctx.hub.config.dashboard.interval_ms,
        }))
    }

    async fn handle_in(
        &self,
        ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        let reply = match event {
            "presence" => presence(ctx, &payload),
            "broadcast" => broadcast(ctx, &payload),
            "disconnect" => disconnect(ctx, &payload),
            "cancel_job" => cancel_job(ctx, &payload).await,
            "retry_job" => retry_job(ctx, &payload).await,
            other => Err(Reply::error(format!("unknown event {other:?}"))),
        };
        Ok(Some(reply.unwrap_or_else(|refusal| refusal)))
    }
}
