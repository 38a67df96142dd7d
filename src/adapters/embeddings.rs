//! The [`Embedder`]s `[knowledge.embeddings]` names:
//!
//! - `ollama`: `POST {host}/api/embed` with `{"model", "input": [texts]}`,
//!   answered `{"embeddings": [[numbers]]}` (Ollama's API reference);
//! - `openai`: `POST {base_url}/embeddings` with the same body and a bearer
//!   key, answered `{"data": [{"index", "embedding"}]}` (OpenAI's API
//!   reference; llama.cpp's server, vLLM and others speak it too);
//! - `local`: a sentence-transformers model of the BERT family
//!   (all-MiniLM-L6-v2 by default, which `install.sh` fetches) run in the
//!   process by candle, Hugging Face's tensor library: its tokenizer, the
//!   encoder, the mean of the tokens' states, normalised, as the model's
//!   pooling configuration says.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::config::LlmConfig;
use crate::core::embeddings::{EmbedProvider, Embedder, EmbeddingsConfig};
use crate::core::llm::BoxFuture;

/// Texts per request or per batch through the local model.
const BATCH: usize = 32;

/// The embedder `[knowledge.embeddings]` configures: none when off, or why
/// it cannot be made (a local model missing, say).
pub fn from_config(
    config: &EmbeddingsConfig,
    llm: &LlmConfig,
    default_local: &Path,
) -> Result<Option<Arc<dyn Embedder>>, String> {
    let model = config.model.clone().filter(|m| !m.trim().is_empty());
    let client = || {
        reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap_or_default()
    };
    Ok(match config.provider {
        EmbedProvider::None => None,
        EmbedProvider::Local => {
            let dir = model.map_or_else(|| default_local.to_path_buf(), PathBuf::from);
            Some(Arc::new(LocalEmbedder::open(&dir)?))
        }
        EmbedProvider::Ollama => {
            let model = model.ok_or("[knowledge.embeddings] model names Ollama's model")?;
            Some(Arc::new(HttpEmbedder {
                name: format!("ollama:{model}"),
                url: format!("{}/api/embed", llm.ollama.host.trim_end_matches('/')),
                model,
                api_key: None,
                wire: Wire::Ollama,
                client: client(),
            }))
        }
        EmbedProvider::Openai => {
            let model = model.ok_or("[knowledge.embeddings] model names the embedding model")?;
            Some(Arc::new(HttpEmbedder {
                name: format!("openai:{model}"),
                url: format!("{}/embeddings", llm.openai.base_url.trim_end_matches('/')),
                model,
                api_key: llm.openai.api_key.clone().filter(|k| !k.trim().is_empty()),
                wire: Wire::Openai,
                client: client(),
            }))
        }
    })
}

#[derive(Debug, Clone, Copy)]
enum Wire {
    Ollama,
    Openai,
}

/// An embedding API over HTTP.
pub struct HttpEmbedder {
    name: String,
    url: String,
    model: String,
    api_key: Option<String>,
    wire: Wire,
    client: reqwest::Client,
}

impl HttpEmbedder {
    async fn batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let body = serde_json::json!({ "model": self.model, "input": texts });
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let what = &self.name;
        let response = request
            .send()
            .await
            .map_err(|e| format!("{what}: {}", e.without_url()))?;
        let status = response.status();
        let answer: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("{what}: HTTP {status}, unreadable: {}", e.without_url()))?;
        if !status.is_success() {
            let why = answer["error"]["message"]
                .as_str()
                .or(answer["error"].as_str())
                .unwrap_or("no reason given");
            return Err(format!("{what}: HTTP {}: {why}", status.as_u16()));
        }
        let vectors: Vec<Vec<f32>> = match self.wire {
            Wire::Ollama => serde_json::from_value(answer["embeddings"].clone())
                .map_err(|e| format!("{what}: no embeddings in the answer: {e}"))?,
            Wire::Openai => {
                #[derive(serde::Deserialize)]
                struct Item {
                    index: usize,
                    embedding: Vec<f32>,
                }
                let mut items: Vec<Item> = serde_json::from_value(answer["data"].clone())
                    .map_err(|e| format!("{what}: no data in the answer: {e}"))?;
                items.sort_by_key(|i| i.index);
                items.into_iter().map(|i| i.embedding).collect()
            }
        };
        if vectors.len() != texts.len() {
            return Err(format!(
                "{what}: {} vectors for {} texts",
                vectors.len(),
                texts.len()
            ));
        }
        Ok(vectors)
    }
}

