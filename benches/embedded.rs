//! The embedded model's speed, every run shown (a slow mode cannot hide in a
//! median), with the process's threads and context switches, and side by
//! side with llama.cpp's own `llama-server` when `--server URL` is given
//! (runs alternate: ours, then the server's, same messages, same budget,
//! greedy). Method in benches/README.md.
//!
//!     cargo bench --bench embedded -- [--threads 2] [--runs 30] [--max-tokens 128]
//!         [--turns 10] [--server http://127.0.0.1:8089] [--conversations 20 --minutes 2]
//!         [--cached-conversations 2]

use std::time::{Duration, Instant};

use convagent::adapters::llm::{Embedded, EmbeddedSettings};
use convagent::config::Dirs;
use convagent::core::{ChatMessage, LlmProvider, LlmRequest, Role, StreamEvent};

#[path = "support/flags.rs"]
mod flags;
use flags::flag;

/// One generation as measured from outside: time to the first streamed
/// piece, and decode steps per second after it.
#[derive(Debug, Clone, Copy)]
struct Run {
    ttft_ms: f64,
    decode_per_s: f64,
    prompt_tokens: u32,
}

fn summary(name: &str, values: &[f64], unit: &str) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return format!("{name}: no runs");
    }
    format!(
        "{name}: min {:.1} / median {:.1} / max {:.1} {unit}",
        v[0],
        v[v.len() / 2],
        v[v.len() - 1]
    )
}

