//! `/mcp`: the MCP tools of `convagent mcp` over Streamable HTTP, for agents
//! that reach the daemon over the network. Every request carries a bearer
//! token made with `convagent mcp token create`; the store keeps only its
//! SHA-256, so a copied database gives no access.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};

use super::Daemon;
use crate::adapters::mcp::server::Caller;
use crate::adapters::mcp::{Relay, RelaySettings, token_hash};
use crate::core::ports::{TokenChange, Write};

/// How often a token's last use is written (not on every request).
const USED_EVERY_MS: i64 = 60_000;

/// The MCP service, one relay per session, built with the channels in
/// force when the session starts.
pub(super) fn service(daemon: &Arc<Daemon>) -> StreamableHttpService<Relay, LocalSessionManager> {
    let factory = daemon.clone();
    let config = StreamableHttpServerConfig::default()
        // Every request is authenticated by its token, and providers reach
        // the daemon under its public name: the Host check meant for
        // unauthenticated local servers would only refuse them.
        .disable_allowed_hosts()
        .with_cancellation_token(daemon.mcp_stop.child_token());
    StreamableHttpService::new(
        move || Ok(relay(&factory)),
        LocalSessionManager::default().into(),
        config,
    )
}

/// A relay on the daemon's store, woken by its webhooks.
pub fn relay(daemon: &Arc<Daemon>) -> Relay {
    let waker = daemon.clone();
    let settings = RelaySettings {
        channels: daemon.live().channels.iter().map(|c| c.channel()).collect(),
        external: daemon.settings.external,
        take: daemon.settings.mcp_take,
        send_takes_over: daemon.settings.mcp_send_takes_over,
        after_send: Arc::new(move || waker.wake_outbox()),
        arrivals: Some(daemon.arrivals.subscribe()),
    };
    Relay::new(daemon.store.clone(), daemon.clock.clone(), settings)
}

/// When each token was last recorded as used (by hash).
#[derive(Default)]
pub(crate) struct Uses(Mutex<HashMap<String, i64>>);

fn refuse(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        format!("{why}\n"),
    )
        .into_response()
}

/// Whether a request's `Origin` (if any) is one `/mcp` serves: a page on
/// this machine, or one of the configured origins, compared without case
/// and with the scheme's default port made explicit.
fn origin_allowed(origin: Option<&header::HeaderValue>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let canonical = |o: &str| {
        let o = o.trim().trim_end_matches('/').to_ascii_lowercase();
        match o.split_once("://") {
            Some(("https", host)) if !host.contains(':') => format!("https://{host}:443"),
            Some(("http", host)) if !host.contains(':') => format!("http://{host}:80"),
            _ => o,
        }
    };
    let origin = canonical(origin);
    loopback(&origin) || allowed.iter().any(|a| canonical(a) == origin)
}

/// A page of this machine (`http://localhost:3000`, `http://127.0.0.1`,
/// `http://[::1]:8080`): what DNS rebinding cannot forge, since a browser
/// sends the origin of the page, not the address a name resolved to.
fn loopback(origin: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => rest.split(':').next().unwrap_or_default(),
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// Lets a request through only from an allowed origin and with a token the
/// store knows; a session's DELETE answers 204 (rmcp says 202, which
/// clients take for a termination that did not happen).
pub(super) async fn authorize(
    State(daemon): State<Arc<Daemon>>,
    request: Request,
    next: Next,
) -> Response {
    if !origin_allowed(
        request.headers().get(header::ORIGIN),
        &daemon.settings.mcp_origins,
    ) {
        return (
            StatusCode::FORBIDDEN,
            "this Origin may not call /mcp; allow it in mcp.allowed_origins\n",
        )
            .into_response();
    }
    let deleting = request.method() == axum::http::Method::DELETE;
    let mut response = authorized(&daemon, request, next).await;
    if deleting && response.status() == StatusCode::ACCEPTED {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

async fn authorized(daemon: &Arc<Daemon>, mut request: Request, next: Next) -> Response {
    let given = super::health::bearer(request.headers());
    if given.is_empty() {
        return refuse(
            "/mcp needs `Authorization: Bearer <token>`; make one with `convagent mcp token create NAME`",
        );
    }
    let hash = token_hash(given);
    let store = daemon.store.clone();
    let wanted = hash.clone();
    let known = tokio::task::spawn_blocking(move || store.token_by_hash(&wanted)).await;
    match known {
        Ok(Ok(Some(token))) => {
            // The tools see who calls (rmcp hands them the request's parts).
            request.extensions_mut().insert(Caller {
                operator: token.operator,
            });
        }
        Ok(Ok(None)) => {
            return refuse("this token is not known here (revoked, or from another store)");
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the access tokens");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store is unavailable\n",
            )
                .into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "the token check failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the token check failed\n",
            )
                .into_response();
        }
    }
    let now = daemon.clock.now_ms();
    let record = {
        let mut uses = daemon.mcp_uses.0.lock().unwrap_or_else(|p| p.into_inner());
        let last = uses.entry(hash.clone()).or_insert(i64::MIN);
        let due = now.saturating_sub(*last) >= USED_EVERY_MS;
        if due {
            *last = now;
        }
        due
    };
    if record {
        daemon.store.append(Write::Token(TokenChange::Used {
            sha256: hash,
            at: now,
        }));
    }
    next.run(request).await
}
