//! Speech to text over any OpenAI-compatible `POST /v1/audio/transcriptions`
//! (whisper.cpp's server, faster-whisper-server, OpenAI and others): the
//! audio as a multipart `file`, the `model`, `response_format=json`; the
//! answer is `{"text": "..."}`.

use std::time::Duration;

use crate::config::SttConfig;
use crate::core::llm::BoxFuture;
use crate::core::stt::SpeechToText;

pub struct OpenAiStt {
    url: String,
    model: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl OpenAiStt {
    /// The adapter `[stt]` configures, if it names a server.
    pub fn from_config(config: &SttConfig) -> Option<OpenAiStt> {
        let base = config.base_url.as_deref()?.trim().trim_end_matches('/');
        if base.is_empty() {
            return None;
        }
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Some(OpenAiStt {
            url: format!("{base}/v1/audio/transcriptions"),
            model: config.model.clone(),
            api_key: config.api_key.clone().filter(|k| !k.trim().is_empty()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(config.timeout_secs.max(1)))
                .build()
                .unwrap_or_default(),
        })
    }
}

impl SpeechToText for OpenAiStt {
    fn describe(&self) -> String {
        format!("{} at {}", self.model, self.url)
    }

    fn transcribe<'a>(
        &'a self,
        audio: Vec<u8>,
        mime: &'a str,
        file_name: &'a str,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            let part = reqwest::multipart::Part::bytes(audio)
                .file_name(file_name.to_string())
                .mime_str(mime)
                .map_err(|e| format!("speech to text: {e}"))?;
            let form = reqwest::multipart::Form::new()
                .part("file", part)
                .text("model", self.model.clone())
                .text("response_format", "json");
            let mut request = self.client.post(&self.url).multipart(form);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key);
            }
            let response = request
                .send()
                .await
                .map_err(|e| format!("speech to text: {}", e.without_url()))?;
            let status = response.status();
            let body: serde_json::Value = response.json().await.map_err(|e| {
                format!(
                    "speech to text: HTTP {status}, unreadable: {}",
                    e.without_url()
                )
            })?;
            if !status.is_success() {
                let why = body["error"]["message"]
                    .as_str()
                    .or(body["error"].as_str())
                    .unwrap_or("no reason given");
                return Err(format!("speech to text: HTTP {}: {why}", status.as_u16()));
            }
            body["text"]
                .as_str()
                .map(|t| t.trim().to_string())
                .ok_or_else(|| "speech to text: the answer has no `text`".to_string())
        })
    }
}
