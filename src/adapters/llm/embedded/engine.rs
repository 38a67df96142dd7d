//! The embedded model's one inference thread. Every llama.cpp call runs
//! here, so the process has one OpenMP team for its life: a thread that
//! enters ggml becomes the master of a team of its own, and once there are
//! more busy threads than cores libgomp stops spinning at its barriers and
//! sleeps on futexes, which cut decode speed by up to two thirds.
//!
//! The thread keeps one llama.cpp context for its life, whose KV cache holds
//! `cached_conversations` sequences of `context_size` cells each (not a
//! unified cache: there every decode step attends over every cell in use,
//! and many conversations slow each other down). Each sequence remembers
//! the tokens it holds; a prompt is evaluated from the end of the longest
//! prefix some sequence already holds (a conversation's system prompt and
//! earlier turns), so the 10th turn of a conversation reads its new
//! message, not the whole conversation again. The sequence used longest
//! ago is the one a new conversation takes.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::mpsc;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::{Counters, EmbeddedSettings, backend, other};
use crate::core::llm::LlmError;

/// One request for the inference thread.
pub(super) struct Job {
    pub messages: Vec<(String, String)>,
    pub max_tokens: u32,
    /// Each decoded piece; a closed receiver stops the generation at the
    /// next token (the caller gave up).
    pub pieces: tokio::sync::mpsc::UnboundedSender<String>,
    pub done: tokio::sync::oneshot::Sender<Result<Generated, LlmError>>,
}

/// What one generation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub text: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    /// Prompt tokens found in the cache and not evaluated again.
    pub cached_tokens: u32,
}

/// The running thread: jobs go in, results come back on each job's own
/// channels.
pub(super) struct Engine {
    jobs: mpsc::Sender<Job>,
}

impl Engine {
    pub fn start(
        model: Arc<LlamaModel>,
        settings: EmbeddedSettings,
        counters: Arc<Counters>,
    ) -> Result<Engine, LlmError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel::<Result<(), LlmError>>();
        std::thread::Builder::new()
            .name("convagent-llama".into())
            .spawn(move || run(&model, &settings, &counters, &queue, &ready))
            .map_err(|e| other(format!("starting the inference thread: {e}")))?;
        started
            .recv()
            .map_err(|_| other("the inference thread stopped at start".into()))??;
        Ok(Engine { jobs })
    }

    pub fn submit(&self, job: Job) -> Result<(), LlmError> {
        self.jobs
            .send(job)
            .map_err(|_| other("the inference thread has stopped".into()))
    }
}

/// A sequence of the KV cache and the tokens it holds, in order from
/// position 0.
struct Sequence {
    tokens: Vec<LlamaToken>,
    used: u64,
}

struct Cache {
    sequences: Vec<Sequence>,
    uses: u64,
}

impl Cache {
    /// The sequence holding the longest prefix of `prompt`, and how long
    /// that prefix is. A prefix shorter than half of what its sequence
    /// holds (another conversation with the same system prompt) does not
    /// count: that conversation stays cached and the least recently used
    /// sequence (an empty one first) is taken instead.
    fn best_for(&self, prompt: &[LlamaToken]) -> (usize, usize) {
        let common = |s: &Sequence| {
            s.tokens
                .iter()
                .zip(prompt)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let (best, shared) = self
            .sequences
            .iter()
            .enumerate()
            .map(|(i, s)| (i, common(s)))
            .max_by_key(|&(i, n)| (n, std::cmp::Reverse(self.sequences[i].used)))
            .unwrap_or((0, 0));
        if shared > 0 && shared * 2 >= self.sequences[best].tokens.len() {
            return (best, shared);
        }
        let lru = self
            .sequences
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| (!s.tokens.is_empty(), s.used))
            .map_or(0, |(i, _)| i);
        (lru, 0)
    }
}

