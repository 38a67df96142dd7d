//! LLM provider checks: reachable, model present, a short generation with
//! its latency, and the circuit breaker other processes recorded.

use std::time::{Duration, Instant};

use convagent::adapters::llm::Configured;
use convagent::adapters::llm::embedded::{ModelFileCheck, check_model_file};
use convagent::core::{Breaker, BreakerState, ChatMessage, LlmError, LlmRequest, Role};

use super::{Check, Status};
use crate::output::utc;

/// How long the test generation may take (a cold Ollama model loads slowly).
const GENERATION_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn provider_checks(providers: &[Configured]) -> Vec<Check> {
    let mut checks = Vec::new();
    for p in providers {
        checks.push(match p {
            Configured::Ollama(o) => {
                let s = o.settings();
                match o.list_models().await {
                    Ok(models) if o.has_model(&models) => {
                        Check::pass("ollama", format!("{} has {}", s.host, s.model))
                    }
                    Ok(_) => Check::fail(
                        "ollama",
                        format!("{} does not have model {}", s.host, s.model),
                        format!("ollama pull {}", s.model),
                    ),
                    Err(e) => unreachable_check(
                        "ollama",
                        &e,
                        "start Ollama (`ollama serve`) or set OLLAMA_HOST",
                    ),
                }
            }
            Configured::OpenAi(o) => {
                let s = o.settings();
                match o.list_models().await {
                    Ok(models) if models.contains(&s.model) => {
                        Check::pass("openai", format!("{} offers {}", s.base_url, s.model))
                    }
                    Ok(models) => Check::fail(
                        "openai",
                        format!(
                            "{} does not offer {} ({} models listed)",
                            s.base_url,
                            s.model,
                            models.len()
                        ),
                        "set CONVAGENT_OPENAI_MODEL to a model the server lists",
                    ),
                    Err(LlmError::Http {
                        status: 401 | 403,
                        message,
                        ..
                    }) => Check::fail(
                        "openai",
                        format!("{} refused the API key: {message}", s.base_url),
                        "set OPENAI_API_KEY",
                    ),
                    Err(e) => {
                        unreachable_check("openai", &e, "start the server or set OPENAI_BASE_URL")
                    }
                }
            }
            Configured::Embedded(e) => {
                let path = e.settings().model_path.clone();
                match check_model_file(&path) {
                    Ok(ModelFileCheck::Ok { size, verified }) => Check::pass(
                        "embedded",
                        format!(
                            "{} ({:.1} MB{})",
                            path.display(),
                            size as f64 / 1e6,
                            if verified { ", sha256 verified" } else { "" }
                        ),
                    ),
                    Ok(ModelFileCheck::Missing) => Check::fail(
                        "embedded",
                        format!("no model at {}", path.display()),
                        "run ./install.sh (fetches the default model) or set CONVAGENT_MODEL_PATH",
                    ),
                    Ok(ModelFileCheck::NotGguf) => Check::fail(
                        "embedded",
                        format!("{} is not a GGUF file", path.display()),
                        "point CONVAGENT_MODEL_PATH at a .gguf model",
                    ),
                    Ok(ModelFileCheck::Corrupt { sha256 }) => Check::fail(
                        "embedded",
                        format!(
                            "{} has sha256 {sha256}, not the expected one",
                            path.display()
                        ),
                        "delete it and run ./install.sh again",
                    ),
                    Err(err) => Check::fail(
                        "embedded",
                        format!("cannot read {}: {err}", path.display()),
                        "check the file's permissions",
                    ),
                }
            }
        });
    }
    if checks.is_empty() {
        checks.push(Check::fail(
            "llm",
            "no LLM provider configured",
            "set `llm.chain` or CONVAGENT_LLM_CHAIN, e.g. ollama,embedded",
        ));
    }
    checks
}

/// Asks the provider for a few tokens and adds how long it took.
pub async fn generation(check: &mut Check, provider: &Configured) {
    if check.status != Status::Pass {
        return;
    }
    let request = LlmRequest::new(
        vec![ChatMessage::new(
            Role::User,
            "Reply with the single word OK.",
        )],
        8,
    );
    let p = provider.provider();
    let started = Instant::now();
    match tokio::time::timeout(GENERATION_TIMEOUT, p.generate(&request, &mut |_| {})).await {
        Ok(Ok(out)) => check.detail.push_str(&format!(
            "; generated {} token(s) in {} ms",
            out.completion_tokens
                .map_or("some".to_string(), |n| n.to_string()),
            started.elapsed().as_millis()
        )),
        Ok(Err(e)) => {
            check.status = Status::Fail;
            check
                .detail
                .push_str(&format!("; a test generation failed: {e}"));
            check.fix = Some("see the error; `convagent chat --chain NAME` reproduces it".into());
        }
        Err(_) => {
            check.status = Status::Fail;
            check.detail.push_str(&format!(
                "; no answer to a test generation within {}s",
                GENERATION_TIMEOUT.as_secs()
            ));
            check.fix = Some("the model may still be loading; try again".into());
        }
    }
}

/// A provider that is down is only a warning while another in the chain
/// answers: the chain falls through to it.
pub fn soften_if_another_answers(checks: &mut [Check]) {
    if checks.iter().any(|c| c.status == Status::Pass) {
        for c in checks.iter_mut().filter(|c| c.status == Status::Fail) {
            c.status = Status::Warn;
            c.detail
                .push_str(" (another provider in the chain answers)");
        }
    }
}

/// Adds each provider's circuit breaker, as persisted by the processes
/// that used it, to its check.
pub fn add_breakers(
    checks: &mut [Check],
    providers: &[Configured],
    breakers: &[Breaker],
    now: i64,
) {
    for (check, configured) in checks.iter_mut().zip(providers) {
        let p = configured.provider();
        let Some(b) = breakers
            .iter()
            .find(|b| b.provider == p.name() && b.model == p.model())
        else {
            continue;
        };
        let last_error = b.last_error.as_deref().unwrap_or("none recorded");
        match b.state {
            BreakerState::Closed if b.failures == 0 => check.detail.push_str("; breaker closed"),
            BreakerState::Closed => check.detail.push_str(&format!(
                "; breaker closed, {} recent failure(s), last: {last_error}",
                b.failures
            )),
            BreakerState::Open | BreakerState::HalfOpen => {
                let probe = b.next_probe_at.map_or(String::new(), |t| {
                    format!(", next probe in {}s", ((t - now).max(0) + 999) / 1000)
                });
                let since = b
                    .opened_at
                    .map_or(String::new(), |t| format!(" since {} UTC", utc(t)));
                check.detail.push_str(&format!(
                    "; breaker {}{since}{probe}, last error: {last_error}",
                    b.state
                ));
                if check.status == Status::Pass {
                    check.status = Status::Warn;
                    check.fix =
                        Some("the breaker closes by itself after a successful probe".into());
                }
            }
        }
    }
}

fn unreachable_check(name: &str, e: &LlmError, fix: &str) -> Check {
    Check::fail(name, e.to_string(), fix)
}
