//! The server API: how a backend drives the node over HTTP.
//!
//! ```text
//! POST /api/broadcast   {topic, event, payload}     push to every subscriber of topic
//!                                                    (Phoenix's Endpoint.broadcast)      → 202 {ok}
//! POST /api/events      {event_type, payload,        put an event on the bus (how a backend
//!                        event_id?, source?}         without NATS drives the embedded bus) → 202 {event_id}
//! POST /api/notify     {user_id, notification_type,  a notification.requested payload,
//!                        title, body, ...}           put on the bus                       → 202 {event_id, notification_id}
//! GET  /api/presence/{topic}                         Presence.list: {key: {metas: [..]}}  → 200
//! POST /api/disconnect  {user_id}                    close all of the user's sockets      → 200 {disconnected}
//! GET  /api/history/{topic}?before=&limit=           older messages, oldest first         → 200 {messages, more}
//! DELETE /api/messages/{id}                          delete a message; topic gets msg_deleted → 200 / 404
//! GET  /api/media/{id}                               a media's transcode: status, renditions → 200 / 404
//! GET  /api/jobs?status=&kind=&limit=                job records, newest change first     → 200 {jobs}
//! ```
//!
//! Every request carries `Authorization: apikey <api.key>`; with no key configured
//! the API is off. Refusals are JSON `{error, reason}`: 401 bad key, 400 bad JSON
//! or fields, 404 no such record, 422 an event its subject's schema refuses, 503 bus or
//! database unreachable (or `database.url = "off"`).

use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Refusal;
use crate::bus::events::{self, WORK_SUBJECTS};
use crate::hub::Hub;

/// Check `Authorization: apikey <key>` in constant time.
fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), Refusal> {
    let unauthorized =
        |reason: &str| Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", reason);
    let key = hub.config.api.key.as_bytes();
    if key.is_empty() {
        return Err(unauthorized(
            "the server API is off: set api.key (ARMORICORE_API__KEY)",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("apikey "))
        .ok_or_else(|| unauthorized("expected the header Authorization: apikey <key>"))?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(given.trim().as_bytes(), key).is_err() {
        return Err(unauthorized("invalid API key"));
    }
    Ok(())
}

fn bad_request(reason: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::BAD_REQUEST, "bad_request", reason)
}

/// The body as a JSON object.
fn object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(bad_request("expected a JSON object")),
        Err(e) => Err(bad_request(format!("invalid JSON: {e}"))),
    }
}

/// A required non-empty string field.
fn string<'a>(body: &'a Map<String, Value>, field: &str) -> Result<&'a str, Refusal> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(bad_request(format!("{field} must be a non-empty string"))),
        None => Err(bad_request(format!("missing field {field}"))),
    }
}

/// `POST /api/broadcast {topic, event, payload}`.
pub async fn broadcast(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    authorize(&hub, &headers)?;
    let body = object(&body)?;
    let topic = string(&body, "topic")?;
    let event = string(&body, "event")?;
    if event.starts_with("phx_") {
        return Err(bad_request("phx_ events are reserved for the protocol"));
    }
    let payload = match body.get("payload") {
        None => Value::Object(Map::new()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(_) => return Err(bad_request("payload must be a JSON object")),
    };
    let subscribers = hub.pubsub.subscriber_count(topic);
    hub.pubsub.broadcast(topic, event, &payload, None);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"ok": true, "subscribers": subscribers})),
    )
        .into_response())
}

/// Whether any string (or key) in `v` contains a NUL character.
fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `POST /api/events {event_type, payload, event_id?, source?}`.
pub async fn publish_event(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    authorize(&hub, &headers)?;
    let event_id = publish(&hub, object(&body)?).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({"event_id": event_id}))).into_response())
}

