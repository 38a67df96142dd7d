//! The provider chain: providers tried in the configured order; a provider
//! that fails hands the turn to the next at once. The output names the
//! provider and model that answered.

use std::sync::Arc;

use crate::core::llm::{
    BoxFuture, LlmError, LlmOutput, LlmProvider, LlmRequest, OnEvent, StreamEvent,
};

pub struct Chain {
    providers: Vec<Arc<dyn LlmProvider>>,
}

impl Chain {
    pub fn new(providers: Vec<Arc<dyn LlmProvider>>) -> Self {
        Chain { providers }
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
        let mut errors = Vec::new();
        for provider in &self.providers {
            let mut streamed = false;
            let result = {
                let mut forward = |event: StreamEvent<'_>| {
                    streamed |= matches!(event, StreamEvent::Token(_));
                    on_event(event);
                };
                provider.generate(request, &mut forward).await
            };
            match result {
                Ok(output) => return Ok(output),
                Err(error) => {
                    // Nothing listening is the everyday case of an optional
                    // provider (no Ollama installed): not worth a warning.
                    if matches!(error, LlmError::Unreachable { .. }) {
                        tracing::info!(provider = provider.name(), error = %error, "LLM provider unreachable; trying the next");
                    } else {
                        tracing::warn!(
                            provider = provider.name(),
                            model = provider.model(),
                            error = %error,
                            "LLM provider failed; trying the next"
                        );
                    }
                    if streamed {
                        on_event(StreamEvent::Restart {
                            provider: provider.name(),
                            error: &error.to_string(),
                        });
                    }
                    errors.push(error);
                }
            }
        }
        Err(LlmError::AllFailed(errors))
    }
}

impl LlmProvider for Chain {
    fn name(&self) -> &str {
        "chain"
    }

    fn model(&self) -> &str {
        self.providers.first().map_or("", |p| p.model())
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(self.run(request, on_event))
    }
}
