//! `POST /webhook/{channel}` (SPEC.md steps 1–2): size, content type,
//! signature and schema checks, then the normalised message is stored in
//! one transaction and acknowledged before any LLM work. Errors map to
//! HTTP statuses here and nowhere else.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{Daemon, Live, workers};
use crate::adapters::channels::registry;
use crate::core::channel::{self, ChannelAdapter, Inbound, WebhookError, WebhookRequest};
use crate::core::{
    Accepted, Channel, CorrelationId, InboundMessage, Outcome, Stage, StoreError, Write, Written,
};

/// Checks the request with the channel's secret and, while a rotation's
/// grace period lasts, with its previous one. While a channel is rotated
/// the log says which matched (never either value; the field is not named
/// `secret`, which the log masks as a credential's label).
fn verify(
    live: &Live,
    adapter: &dyn ChannelAdapter,
    request: &WebhookRequest<'_>,
) -> Result<(), WebhookError> {
    let channel = adapter.channel();
    let previous = channel::find(&live.previous, channel);
    let current = adapter.verify(request);
    let Some(previous) = previous else {
        return current;
    };
    let until = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(live.previous_until.max(0) as u64),
    );
    match current {
        Ok(()) => {
            tracing::info!(%channel, matched = "current", "webhook verified");
            Ok(())
        }
        Err(WebhookError::Unauthorized(reason)) => {
            if request.now_ms >= live.previous_until {
                tracing::info!(%channel, expired = %until, "the previous secret's grace period is over");
                return Err(WebhookError::Unauthorized(reason));
            }
            match previous.verify(request) {
                Ok(()) => {
                    tracing::info!(%channel, matched = "previous", valid_until = %until, "webhook verified");
                    Ok(())
                }
                Err(_) => Err(WebhookError::Unauthorized(reason)),
            }
        }
        Err(other) => Err(other),
    }
}

/// Why a webhook was not accepted, as the provider (or developer) sees it.
#[derive(Debug)]
pub enum Rejection {
    NotFound(String),
    TooLarge(String),
    Webhook(WebhookError),
    Store(StoreError),
    Stopping,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let (status, reason) = match self {
            Rejection::NotFound(r) => (StatusCode::NOT_FOUND, r),
            Rejection::TooLarge(r) => (StatusCode::PAYLOAD_TOO_LARGE, r),
            Rejection::Webhook(WebhookError::Unauthorized(r)) => (StatusCode::UNAUTHORIZED, r),
            Rejection::Webhook(WebhookError::UnsupportedMediaType(r)) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, r)
            }
            Rejection::Webhook(WebhookError::BadRequest(r)) => (StatusCode::BAD_REQUEST, r),
            // Input the store refuses is the sender's fault: retrying it
            // cannot help.
            Rejection::Store(StoreError::Invalid(r)) => {
                (StatusCode::BAD_REQUEST, format!("not stored: {r}"))
            }
            // Not acknowledged: the provider retries later, nothing is lost.
            Rejection::Store(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not stored: {e}")),
            Rejection::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "shutting down".into()),
        };
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{reason}\n"),
        )
            .into_response()
    }
}

