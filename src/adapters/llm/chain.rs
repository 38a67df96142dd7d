//! The provider chain (SPEC.md pipeline step 6): providers tried in the
//! configured order, each behind a circuit breaker persisted in the store,
//! with retries and exponential backoff on connection errors bounded by the
//! turn's deadline. A provider that fails hands the turn to the next; the
//! output names the provider and model that answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::breaker::{Admission, Breaker, BreakerPolicy, Transition};
use crate::core::llm::{
    BoxFuture, LlmError, LlmOutput, LlmProvider, LlmRequest, OnEvent, StreamEvent,
};
use crate::core::{Clock, Store, Write};

#[derive(Debug, Clone, PartialEq)]
pub struct ChainPolicy {
    pub breaker: BreakerPolicy,
    /// Waits before each retry of a connection error, in order.
    pub backoff: Vec<Duration>,
    /// The whole turn's budget: no retry starts that would end after it.
    pub deadline: Duration,
    /// How long a provider may take to its first token before the turn
    /// moves to the next one (`None`: as long as the provider's own
    /// timeouts allow, for a person watching a spinner in `chat`).
    pub patience: Option<Duration>,
}

impl Default for ChainPolicy {
    fn default() -> Self {
        ChainPolicy {
            breaker: BreakerPolicy::default(),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
            deadline: Duration::from_secs(600),
            patience: None,
        }
    }
}

/// How long a breaker read from a store other daemons share is trusted.
const BREAKER_REFRESH: Duration = Duration::from_secs(1);

pub struct Chain {
    providers: Vec<Arc<dyn LlmProvider>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    policy: ChainPolicy,
    /// Breakers as last read or written, by provider and model, and when.
    breakers: Mutex<HashMap<(String, String), (Breaker, Instant)>>,
}

impl Chain {
    pub fn new(
        providers: Vec<Arc<dyn LlmProvider>>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        policy: ChainPolicy,
    ) -> Self {
        Chain {
            providers,
            store,
            clock,
            policy,
            breakers: Mutex::default(),
        }
    }

    pub fn providers(&self) -> &[Arc<dyn LlmProvider>] {
        &self.providers
    }