impl Embedder for HttpEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        Box::pin(async move {
            let mut out = Vec::with_capacity(texts.len());
            for batch in texts.chunks(BATCH) {
                out.extend(self.batch(batch).await?);
            }
            Ok(out)
        })
    }
}

/// A sentence-transformers model run in the process.
pub struct LocalEmbedder {
    name: String,
    model: Arc<LocalModel>,
}

struct LocalModel {
    bert: BertModel,
    tokenizer: Tokenizer,
}

impl LocalEmbedder {
    /// The model in `dir` (`config.json`, `tokenizer.json`,
    /// `model.safetensors`), or why it cannot be read.
    pub fn open(dir: &Path) -> Result<LocalEmbedder, String> {
        let missing = |file: &str| {
            format!(
                "the embedding model's {file} is missing in {} (hint: ./install.sh fetches \
                 all-MiniLM-L6-v2, or set [knowledge.embeddings] model to a sentence-transformers \
                 directory)",
                dir.display()
            )
        };
        let config =
            std::fs::read_to_string(dir.join("config.json")).map_err(|_| missing("config.json"))?;
        let config: BertConfig = serde_json::from_str(&config)
            .map_err(|e| format!("{}: not a BERT model's config: {e}", dir.display()))?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(missing("model.safetensors"));
        }
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|_| missing("tokenizer.json"))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // SAFETY: the weights file is only read, and stays mapped while the
        // model lives; like every memory-mapped file, a writer changing it
        // underneath would be the operator's doing.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        let bert = BertModel::load(vb, &config).map_err(|e| format!("{}: {e}", dir.display()))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dir.display().to_string());
        Ok(LocalEmbedder {
            name: format!("local:{name}"),
            model: Arc::new(LocalModel { bert, tokenizer }),
        })
    }
}

impl LocalModel {
    /// Mean of the tokens' last states (padding left out), normalised.
    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
        let fail = |e: candle_core::Error| format!("local embedding: {e}");
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| format!("local embedding: {e}"))?;
        let ids: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &Device::Cpu))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let masks: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &Device::Cpu))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let ids = Tensor::stack(&ids, 0).map_err(fail)?;
        let mask = Tensor::stack(&masks, 0).map_err(fail)?;
        let types = ids.zeros_like().map_err(fail)?;
        let states = self.bert.forward(&ids, &types, Some(&mask)).map_err(fail)?;
        let mask = mask
            .to_dtype(DType::F32)
            .and_then(|m| m.unsqueeze(2))
            .map_err(fail)?;
        let summed = states
            .broadcast_mul(&mask)
            .and_then(|s| s.sum(1))
            .map_err(fail)?;
        let counts = mask.sum(1).map_err(fail)?;
        let mean = summed.broadcast_div(&counts).map_err(fail)?;
        let rows: Vec<Vec<f32>> = mean.to_vec2().map_err(fail)?;
        Ok(rows
            .into_iter()
            .map(|v| {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.into_iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

impl Embedder for LocalEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Vec<f32>>, String>> {
        let model = self.model.clone();
        let texts = texts.to_vec();
        Box::pin(async move {
            // Off the async threads: a batch is milliseconds to seconds of
            // arithmetic.
            tokio::task::spawn_blocking(move || {
                let mut out = Vec::with_capacity(texts.len());
                for batch in texts.chunks(BATCH) {
                    out.extend(model.embed(batch)?);
                }
                Ok(out)
            })
            .await
            .map_err(|e| format!("local embedding: {e}"))?
        })
    }
}