pub async fn handle(
    State(daemon): State<Arc<Daemon>>,
    Path(channel): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Rejection> {
    let began = Instant::now();
    let now = daemon.clock.now_ms();
    let Some(spec) = channel.parse::<Channel>().ok().and_then(registry::spec) else {
        let known: Vec<&str> = registry::ALL.iter().map(|s| s.channel.as_str()).collect();
        return Err(Rejection::NotFound(format!(
            "unknown channel `{channel}` ({})",
            known.join(", ")
        )));
    };
    let channel = spec.channel;
    let live = daemon.live();
    let Some(adapter) = channel::find(&live.channels, channel) else {
        daemon.metrics.inbound(channel.as_str(), "not_enabled");
        return Err(Rejection::NotFound(format!(
            "channel {channel} is not enabled: set its secrets ({})",
            spec.secrets_hint()
        )));
    };
    if daemon.stopping() {
        return Err(Rejection::Stopping);
    }
    if body.len() > adapter.max_body_bytes() {
        daemon.metrics.inbound(channel.as_str(), "rejected");
        return Err(Rejection::TooLarge(format!(
            "{channel} webhook bodies are limited to {} bytes (channels.*.max_body_bytes)",
            adapter.max_body_bytes()
        )));
    }

    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let base = daemon.public_url.current();
    let url = public_url(base.as_deref(), &headers, &uri);
    let request = WebhookRequest {
        url: &url,
        headers: &headers,
        body: &body,
        now_ms: now,
    };

    let checked = verify(&live, adapter.as_ref(), &request).and_then(|()| adapter.parse(&request));
    let inbound = match checked {
        Ok(i) => i,
        Err(e) => {
            daemon.metrics.inbound(channel.as_str(), "rejected");
            tracing::info!(channel = %channel, error = %e, "webhook rejected");
            return Err(Rejection::Webhook(e));
        }
    };
    let message = match inbound {
        Inbound::Message(m) => m,
        Inbound::Ignore(reason) => {
            // Traced under an id of its own, so `convagent tui` and the logs
            // show why an authenticated request got no answer.
            let correlation = CorrelationId::generate().0;
            daemon.metrics.inbound(channel.as_str(), "ignored");
            tracing::info!(channel = %channel, correlation_id = %correlation, reason, "webhook acknowledged and ignored");
            daemon.tracer.stage(
                &correlation,
                Stage::Ignored,
                now,
                began,
                Outcome::Ignored,
                Some(format!("{channel}: {reason}")),
            );
            return Ok((
                StatusCode::OK,
                [("x-correlation-id", correlation)],
                format!("ignored: {reason}\n"),
            )
                .into_response());
        }
        Inbound::Respond { content_type, body } => {
            return Ok(([(header::CONTENT_TYPE, content_type)], body).into_response());
        }
        Inbound::Decision(decision) => {
            daemon.metrics.inbound(channel.as_str(), "decision");
            return decide(&daemon, adapter.clone(), decision, now).await;
        }
    };

    let correlation = message.correlation_id.0.clone();
    daemon.tracer.stage(
        &correlation,
        Stage::Received,
        now,
        began,
        Outcome::Ok,
        Some(format!("{} bytes", body.len())),
    );
    daemon
        .tracer
        .stage(&correlation, Stage::Verified, now, began, Outcome::Ok, None);
    let stored_began = Instant::now();
    let accepted = accept(&daemon, message).await.map_err(|e| {
        tracing::error!(correlation_id = %correlation, error = %e, "cannot store an inbound message");
        Rejection::Store(e)
    })?;
    daemon.metrics.observe_stage("ack", began.elapsed());
    if accepted.duplicate {
        daemon.metrics.inbound(channel.as_str(), "duplicate");
        daemon.tracer.stage(
            &correlation,
            Stage::Duplicate,
            now,
            stored_began,
            Outcome::Ignored,
            Some(format!("message {}", accepted.message_id)),
        );
        return Ok((
            StatusCode::OK,
            [("x-correlation-id", correlation)],
            "duplicate\n",
        )
            .into_response());
    }
    daemon.metrics.inbound(channel.as_str(), "accepted");
    daemon.tracer.stage(
        &correlation,
        Stage::Stored,
        now,
        stored_began,
        Outcome::Ok,
        Some(format!("message {}", accepted.message_id)),
    );
    Ok((StatusCode::OK, [("x-correlation-id", correlation)], "ok\n").into_response())
}

/// Stores `message` (committed by the store's writer with whatever else
/// waits: group commit) and wakes its conversation's worker. On a task of
/// its own: a provider that hangs up while its webhook waits for the commit
/// drops the handler, and a message stored must still be answered.
async fn accept(daemon: &Arc<Daemon>, message: InboundMessage) -> Result<Accepted, StoreError> {
    let daemon = daemon.clone();
    tokio::spawn(async move {
        let accepted = daemon
            .store
            .write(Write::Accept(message))
            .await
            .and_then(Written::accepted)?;
        if !accepted.duplicate {
            workers::schedule(&daemon, accepted.conversation_id);
        }
        Ok(accepted)
    })
    .await
    .map_err(|e| StoreError::Backend(format!("the accept task failed: {e}")))?
}

/// The URL the provider called: the configured public base, or what the
/// Host header says, plus the path and query as received.
fn public_url(base: Option<&str>, headers: &[(String, String)], uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match base {
        Some(b) => format!("{}{path}", b.trim_end_matches('/')),
        None => {
            let host = headers
                .iter()
                .find(|(k, _)| k == "host")
                .map_or("localhost", |(_, v)| v.as_str());
            let scheme = headers
                .iter()
                .find(|(k, _)| k == "x-forwarded-proto")
                .map_or("http", |(_, v)| v.as_str());
            format!("{scheme}://{host}{path}")
        }
    }
}

/// A button of an approval pressed in the chat: the answer is written
/// (once: an approval answered already, run out, or asked in another chat
/// keeps what it has) and traced with who pressed it; the provider is told
/// the press was handled. Always 200: asking again would change nothing.
async fn decide(
    daemon: &Arc<Daemon>,
    adapter: Arc<dyn crate::core::channel::ChannelAdapter>,
    d: crate::core::approvals::ChatDecision,
    now: i64,
) -> Result<Response, Rejection> {
    use crate::core::approvals::Decision;
    let store = daemon.store.clone();
    let id = d.approval_id;
    let found = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let Some(approval) = store.approval(id)? else {
            return Ok(None);
        };
        let summary = store.conversation(approval.conversation_id)?;
        Ok(Some((approval, summary)))
    })
    .await
    .map_err(|e| Rejection::Store(StoreError::Backend(e.to_string())))?
    .map_err(Rejection::Store)?;
    let in_this_chat = found.as_ref().is_some_and(|(_, summary)| {
        summary
            .as_ref()
            .is_some_and(|s| s.channel == d.key.channel && s.thread == d.key.thread)
    });
    let said = match found {
        Some((approval, _)) if in_this_chat => {
            let (after, took) = daemon
                .store
                .write(Write::Decide {
                    id,
                    decision: d.decision,
                    by: d.by.clone(),
                    at: now,
                })
                .await
                .and_then(crate::core::ports::Written::approval)
                .map_err(Rejection::Store)?;
            match super::operators::not_taken(&after, took, now) {
                None => {
                    use crate::core::ports::StageSink;
                    daemon.tracer.record(after.trace(now));
                    tracing::info!(approval = id, tool = %approval.tool, state = after.state.as_str(), "an approval answered in the chat");
                    match d.decision {
                        Decision::Approve => "Approved.".to_string(),
                        _ => "Denied.".to_string(),
                    }
                }
                Some(why) => why,
            }
        }
        _ => {
            tracing::info!(
                approval = id,
                "a button for an approval not asked in this chat"
            );
            "This approval was not asked here.".to_string()
        }
    };
    if let Some(ack) = d.ack.as_deref()
        && let Some(told) = adapter.acknowledge(ack, &said)
        && let Err(e) = told.await
    {
        tracing::warn!(error = %e, "cannot acknowledge a button press");
    }
    Ok((StatusCode::OK, format!("{said}\n")).into_response())
}
