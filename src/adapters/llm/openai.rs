//! OpenAI-compatible chat completions (`POST {base}/chat/completions` with
//! `"stream": true`): server-sent events, one `data: {json}` per chunk with a
//! piece of `choices[0].delta.content`, closed by `data: [DONE]`. Served by
//! llama.cpp's server, vLLM, LM Studio and hosted APIs alike.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::http::{self, LineStream, Timeouts};
use super::tools;
use crate::core::llm::{
    BoxFuture, LlmError, LlmOutput, LlmProvider, LlmRequest, OnEvent, StreamEvent,
};
use crate::core::tools::ToolCall;

pub const NAME: &str = "openai";
const LIST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    /// Includes the version path, e.g. `https://api.openai.com/v1`, as the
    /// `OPENAI_BASE_URL` convention has it.
    pub base_url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeouts: Timeouts,
    /// Whether the model takes images (as `image_url` content parts).
    pub vision: bool,
}

pub struct OpenAi {
    client: reqwest::Client,
    settings: OpenAiSettings,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Vec<CallDelta>,
}

/// A piece of a tool call: the first names it, the rest add to its
/// arguments (a JSON string in pieces), all under one `index`.
#[derive(Deserialize)]
struct CallDelta {
    #[serde(default)]
    index: usize,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

/// A tool call being put together from its pieces.
#[derive(Default)]
struct PartCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ModelList {
    #[serde(default)]
    data: Vec<ModelEntry>,
}

#[derive(Deserialize)]
struct ModelEntry {
    id: String,
}

impl OpenAi {
    pub fn new(settings: OpenAiSettings) -> Self {
        OpenAi {
            client: http::client(),
            settings,
        }
    }

    pub fn settings(&self) -> &OpenAiSettings {
        &self.settings
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.settings.api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        }
    }

    /// The models the server offers (`GET {base}/models`).
    pub async fn list_models(&self) -> Result<Vec<String>, LlmError> {
        let url = http::join(&self.settings.base_url, "models");
        let request = self.authorized(self.client.get(&url));
        let list: ModelList = http::fetch_json(NAME, &url, request, LIST_TIMEOUT).await?;
        Ok(list.data.into_iter().map(|m| m.id).collect())
    }

    async fn chat(
        &self,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
    ) -> Result<LlmOutput, LlmError> {
        let s = &self.settings;
        let url = http::join(&s.base_url, "chat/completions");
        // Written straight from the request, not copied into a `json!` tree.
        #[derive(serde::Serialize)]
        struct Body<'a> {
            model: &'a str,
            messages: tools::Messages<'a>,
            #[serde(skip_serializing_if = "tools::Tools::is_empty")]
            tools: tools::Tools<'a>,
            stream: bool,
            max_tokens: u32,
            stream_options: StreamOptions,
        }
        #[derive(serde::Serialize)]
        struct StreamOptions {
            include_usage: bool,
        }
        let body = Body {
            model: &s.model,
            messages: tools::Messages(request, tools::Dialect::OpenAi, s.vision),
            tools: tools::Tools(&request.tools),
            stream: true,
            max_tokens: request.max_tokens,
            stream_options: StreamOptions {
                include_usage: true,
            },
        };
        let builder = self.authorized(self.client.post(&url).json(&body));
        let mut lines = match LineStream::open(NAME, &url, builder, s.timeouts).await {
            Err(LlmError::Http {
                status: 404,
                message,
                ..
            }) if message.contains("model") => {
                return Err(LlmError::ModelMissing {
                    provider: NAME.into(),
                    model: s.model.clone(),
                    hint: message,
                });
            }
            other => other?,
        };

        let mut text = String::new();
        let mut usage = None;
        let mut calls: Vec<PartCall> = Vec::new();
        while let Some(line) = lines.next_line().await? {
            // SSE: blank lines separate events, `:` starts a comment, and
            // only `data:` fields carry the payload.
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim_start();
            if data == "[DONE]" {
                let usage: Option<Usage> = usage;
                return Ok(LlmOutput {
                    text,
                    provider: NAME.into(),
                    model: s.model.clone(),
                    prompt_tokens: usage.as_ref().and_then(|u| u.prompt_tokens),
                    completion_tokens: usage.and_then(|u| u.completion_tokens),
                    tool_calls: calls
                        .into_iter()
                        .filter(|c| !c.name.is_empty())
                        .map(|c| ToolCall {
                            id: c.id,
                            name: c.name,
                            arguments: tools::arguments(serde_json::Value::String(c.arguments)),
                        })
                        .collect(),
                });
            }
            let chunk: Chunk = serde_json::from_str(data).map_err(|e| LlmError::Stream {
                provider: NAME.into(),
                message: format!("unreadable event ({e})"),
            })?;
            if let Some(error) = chunk.error {
                return Err(LlmError::Stream {
                    provider: NAME.into(),
                    message: http::error_message(&json!({ "error": error }).to_string()),
                });
            }
            for delta in chunk.choices.into_iter().filter_map(|c| c.delta) {
                if let Some(piece) = delta.content.filter(|c| !c.is_empty()) {
                    on_event(StreamEvent::Token(&piece));
                    text.push_str(&piece);
                }
                for part in delta.tool_calls {
                    if calls.len() <= part.index {
                        calls.resize_with(part.index + 1, PartCall::default);
                    }
                    let call = &mut calls[part.index];
                    call.id = part.id.or(call.id.take());
                    if let Some(f) = part.function {
                        call.name.push_str(f.name.as_deref().unwrap_or_default());
                        call.arguments
                            .push_str(f.arguments.as_deref().unwrap_or_default());
                    }
                }
            }
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
        }
        Err(LlmError::Stream {
            provider: NAME.into(),
            message: "the stream ended without `data: [DONE]`".into(),
        })
    }
}

impl LlmProvider for OpenAi {
    fn name(&self) -> &str {
        NAME
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    fn sees(&self) -> BoxFuture<'_, bool> {
        let vision = self.settings.vision;
        Box::pin(async move { vision })
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(self.chat(request, on_event))
    }
}