    async fn run(
        &self,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
    ) -> Result<LlmOutput, LlmError> {
        if self.providers.is_empty() {
            return Err(LlmError::NoProvider);
        }
        let deadline = self.clock.now_ms() + self.policy.deadline.as_millis() as i64;
        let mut errors = Vec::new();
        for provider in &self.providers {
            let (name, model) = (provider.name(), provider.model());
            let mut breaker = self.load_breaker(name, model);
            let now = self.clock.now_ms();
            let (admission, transition) = breaker.admit(now, &self.policy.breaker);
            if transition.is_some() {
                self.persist(&breaker, transition).await;
            }
            if let Admission::Skip { retry_at } = admission {
                tracing::info!(provider = name, model, "circuit open; skipping provider");
                errors.push(LlmError::CircuitOpen {
                    provider: name.to_string(),
                    model: model.to_string(),
                    retry_in_secs: ((retry_at - now).max(0) + 999) / 1000,
                });
                continue;
            }

            let mut streamed = false;
            let result = {
                let mut forward = |event: StreamEvent<'_>| {
                    streamed |= matches!(event, StreamEvent::Token(_));
                    on_event(event);
                };
                self.call_with_retries(provider, request, &mut forward, deadline)
                    .await
            };
            let now = self.clock.now_ms();
            match result {
                Ok(output) => {
                    let had_failures = breaker.failures > 0;
                    let transition = breaker.on_success(now);
                    if had_failures || transition.is_some() {
                        self.persist(&breaker, transition).await;
                    }
                    return Ok(output);
                }
                Err(error @ LlmError::Slow { .. }) => {
                    // Slow is not broken: the breaker is left alone.
                    tracing::warn!(provider = name, model, error = %error, "LLM provider too slow for this turn; trying the next");
                    errors.push(error);
                }
                Err(error) => {
                    let message = error.to_string();
                    let transition = breaker.on_failure(now, &message, &self.policy.breaker);
                    self.persist(&breaker, transition).await;
                    // Nothing listening is the everyday case of an optional
                    // provider (no Ollama installed): not worth a warning.
                    if matches!(error, LlmError::Unreachable { .. }) {
                        tracing::info!(provider = name, error = %message, "LLM provider unreachable; trying the next");
                    } else {
                        tracing::warn!(provider = name, model, error = %message, "LLM provider failed; trying the next");
                    }
                    if streamed {
                        on_event(StreamEvent::Restart {
                            provider: name,
                            error: &message,
                        });
                    }
                    errors.push(error);
                }
            }
        }
        Err(LlmError::AllFailed(errors))
    }

    async fn call_with_retries(
        &self,
        provider: &Arc<dyn LlmProvider>,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
        deadline: i64,
    ) -> Result<LlmOutput, LlmError> {
        let patience = self
            .policy
            .patience
            .map(|p| (p, tokio::time::Instant::now() + p));
        let mut attempt = 0;
        loop {
            let result = match patience {
                None => provider.generate(request, on_event).await,
                Some(patience) => {
                    Self::call_with_patience(provider, request, on_event, patience).await
                }
            };
            let error = match result {
                Ok(output) => return Ok(output),
                Err(e) => e,
            };
            let Some(wait) = self.policy.backoff.get(attempt) else {
                return Err(error);
            };
            if !error.is_retryable() || self.clock.now_ms() + wait.as_millis() as i64 > deadline {
                return Err(error);
            }
            attempt += 1;
            tracing::info!(
                provider = provider.name(),
                attempt,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "retrying after a connection error"
            );
            self.clock.sleep(*wait).await;
        }
    }

    /// Runs the call on its own task and waits for its first token until
    /// `patience.1`. Past it the turn gives up on this provider, but the
    /// call goes on in the background: a cold model load finishes, and the
    /// next turn finds the model warm (unless the provider says an
    /// abandoned call should stop: `finish_when_abandoned`).
    async fn call_with_patience(
        provider: &Arc<dyn LlmProvider>,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
        (patience, first_token_by): (Duration, tokio::time::Instant),
    ) -> Result<LlmOutput, LlmError> {
        enum Piece {
            Token(String),
            Restart { provider: String, error: String },
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Piece>();
        let (task_provider, task_request) = (provider.clone(), request.clone());
        let mut call = tokio::spawn(async move {
            let mut forward = move |event: StreamEvent<'_>| {
                let _ = tx.send(match event {
                    StreamEvent::Token(t) => Piece::Token(t.to_string()),
                    StreamEvent::Restart { provider, error } => Piece::Restart {
                        provider: provider.to_string(),
                        error: error.to_string(),
                    },
                });
            };
            task_provider.generate(&task_request, &mut forward).await
        });
        let mut first_token = false;
        let mut forward = |piece: Piece| match piece {
            Piece::Token(t) => on_event(StreamEvent::Token(&t)),
            Piece::Restart { provider, error } => on_event(StreamEvent::Restart {
                provider: &provider,
                error: &error,
            }),
        };
        let result = loop {
            tokio::select! {
                biased;
                Some(piece) = rx.recv() => {
                    first_token |= matches!(piece, Piece::Token(_));
                    forward(piece);
                }
                joined = &mut call => break joined,
                () = tokio::time::sleep_until(first_token_by), if !first_token => {
                    let name = provider.name().to_string();
                    if !provider.finish_when_abandoned() {
                        call.abort();
                        return Err(LlmError::Slow {
                            provider: name,
                            after: patience,
                        });
                    }
                    tokio::spawn(async move {
                        if let Ok(Ok(_)) = call.await {
                            tracing::info!(provider = %name, "a slow LLM call finished in the background; the model is warm");
                        }
                    });
                    return Err(LlmError::Slow {
                        provider: provider.name().to_string(),
                        after: patience,
                    });
                }
            }
        };
        // The call is over: what it streamed before ending is still queued.
        while let Ok(piece) = rx.try_recv() {
            forward(piece);
        }
        result.unwrap_or_else(|e| {
            Err(LlmError::Other {
                provider: provider.name().to_string(),
                message: format!("the call stopped unexpectedly: {e}"),
            })
        })
    }

    /// The breaker of a provider+model: read from the store once, then
    /// kept here and written through on every change. On a store other
    /// daemons share, read again when a second old: a provider that failed
    /// on another daemon is skipped here too until its probe.
    fn load_breaker(&self, provider: &str, model: &str) -> Breaker {
        let key = (provider.to_string(), model.to_string());
        if let Some((b, read_at)) = self.breakers().get(&key)
            && (read_at.elapsed() < BREAKER_REFRESH || !self.store.shared())
        {
            return b.clone();
        }
        let breaker = match self.store.breaker(provider, model) {
            Ok(Some(b)) => b,
            Ok(None) => Breaker::new(provider, model, self.clock.now_ms()),
            Err(e) => {
                tracing::warn!(provider, error = %e, "cannot read the circuit breaker; assuming closed");
                return Breaker::new(provider, model, self.clock.now_ms());
            }
        };
        self.breakers()
            .insert(key, (breaker.clone(), Instant::now()));
        breaker
    }

    fn breakers(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), (Breaker, Instant)>> {
        self.breakers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Saves the breaker; a transition is also logged. A store error costs
    /// the persisted state, not the reply.
    async fn persist(&self, breaker: &Breaker, transition: Option<Transition>) {
        if let Some(t) = &transition {
            tracing::warn!(
                provider = %breaker.provider,
                model = %breaker.model,
                from = %t.from,
                to = %t.to,
                reason = %t.reason,
                "circuit breaker transition"
            );
        }
        self.breakers().insert(
            (breaker.provider.clone(), breaker.model.clone()),
            (breaker.clone(), Instant::now()),
        );
        let write = Write::Breaker {
            breaker: breaker.clone(),
            transition,
        };
        if let Err(e) = self.store.write(write).await {
            tracing::warn!(provider = %breaker.provider, error = %e, "cannot save the circuit breaker");
        }
    }
}

impl LlmProvider for Chain {
    fn ready(&self) -> bool {
        let now = self.clock.now_ms();
        self.providers
            .iter()
            .any(|p| self.load_breaker(p.name(), p.model()).would_admit(now))
    }

    fn name(&self) -> &str {
        "chain"
    }

    fn model(&self) -> &str {
        self.providers.first().map_or("", |p| p.model())
    }

    /// Any provider that sees makes the chain see: the images go to it, and
    /// one failed over to that cannot reads their stand-ins.
    fn sees(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            for p in &self.providers {
                if p.sees().await {
                    return true;
                }
            }
            false
        })
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(self.run(request, on_event))
    }
}