fn run(
    model: &LlamaModel,
    settings: &EmbeddedSettings,
    counters: &Counters,
    queue: &mpsc::Receiver<Job>,
    ready: &mpsc::Sender<Result<(), LlmError>>,
) {
    let started = (|| -> Result<(LlamaContext<'_>, LlamaChatTemplate), LlmError> {
        let backend = backend()?;
        let threads = settings.threads.max(1) as i32;
        let sequences = settings.cached_conversations.max(1);
        let cells = settings.context_size.max(64) * sequences;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(cells))
            .with_n_batch(settings.context_size.max(64))
            .with_n_seq_max(sequences)
            .with_kv_unified(false)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend, params)
            .map_err(|e| other(format!("creating the context: {e}")))?;
        let template = model
            .chat_template(None)
            .or_else(|_| LlamaChatTemplate::new("chatml"))
            .map_err(|e| other(format!("chat template: {e}")))?;
        tracing::info!(
            cells,
            conversations = settings.cached_conversations,
            kv_cache_mb = kv_cache_bytes(model, cells) / (1 << 20),
            threads,
            "embedded model: one inference thread, prompt cache ready"
        );
        Ok((ctx, template))
    })();
    let (mut ctx, template) = match started {
        Ok(parts) => {
            let _ = ready.send(Ok(()));
            parts
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut cache = Cache {
        sequences: (0..settings.cached_conversations.max(1))
            .map(|_| Sequence {
                tokens: Vec::new(),
                used: 0,
            })
            .collect(),
        uses: 0,
    };
    let mut batch = LlamaBatch::new(settings.context_size.max(64) as usize, 1);
    while let Ok(job) = queue.recv() {
        // Its caller gave up while it waited its turn (patience, shutdown).
        if job.pieces.is_closed() {
            let _ = job
                .done
                .send(Err(other("the caller gave up before its turn".into())));
            continue;
        }
        let result = generate(
            model, settings, &template, &mut ctx, &mut cache, &mut batch, &job, counters,
        );
        if result.is_err() {
            // A failed decode may leave a sequence half written: forget all.
            ctx.clear_kv_cache();
            for s in &mut cache.sequences {
                s.tokens.clear();
            }
        }
        let _ = job.done.send(result);
    }
}

/// Bytes of the KV cache for `cells` (f16 keys and values, every layer).
pub fn kv_cache_bytes(model: &LlamaModel, cells: u32) -> u64 {
    let per_head = (model.n_embd() as u64) / u64::from(model.n_head().max(1));
    let kv = per_head * u64::from(model.n_head_kv());
    u64::from(cells) * u64::from(model.n_layer()) * 2 * kv * 2
}

fn generate(
    model: &LlamaModel,
    settings: &EmbeddedSettings,
    template: &LlamaChatTemplate,
    ctx: &mut LlamaContext<'_>,
    cache: &mut Cache,
    batch: &mut LlamaBatch,
    job: &Job,
    counters: &Counters,
) -> Result<Generated, LlmError> {
    let chat = job
        .messages
        .iter()
        .map(|(role, content)| LlamaChatMessage::new(role.clone(), content.clone()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| other(format!("message: {e}")))?;
    let prompt = model
        .apply_chat_template(template, &chat, true)
        .map_err(|e| other(format!("applying the chat template: {e}")))?;
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    let window = settings.context_size.max(64) as usize;
    if tokens.len() >= window {
        return Err(other(format!(
            "the prompt has {} tokens; the context holds {window}",
            tokens.len()
        )));
    }
    let budget = (job.max_tokens as usize).min(window - tokens.len());

    // Reuse the longest cached prefix; at least the last prompt token is
    // evaluated again, for its logits.
    let (seq, shared) = cache.best_for(&tokens);
    let mut keep = shared.min(tokens.len() - 1);
    if cache.sequences[seq].tokens.len() > keep {
        ctx.clear_kv_cache_seq(Some(seq as u32), Some(keep as u32), None)
            .map_err(|e| other(format!("cache: {e}")))?;
        cache.sequences[seq].tokens.truncate(keep);
    } else {
        keep = cache.sequences[seq].tokens.len();
    }
    cache.uses += 1;
    cache.sequences[seq].used = cache.uses;

    batch.clear();
    let last = tokens.len() - 1;
    for (i, token) in tokens.iter().enumerate().skip(keep) {
        batch
            .add(*token, i as i32, &[seq as i32], i == last)
            .map_err(|e| other(format!("batch: {e}")))?;
    }
    ctx.decode(batch)
        .map_err(|e| other(format!("evaluating the prompt: {e}")))?;
    Counters::add(&counters.decodes, 1);
    Counters::add(&counters.requests, 1);
    Counters::add(&counters.prompt_tokens, tokens.len() as u64);
    Counters::add(&counters.cached_tokens, keep as u64);
    cache.sequences[seq]
        .tokens
        .extend_from_slice(&tokens[keep..]);

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
    let mut generated = 0usize;
    let mut logits_at = batch.n_tokens() - 1;
    let mut listening = true;
    while generated < budget {
        let token = sampler.sample(ctx, logits_at);
        if vocab.is_eog(token) {
            break;
        }
        generated += 1;
        Counters::add(&counters.completion_tokens, 1);
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
            listening = job.pieces.send(piece).is_ok();
        }
        // The last token of the budget is not decoded: nothing reads its
        // logits (and the cache does not hold it).
        if !listening || generated == budget {
            break;
        }
        batch.clear();
        let position = cache.sequences[seq].tokens.len() as i32;
        batch
            .add(token, position, &[seq as i32], true)
            .map_err(|e| other(format!("batch: {e}")))?;
        ctx.decode(batch)
            .map_err(|e| other(format!("decoding: {e}")))?;
        Counters::add(&counters.decodes, 1);
        cache.sequences[seq].tokens.push(token);
        logits_at = 0;
    }
    if !pending.is_empty() {
        let rest = String::from_utf8_lossy(&pending).into_owned();
        text.push_str(&rest);
        let _ = job.pieces.send(rest);
    }
    if !listening {
        tracing::debug!(generated, "the caller went away; generation stopped");
    }
    Ok(Generated {
        text,
        prompt_tokens: tokens.len() as u32,
        completion_tokens: generated as u32,
        cached_tokens: keep as u32,
    })
}