/// `POST /api/notify {user_id, notification_type, title, body, ...}`: the payload of a
/// `notification.requested` event, put on the bus as one (for backends without a
/// bus). 202 `{event_id, notification_id}`.
pub async fn notify(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Refusal> {
    authorize(&hub, &headers)?;
    let mut payload = object(&body)?;
    let notification_id = match payload.get("notification_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(bad_request(
                "notification_id must be a non-empty string or a number",
            ));
        }
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            payload.insert("notification_id".into(), json!(id));
            id
        }
    };
    let mut envelope = Map::new();
    envelope.insert("event_type".into(), json!(events::NOTIFICATION_REQUESTED));
    envelope.insert("payload".into(), Value::Object(payload));
    let event_id = publish(&hub, envelope).await?;
    let answer = json!({"event_id": event_id, "notification_id": notification_id});
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// Validate an event envelope and put it on the bus (work subjects on the work
/// queue); its `event_id`.
pub(crate) async fn publish(hub: &Hub, mut body: Map<String, Value>) -> Result<String, Refusal> {
    let subject = string(&body, "event_type")?.to_string();
    if !events::is_known(&subject) {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            format!("unknown event_type {subject:?} (docs/events.md lists them)"),
        ));
    }
    if !body.contains_key("event_id") {
        body.insert("event_id".into(), json!(uuid::Uuid::now_v7().to_string()));
    }
    if !body.contains_key("timestamp") {
        let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        body.insert("timestamp".into(), json!(now));
    }
    if !body.contains_key("source") {
        body.insert("source".into(), json!("api"));
    }
    let raw = serde_json::to_vec(&body).expect("a JSON map serializes");
    // PostgreSQL text cannot hold NUL: refused here, not failed later in a job record.
    if has_nul(&Value::Object(body.clone())) {
        return Err(Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            "strings must not contain NUL (\\u0000)",
        ));
    }
    let envelope = events::parse(&subject, &raw).map_err(|invalid| {
        Refusal::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event",
            invalid.reason,
        )
    })?;
    let wire = hub.outlet.wire_subject(&subject);
    // The event as sent (defaults filled in): envelope fields we do not know are kept.
    let bytes = Bytes::from(raw);
    let sent = if WORK_SUBJECTS.contains(&subject.as_str()) {
        hub.bus.enqueue(&wire, &envelope.event_id, bytes).await
    } else {
        hub.bus.publish(&wire, bytes).await
    };
    sent.map_err(|e| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "bus_unavailable",
            e.to_string(),
        )
    })?;
    hub.metrics
        .bus_events_out
        .with_label_values(&[subject.as_str()])
        .inc();
    Ok(envelope.event_id)
}

/// `GET /api/presence/{topic}`: the topic's presences, as `presence_state` has them.
pub async fn presence(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(topic): Path<String>,
) -> Result<Json<Value>, Refusal> {
    authorize(&hub, &headers)?;
    Ok(Json(hub.presence.list(&topic)))
}

/// `POST /api/disconnect {user_id}`: close every socket of the user with 1000. As
/// with Phoenix's `"disconnect"` broadcast, phoenix.js connects again (it
/// reconnects after any close it did not ask for): to keep a user out, stop
/// giving it tokens as well.
pub async fn disconnect(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, Refusal> {
    authorize(&hub, &headers)?;
    let body = object(&body)?;
    let user_id = match body.get("user_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => {
            return Err(bad_request(
                "user_id must be a non-empty string or a number",
            ));
        }
    };
    let closed = hub.disconnect_user(&user_id, 1000, "disconnected by the server");
    tracing::info!(user_id, closed, "disconnected by the server API");
    Ok(Json(json!({"disconnected": closed})))
}

/// The query string as a map (`?before=10&limit=5`).
type Params = axum::extract::Query<std::collections::HashMap<String, String>>;

/// An optional numeric query parameter.
fn number(params: &Params, name: &str) -> Result<Option<u64>, Refusal> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| bad_request(format!("{name} must be a non-negative integer"))),
    }
}

