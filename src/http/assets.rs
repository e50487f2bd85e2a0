//! Pages and scripts embedded in the binary (no build step, no CDN): phoenix.js
//! for browser clients, and the call demo page (docs/calls.md).
//!
//! ```text
//! GET /assets/phoenix.mjs   phoenix.js 1.8 as an ES module (MIT, vendored in static/)
//! GET /assets/call.js       the call client: joinCall(), inboundStats()
//! GET /calls/demo           a page that joins ?call=ID with ?token=JWT, camera and mic
//! GET /assets/dashboard.js  the operations page's script (http/dashboard.rs serves the page)
//! ```

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::hub::Hub;

const PHOENIX: &str = include_str!("../../static/phoenix.mjs");
const CALL_JS: &str = include_str!("../../static/call.js");
const CALL_HTML: &str = include_str!("../../static/call.html");
const DASHBOARD_JS: &str = include_str!("../../static/dashboard.js");

fn asset(kind: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
}

pub fn routes(calls: bool) -> Router<Arc<Hub>> {
    let router = Router::new()
        .route(
            "/assets/phoenix.mjs",
            get(|| async { asset("text/javascript; charset=utf-8", PHOENIX) }),
        )
        .route(
            "/assets/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        );
    if !calls {
        return router;
    }
    router
        .route(
            "/assets/call.js",
            get(|| async { asset("text/javascript; charset=utf-8", CALL_JS) }),
        )
        .route(
            "/calls/demo",
            get(|| async { asset("text/html; charset=utf-8", CALL_HTML) }),
        )
}
