//! `/health` (the process answers), `/health/ready` (store reachable,
//! channels and providers configured) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Daemon;

/// The token of an `Authorization: Bearer <token>` header ("" without one).
pub(super) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
}

pub async fn live() -> &'static str {
    "ok\n"
}

pub async fn ready(State(daemon): State<Arc<Daemon>>) -> Response {
    let store = daemon
        .store
        .outbox_stats()
        .map(|_| ())
        .map_err(|e| e.to_string());
    let live = daemon.live();
    let channels: Vec<&str> = live.channels.iter().map(|c| c.channel().as_str()).collect();
    let providers = &live.providers;
    // With an external agent (MCP), no LLM provider is needed.
    let answerable = !providers.is_empty() || daemon.settings.external;
    let ready = store.is_ok() && !channels.is_empty() && answerable && !daemon.stopping();
    let body = json!({
        "ready": ready,
        "store": store.err().unwrap_or_else(|| "ok".into()),
        "channels": channels,
        "providers": providers,
        "stopping": daemon.stopping(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

pub async fn metrics(State(daemon): State<Arc<Daemon>>, headers: HeaderMap) -> Response {
    if let Some(token) = &daemon.settings.metrics_token {
        let given = bearer(&headers);
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.as_bytes()).into();
        if !matches {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "/metrics needs `Authorization: Bearer <CONVAGENT_METRICS_TOKEN>`\n",
            )
                .into_response();
        }
    }
    let text = daemon
        .metrics
        .render(daemon.store.as_ref(), daemon.clock.now_ms());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