fn unavailable(e: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

fn not_found(reason: impl Into<String>) -> Refusal {
    Refusal::new(StatusCode::NOT_FOUND, "not_found", reason)
}

/// The database, or 503 when messages and jobs are not kept.
fn store(hub: &Hub) -> Result<&crate::store::Store, Refusal> {
    hub.store
        .as_deref()
        .ok_or_else(|| unavailable("nothing is kept: database.url is \"off\""))
}

/// `GET /api/history/{topic}?before=<offset>&limit=N`: a page of older messages,
/// oldest first, `more` when older ones remain.
pub async fn history(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(topic): Path<String>,
    params: Params,
) -> Result<Json<Value>, Refusal> {
    authorize(&hub, &headers)?;
    let before = number(&params, "before")?;
    let limit = number(&params, "limit")?.unwrap_or(50);
    if limit == 0 {
        return Err(bad_request("limit must be at least 1"));
    }
    let limit = (limit as usize).min(hub.config.database.page_max);
    let page = hub
        .history
        .page(&topic, before, limit)
        .await
        .map_err(unavailable)?;
    let more = page.len() == limit;
    let messages: Vec<Value> = page
        .into_iter()
        .map(|m| std::sync::Arc::unwrap_or_clone(m.payload))
        .collect();
    Ok(Json(
        json!({"topic": topic, "messages": messages, "more": more}),
    ))
}

/// `DELETE /api/messages/{id}`: remove a message (moderation); the topic is told
/// `msg_deleted {id, offset}`.
pub async fn delete_message(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Refusal> {
    authorize(&hub, &headers)?;
    match hub.history.delete(&id).await.map_err(unavailable)? {
        Some((topic, offset)) => {
            tracing::info!(id, topic, offset, "message deleted by the server API");
            Ok(Json(
                json!({"deleted": {"id": id, "topic": topic, "offset": offset}}),
            ))
        }
        None => Err(not_found(format!("no message {id:?} is kept"))),
    }
}

fn rfc3339(ms: Option<i64>) -> Value {
    match ms {
        Some(ms) if ms >= 0 => {
            let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64);
            json!(humantime::format_rfc3339_millis(at).to_string())
        }
        _ => Value::Null,
    }
}

/// A job record as the API shows it.
pub(crate) fn job_json(job: &crate::store::JobRecord) -> Value {
    json!({
        "id": job.id,
        "kind": job.kind,
        "subject_id": job.subject_id,
        "user_id": job.user_id,
        "status": job.status.as_str(),
        "attempts": job.attempts,
        "node": job.node,
        "error": job.error,
        "result": job.result,
        "created_at": rfc3339(Some(job.created_at_ms)),
        "updated_at": rfc3339(Some(job.updated_at_ms)),
        "started_at": rfc3339(job.started_at_ms),
        "finished_at": rfc3339(job.finished_at_ms),
    })
}

/// `GET /api/media/{id}`: the media's newest transcode: status, attempts, error,
/// timestamps, and once ready its renditions and URLs (the `media.ready` payload).
pub async fn media(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, Refusal> {
    authorize(&hub, &headers)?;
    let job = store(&hub)?
        .job_for(events::MEDIA_UPLOADED, &id)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| not_found(format!("no media {id:?} was submitted to this cluster")))?;
    let mut media = json!({
        "media_id": id,
        "user_id": job.user_id,
        "status": job.status.as_str(),
        "attempts": job.attempts,
        "error": job.error,
        "job_id": job.id,
        "created_at": rfc3339(Some(job.created_at_ms)),
        "updated_at": rfc3339(Some(job.updated_at_ms)),
        "started_at": rfc3339(job.started_at_ms),
        "finished_at": rfc3339(job.finished_at_ms),
    });
    if let (Some(Value::Object(result)), Value::Object(out)) = (&job.result, &mut media) {
        for (k, v) in result {
            out.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Ok(Json(media))
}

/// `GET /api/jobs?status=failed&kind=media.uploaded&limit=N`: job records, the
/// most recently changed first.
pub async fn jobs(
    State(hub): State<Arc<Hub>>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<Value>, Refusal> {
    authorize(&hub, &headers)?;
    let status = match params.get("status") {
        None => None,
        Some(s) => Some(crate::store::JobStatus::parse(s).ok_or_else(|| {
            bad_request("status must be one of queued, running, retrying, done, failed")
        })?),
    };
    let kind = params.get("kind").map(String::as_str);
    if let Some(kind) = kind
        && !WORK_SUBJECTS.contains(&kind)
    {
        return Err(bad_request(format!(
            "kind must be a work subject: {}",
            WORK_SUBJECTS.join(", ")
        )));
    }
    let limit = number(&params, "limit")?.unwrap_or(100).clamp(1, 1000) as usize;
    let jobs = store(&hub)?
        .jobs(status, kind, limit)
        .await
        .map_err(unavailable)?;
    let jobs: Vec<Value> = jobs.iter().map(job_json).collect();
    Ok(Json(json!({"jobs": jobs})))
}
