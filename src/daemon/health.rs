//! `/health` (the process answers), `/health/ready` (store reachable,
//! channels and providers configured) and `/metrics` (Prometheus text).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Daemon;

pub async fn live() -> &'static str {
    "ok\n"
}

pub async fn ready(State(daemon): State<Arc<Daemon>>) -> Response {
    let store = daemon
        .store
        .outbox_stats()
        .map(|_| ())
        .map_err(|e| e.to_string());
    let channels: Vec<&str> = daemon
        .channels
        .iter()
        .map(|c| c.channel().as_str())
        .collect();
    let providers = &daemon.settings.providers;
    let ready =
        store.is_ok() && !channels.is_empty() && !providers.is_empty() && !daemon.stopping();
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

pub async fn metrics(State(daemon): State<Arc<Daemon>>) -> Response {
    let text = daemon.metrics.render(daemon.store.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
