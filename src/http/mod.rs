//! HTTP routes: the Phoenix socket endpoints and the operations endpoints.
//!
//! ```text
//! GET      /socket/websocket   Phoenix Channels over WebSocket (?vsn=2.0.0&token=JWT)
//! GET|POST /socket/longpoll    Phoenix long-poll transport
//! GET      /metrics            Prometheus text format
//! GET      /health             alive
//! GET      /ready              accepting connections (503 while starting or stopping);
//!                              "degraded" (still 200) while the message bus is down
//! POST     /api/broadcast, /api/events, /api/disconnect; GET /api/presence/{topic}
//!                              the server API (api.rs), with an API key
//! GET      /assets/phoenix.mjs, /assets/call.js, /calls/demo
//!                              embedded scripts and the call demo page (assets.rs)
//! GET      /dashboard, /dashboard/token
//!                              the operations page (dashboard.rs), with a password
//! GET      /media/...          transcoded media in local storage (read-only, ranges,
//!                              CORS open), so HLS plays out of the box
//! ```

pub mod api;
pub mod assets;
pub mod auth;
pub mod dashboard;
pub mod longpoll;
pub mod transport;
pub mod websocket;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::hub::Hub;

/// The node's HTTP application.
pub fn app(hub: Arc<Hub>) -> Router {
    let media_root = hub
        .media
        .as_ref()
        .and_then(|m| m.transcoder.storage().local_root().map(|r| r.join("media")));
    let router = Router::new()
        .route("/socket/websocket", get(websocket::upgrade))
        .route(
            "/socket/longpoll",
            get(longpoll::poll).post(longpoll::publish),
        )
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/broadcast", post(api::broadcast))
        .route("/api/events", post(api::publish_event))
        .route("/api/notify", post(api::notify))
        .route("/api/presence/{topic}", get(api::presence))
        .route("/api/disconnect", post(api::disconnect))
        .route("/api/history/{topic}", get(api::history))
        .route("/api/messages/{id}", delete(api::delete_message))
        .route("/api/media/{id}", get(api::media))
        .route("/api/jobs", get(api::jobs))
        .route("/dashboard", get(dashboard::page))
        .route("/dashboard/token", get(dashboard::fresh_token))
        .merge(assets::routes(hub.calls.is_some()))
        .with_state(hub);
    match media_root {
        Some(root) => router.nest_service(
            "/media",
            axum::routing::get_service(tower_http::services::ServeDir::new(root))
                .layer(axum::middleware::map_response(media_headers)),
        ),
        None => router,
    }
}

/// Media types players expect (`.m3u8`, `.ts`, `.m4s`, ...), and CORS open so a
/// player on another origin can fetch.
async fn media_headers(uri: axum::http::Uri, mut response: Response) -> Response {
    let ok = response.status().is_success();
    let headers = response.headers_mut();
    if ok {
        let kind = crate::media::storage::content_type(uri.path());
        if kind != "application/octet-stream" {
            headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        }
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// A refused request: a status and a JSON body `{error, reason}`.
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
}

impl Refusal {
    pub fn new(status: StatusCode, error: &'static str, reason: impl Into<String>) -> Refusal {
        Refusal {
            status,
            error,
            reason: reason.into(),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "reason": self.reason});
        (self.status, Json(body)).into_response()
    }
}

async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    hub.metrics
        .outbound_queue_depth
        .set(hub.outbound_queue_depth() as i64);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        hub.metrics.render(),
    )
        .into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(hub): State<Arc<Hub>>) -> Response {
    if hub.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopping"})),
        )
            .into_response();
    }
    if hub.session_supervisor().is_none() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting"})),
        )
            .into_response();
    }
    // A node whose bus is down still serves its clients: it stays in the load
    // balancer, and says what is missing.
    let bus = if hub.bus_ready() { "up" } else { "down" };
    let mut body = json!({
        "status": "ready",
        "connections": hub.sessions.len(),
        "bus": {"kind": hub.bus.kind(), "status": bus},
    });
    let mut degraded = bus == "down";
    if let Some(up) = hub.cluster_ready() {
        degraded |= !up;
        body["redis"] = json!({"status": if up { "up" } else { "down" }});
    }
    if let Some(notify) = &hub.notify {
        let mut providers = serde_json::Map::new();
        for (name, down) in notify.sender.status() {
            degraded |= down.is_some();
            let status = match down {
                None => json!({"status": "up"}),
                Some(reason) => json!({"status": "down", "reason": reason}),
            };
            providers.insert(name.into(), status);
        }
        body["notifications"] = serde_json::Value::Object(providers);
    }
    if let Some(ai) = &hub.ai {
        body["ai"] = json!({"providers": ai.providers()});
    }
    if let Some(store) = &hub.store {
        let up = tokio::time::timeout(std::time::Duration::from_secs(2), store.ping())
            .await
            .unwrap_or(false);
        degraded |= !up;
        body["database"] = json!({
            "kind": store.backend().name(),
            "status": if up { "up" } else { "down" },
        });
    }
    if degraded {
        body["status"] = json!("degraded");
    }
    Json(body).into_response()
}
