//! Embedded generation speed: time to first token and decode tokens/s of
//! the default model on N threads (default 2). Method in benches/README.md.
//!
//!     cargo bench --bench embedded [-- --threads 2 --runs 5 --max-tokens 128]

use std::time::{Duration, Instant};

use convagent::adapters::llm::{Embedded, EmbeddedSettings};
use convagent::config::Dirs;
use convagent::core::{ChatMessage, LlmProvider, LlmRequest, Role, StreamEvent};

fn arg(name: &str, default: u32) -> u32 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let threads = arg("--threads", 2);
    let runs = arg("--runs", 5).max(1);
    let max_tokens = arg("--max-tokens", 128);
    let model_path = std::env::var_os("CONVAGENT_MODEL_PATH")
        .map(Into::into)
        .unwrap_or_else(|| Dirs::from_env().unwrap().default_model_path());
    let model = Embedded::new(EmbeddedSettings {
        threads,
        context_size: 2048,
        temperature: 0.0,
        seed: 1,
        ..EmbeddedSettings::for_model(model_path)
    });
    let load = Instant::now();
    model
        .load()
        .expect("model loads (run ./install.sh --deps-only)");
    let load = load.elapsed();

    let request = LlmRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(
                Role::User,
                "Tell me a long story about a dragon who learns to sing.",
            ),
        ],
        max_tokens,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let (mut ttft, mut decode_rate, mut prompt_rate) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        let started = Instant::now();
        let mut first: Option<Duration> = None;
        let output = runtime
            .block_on(model.generate(&request, &mut |e| {
                if let (StreamEvent::Token(_), None) = (e, first) {
                    first = Some(started.elapsed());
                }
            }))
            .expect("generation");
        let total = started.elapsed();
        let first = first.expect("at least one token");
        let tokens = output.completion_tokens.unwrap_or(0);
        if run == 0 {
            continue; // warm-up
        }
        ttft.push(first.as_secs_f64() * 1000.0);
        // The first token comes out of the prompt pass; the rest are decode steps.
        decode_rate.push(f64::from(tokens.saturating_sub(1)) / (total - first).as_secs_f64());
        prompt_rate.push(f64::from(output.prompt_tokens.unwrap_or(0)) / first.as_secs_f64());
        eprintln!(
            "run {run}: {} prompt + {tokens} generated tokens, first token {:.1} ms, total {:.0} ms",
            output.prompt_tokens.unwrap_or(0),
            first.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0
        );
    }
    println!(
        "embedded model, {threads} threads, {runs} runs (medians), greedy, max {max_tokens} tokens"
    );
    println!(
        "  model load:          {:.0} ms",
        load.as_secs_f64() * 1000.0
    );
    println!("  time to first token: {:.1} ms", median(ttft));
    println!("  prompt processing:   {:.0} tokens/s", median(prompt_rate));
    println!("  generation:          {:.1} tokens/s", median(decode_rate));
}
