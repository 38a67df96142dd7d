//! Ollama's native chat API: `POST /api/chat` with `"stream": true` answers
//! newline-delimited JSON objects, each with a piece of `message.content`,
//! the last with `"done": true` and (usually) token counts. An
//! `{"error": "..."}` line may arrive mid-stream after an HTTP 200.

use std::time::Duration;

use serde::Deserialize;

use super::http::{self, LineStream, Timeouts};
use super::tools;
use crate::core::llm::{
    BoxFuture, LlmError, LlmOutput, LlmProvider, LlmRequest, OnEvent, StreamEvent,
};
use crate::core::tools::ToolCall;

pub const NAME: &str = "ollama";
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct OllamaSettings {
    pub host: String,
    pub model: String,
    pub num_ctx: u32,
    pub keep_alive: String,
    pub timeouts: Timeouts,
    /// Whether the model takes images; `None`: ask `/api/show`.
    pub vision: Option<bool>,
}

pub struct Ollama {
    client: reqwest::Client,
    settings: OllamaSettings,
    /// What `/api/show` said the model can do, once it answered.
    shown_vision: tokio::sync::OnceCell<bool>,
}

#[derive(Deserialize)]
struct Show {
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    message: Option<ChunkMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u32>,
    #[serde(default)]
    eval_count: Option<u32>,
}

#[derive(Deserialize)]
struct ChunkMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<WireCall>,
}

#[derive(Deserialize)]
struct WireCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: serde_json::Value,
}

#[derive(Deserialize)]
struct Tags {
    #[serde(default)]
    models: Vec<TagModel>,
}

#[derive(Deserialize)]
struct TagModel {
    name: String,
}

impl Ollama {
    pub fn new(settings: OllamaSettings) -> Self {
        Ollama {
            client: http::client(),
            settings,
            shown_vision: tokio::sync::OnceCell::new(),
        }
    }

    /// Whether the model takes images: as configured, else whether
    /// `POST /api/show` lists `"vision"` among its capabilities (asked once
    /// it answers; until then, and for an Ollama too old to say, no).
    pub async fn vision(&self) -> bool {
        if let Some(v) = self.settings.vision {
            return v;
        }
        let url = http::join(&self.settings.host, "/api/show");
        let asked = self
            .shown_vision
            .get_or_try_init(|| async {
                let request = self
                    .client
                    .post(&url)
                    .json(&serde_json::json!({ "model": self.settings.model }));
                let show: Show = http::fetch_json(NAME, &url, request, LIST_TIMEOUT).await?;
                Ok::<_, LlmError>(show.capabilities.iter().any(|c| c == "vision"))
            })
            .await;
        match asked {
            Ok(v) => *v,
            Err(e) => {
                tracing::debug!(error = %e, "ollama: /api/show did not say whether the model sees");
                false
            }
        }
    }

    pub fn settings(&self) -> &OllamaSettings {
        &self.settings
    }

    /// The models this Ollama has pulled (`GET /api/tags`).
    pub async fn list_models(&self) -> Result<Vec<String>, LlmError> {
        let url = http::join(&self.settings.host, "/api/tags");
        let tags: Tags = http::fetch_json(NAME, &url, self.client.get(&url), LIST_TIMEOUT).await?;
        Ok(tags.models.into_iter().map(|m| m.name).collect())
    }

    /// Whether `models` (from [`Self::list_models`]) holds the configured
    /// model; a name without a tag means `:latest`, as in Ollama itself.
    pub fn has_model(&self, models: &[String]) -> bool {
        let want = &self.settings.model;
        let want_full = if want.contains(':') {
            want.clone()
        } else {
            format!("{want}:latest")
        };
        models.iter().any(|m| m == want || *m == want_full)
    }

    async fn chat(
        &self,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
    ) -> Result<LlmOutput, LlmError> {
        let s = &self.settings;
        let url = http::join(&s.host, "/api/chat");
        let sees = request.messages.iter().any(|m| !m.images.is_empty()) && self.vision().await;
        // Written straight from the request: a `json!` value would copy the
        // whole conversation into a tree first.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            model: &'a str,
            messages: tools::Messages<'a>,
            #[serde(skip_serializing_if = "tools::Tools::is_empty")]
            tools: tools::Tools<'a>,
            stream: bool,
            keep_alive: &'a str,
            options: Options,
        }
        #[derive(serde::Serialize)]
        struct Options {
            num_ctx: u32,
            num_predict: u32,
        }
        let body = Body {
            model: &s.model,
            messages: tools::Messages(request, tools::Dialect::Ollama, sees),
            tools: tools::Tools(&request.tools),
            stream: true,
            keep_alive: &s.keep_alive,
            options: Options {
                num_ctx: s.num_ctx,
                num_predict: request.max_tokens,
            },
        };
        let mut lines = match LineStream::open(
            NAME,
            &url,
            self.client.post(&url).json(&body),
            s.timeouts,
        )
        .await
        {
            Err(LlmError::Http {
                status: 404,
                message,
                ..
            }) => {
                return Err(LlmError::ModelMissing {
                    provider: NAME.into(),
                    model: s.model.clone(),
                    hint: format!("{message}; run `ollama pull {}`", s.model),
                });
            }
            other => other?,
        };

        let mut text = String::new();
        let mut calls = Vec::new();
        while let Some(line) = lines.next_line().await? {
            if line.trim().is_empty() {
                continue;
            }
            let chunk: Chunk = serde_json::from_str(&line).map_err(|e| LlmError::Stream {
                provider: NAME.into(),
                message: format!("unreadable stream line ({e})"),
            })?;
            if let Some(error) = chunk.error {
                return Err(LlmError::Stream {
                    provider: NAME.into(),
                    message: error,
                });
            }
            if let Some(m) = chunk.message {
                if !m.content.is_empty() {
                    on_event(StreamEvent::Token(&m.content));
                    text.push_str(&m.content);
                }
                calls.extend(m.tool_calls.into_iter().map(|c| ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments: tools::arguments(c.function.arguments),
                }));
            }
            if chunk.done {
                return Ok(LlmOutput {
                    text,
                    provider: NAME.into(),
                    model: s.model.clone(),
                    prompt_tokens: chunk.prompt_eval_count,
                    completion_tokens: chunk.eval_count,
                    tool_calls: calls,
                });
            }
        }
        Err(LlmError::Stream {
            provider: NAME.into(),
            message: "the stream ended before the final `done` message".into(),
        })
    }
}

impl LlmProvider for Ollama {
    fn name(&self) -> &str {
        NAME
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    fn sees(&self) -> BoxFuture<'_, bool> {
        Box::pin(self.vision())
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(self.chat(request, on_event))
    }
}