/// Threads of this process, those named like the inference thread (its
/// OpenMP workers inherit the name), and context switches of all of them.
fn process_threads() -> (usize, usize, u64) {
    let mut threads = 0;
    let mut inference = 0;
    let mut switches = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        threads += 1;
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == "convagent-llama" {
            inference += 1;
        }
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        for line in status.lines() {
            if line.starts_with("voluntary_ctxt_switches")
                || line.starts_with("nonvoluntary_ctxt_switches")
            {
                switches += line
                    .split_whitespace()
                    .last()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    (threads, inference, switches)
}

fn request(system: &str, turns: &[(String, String)], next: &str, max_tokens: u32) -> LlmRequest {
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    for (user, assistant) in turns {
        messages.push(ChatMessage::new(Role::User, user.clone()));
        messages.push(ChatMessage::new(Role::Assistant, assistant.clone()));
    }
    messages.push(ChatMessage::new(Role::User, next));
    LlmRequest::new(messages, max_tokens)
}

fn ours(
    runtime: &tokio::runtime::Runtime,
    model: &Embedded,
    request: &LlmRequest,
) -> (Run, String) {
    let started = Instant::now();
    let mut first: Option<Duration> = None;
    let output = runtime
        .block_on(model.generate(request, &mut |e| {
            if let (StreamEvent::Token(_), None) = (e, first) {
                first = Some(started.elapsed());
            }
        }))
        .expect("generation");
    let total = started.elapsed();
    let first = first.unwrap_or(total);
    let tokens = output.completion_tokens.unwrap_or(0);
    let run = Run {
        ttft_ms: first.as_secs_f64() * 1000.0,
        decode_per_s: f64::from(tokens.saturating_sub(1)) / (total - first).as_secs_f64().max(1e-9),
        prompt_tokens: output.prompt_tokens.unwrap_or(0),
    };
    (run, output.text)
}

/// The same request to llama-server's chat endpoint, with its own timings:
/// prompt evaluation (its time to the first token, less sampling) and
/// decode speed.
fn server(url: &str, request: &LlmRequest, cache_prompt: bool) -> (Run, String) {
    let messages: Vec<serde_json::Value> = request
        .messages
        .iter()
        .map(|m| serde_json::json!({ "role": m.role.as_str(), "content": m.content }))
        .collect();
    let body = serde_json::json!({
        "messages": messages,
        "max_tokens": request.max_tokens,
        "temperature": 0.0,
        "top_k": 1,
        "cache_prompt": cache_prompt,
    });
    let response: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .timeout(Duration::from_secs(600))
        .send()
        .and_then(|r| r.json())
        .expect("llama-server answers");
    let t = &response["timings"];
    let text = response["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let run = Run {
        ttft_ms: t["prompt_ms"].as_f64().unwrap_or(f64::NAN),
        decode_per_s: t["predicted_per_second"].as_f64().unwrap_or(f64::NAN),
        prompt_tokens: t["prompt_n"].as_u64().unwrap_or(0) as u32,
    };
    (run, text)
}

fn main() {
    let threads = flag("--threads", 2);
    let runs = flag("--runs", 30).max(1);
    let max_tokens = flag("--max-tokens", 128);
    let turns = flag("--turns", 10).max(1);
    let conversations = flag("--conversations", 0);
    let minutes = flag("--minutes", 2);
    let server_url: Option<String> =
        Some(flag("--server", String::new())).filter(|s| !s.is_empty());
    let model_path = std::env::var_os("CONVAGENT_MODEL_PATH")
        .map(Into::into)
        .unwrap_or_else(|| Dirs::from_env().unwrap().default_model_path());
    let defaults = EmbeddedSettings::for_model(model_path.clone());
    let cached_conversations = flag("--cached-conversations", defaults.cached_conversations);
    let provider = || {
        Embedded::new(EmbeddedSettings {
            threads,
            context_size: 4096,
            temperature: 0.0,
            seed: 1,
            cached_conversations,
            ..defaults.clone()
        })
    };
    let model = provider();
    let load = Instant::now();
    model
        .load()
        .expect("model loads (run ./install.sh --deps-only)");
    println!(
        "embedded model, {threads} threads, greedy, max {max_tokens} tokens; model load {:.0} ms",
        load.elapsed().as_secs_f64() * 1000.0
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 1. Fresh prompts: each run's system prompt starts differently, so
    //    nothing is cached. A warm-up first (the thread and its context).
    let fresh = |i: u32| {
        request(
            &format!("Session {i}. You are a helpful assistant."),
            &[],
            "Tell me a long story about a dragon who learns to sing.",
            max_tokens,
        )
    };
    ours(&runtime, &model, &fresh(0));
    let (_, _, switches_before) = process_threads();
    let started = Instant::now();
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let r = fresh(i);
        let (run, _) = ours(&runtime, &model, &r);
        let line = format!(
            "run {i:>2}: embedded ttft {:6.1} ms  decode {:6.1} tok/s  ({} prompt tokens)",
            run.ttft_ms, run.decode_per_s, run.prompt_tokens
        );
        mine.push(run);
        match &server_url {
            Some(url) => {
                let (s, _) = server(url, &r, false);
                println!(
                    "{line}   llama-server prompt {:6.1} ms  decode {:6.1} tok/s  ratio {:.2}",
                    s.ttft_ms,
                    s.decode_per_s,
                    run.decode_per_s / s.decode_per_s
                );
                theirs.push(s);
            }
            None => println!("{line}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let (threads_now, inference, switches_after) = process_threads();
    println!(
        "{}",
        summary(
            "embedded decode",
            &mine.iter().map(|r| r.decode_per_s).collect::<Vec<_>>(),
            "tok/s"
        )
    );
    println!(
        "{}",
        summary(
            "embedded time to first token",
            &mine.iter().map(|r| r.ttft_ms).collect::<Vec<_>>(),
            "ms"
        )
    );
    if !theirs.is_empty() {
        println!(
            "{}",
            summary(
                "llama-server decode",
                &theirs.iter().map(|r| r.decode_per_s).collect::<Vec<_>>(),
                "tok/s"
            )
        );
        println!(
            "{}",
            summary(
                "llama-server prompt evaluation",
                &theirs.iter().map(|r| r.ttft_ms).collect::<Vec<_>>(),
                "ms"
            )
        );
        let ratios: Vec<f64> = mine
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.decode_per_s / b.decode_per_s)
            .collect();
        println!("{}", summary("decode ratio embedded/server", &ratios, "x"));
    }
    println!(
        "threads: {threads_now} in the process, {inference} named convagent-llama (the inference \
         thread and its OpenMP team); {:.0} context switches/s while generating (whole process{})",
        (switches_after - switches_before) as f64 / seconds,
        if server_url.is_some() {
            ", server runs included"
        } else {
            ""
        }
    );

    // 2. One conversation, turn after turn: short questions, long answers
    //    (up to 200 tokens), so the 10th turn's context is ~2,000 tokens.
    //    Time to first token per turn, against the whole prompt read afresh
    //    (a new provider).
    let mut history: Vec<(String, String)> = Vec::new();
    let mut server_history: Vec<(String, String)> = Vec::new();
    println!("conversation, {turns} turns (reply budget 200 tokens):");
    let mut last = (None, None, None);
    for turn in 1..=turns {
        let user = format!("Tell me more about growing vegetables, part {turn}, in detail.");
        let r = request("You are a helpful gardener.", &history, &user, 200);
        let cached_before = model.stats().cached_tokens;
        let (run, text) = ours(&runtime, &model, &r);
        let evaluated =
            u64::from(run.prompt_tokens) - (model.stats().cached_tokens - cached_before);
        let mut line = format!(
            "turn {turn:>2}: {:>5} prompt tokens ({evaluated:>4} evaluated), embedded ttft {:7.1} ms",
            run.prompt_tokens, run.ttft_ms
        );
        if let Some(url) = &server_url {
            let sr = request("You are a helpful gardener.", &server_history, &user, 200);
            let (s, stext) = server(url, &sr, true);
            line.push_str(&format!(
                "   llama-server (cache_prompt) prompt {:7.1} ms",
                s.ttft_ms
            ));
            server_history.push((user.clone(), stext));
            last.1 = Some(s.ttft_ms);
        }
        println!("{line}");
        last.0 = Some(run.ttft_ms);
        if turn == turns {
            let (cold_run, _) = ours(&runtime, &provider(), &r);
            last.2 = Some(cold_run.ttft_ms);
        }
        history.push((user, text));
    }
    if let (Some(cached), cached_server, Some(cold)) = last {
        println!(
            "turn {turns}: embedded {cached:.1} ms with the cache, {cold:.1} ms reading the whole prompt{}",
            cached_server
                .map(|s| format!("; llama-server with cache_prompt {s:.1} ms"))
                .unwrap_or_default()
        );
    }
    let stats = model.stats();
    println!(
        "cache: {} of {} prompt tokens reused ({:.0}%)",
        stats.cached_tokens,
        stats.prompt_tokens,
        100.0 * stats.cached_tokens as f64 / stats.prompt_tokens.max(1) as f64
    );

    // 3. Many conversations at once for some minutes: decode speed per
    //    half minute must not fall.
    if conversations > 0 {
        serve_like(&runtime, &model, conversations, minutes);
    }
}

/// `conversations` conversations taking turns on the one provider for
/// `minutes`: replies and generated tokens per 30 s window.
fn serve_like(
    runtime: &tokio::runtime::Runtime,
    model: &Embedded,
    conversations: u32,
    minutes: u32,
) {
    let end = Instant::now() + Duration::from_secs(u64::from(minutes) * 60);
    let window = Duration::from_secs(30);
    let windows = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(u64, u64, u64)>::new()));
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..conversations {
            let model = model.clone();
            let windows = windows.clone();
            tasks.push(tokio::spawn(async move {
                let mut history: Vec<(String, String)> = Vec::new();
                let mut turn = 0;
                while Instant::now() < end {
                    turn += 1;
                    let user =
                        format!("Conversation {c}, message {turn}: tell me something about birds.");
                    let r = request("You are a helpful assistant.", &history, &user, 48);
                    let out = model.generate(&r, &mut |_| {}).await.expect("generation");
                    let slot = (started.elapsed().as_secs_f64() / window.as_secs_f64()) as usize;
                    let mut w = windows.lock().unwrap();
                    if w.len() <= slot {
                        w.resize(slot + 1, (0, 0, 0));
                    }
                    w[slot].0 += 1;
                    w[slot].1 += u64::from(out.completion_tokens.unwrap_or(0));
                    w[slot].2 += u64::from(out.prompt_tokens.unwrap_or(0));
                    drop(w);
                    history.push((user, out.text));
                    if history.len() > 6 {
                        history.remove(0);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    println!("{conversations} conversations at once, {minutes} min, per 30 s:");
    for (i, (replies, tokens, prompts)) in windows.lock().unwrap().iter().enumerate() {
        println!(
            "  {:>3}-{:>3} s: {replies:>4} replies, {:6.1} generated tok/s, {:5.0} prompt tokens per reply",
            i * 30,
            (i + 1) * 30,
            *tokens as f64 / 30.0,
            *prompts as f64 / (*replies).max(1) as f64
        );
    }
}
