//! `convagent doctor`: checks config, store and every LLM provider in the
//! chain, prints ✓/!/✗ with a fix per problem, exits non-zero on any ✗.

use std::process::ExitCode;

use anyhow::Result;
use convagent::adapters::llm::Configured;
use convagent::adapters::llm::embedded::{ModelFileCheck, check_model_file};
use convagent::config::{ConfigSource, Settings};
use convagent::core::{Breaker, BreakerState, LlmError, Store};
use serde::Serialize;

use crate::context::Context;
use crate::output::{now_ms, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the checks as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }
    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let mut checks = Vec::new();
    match ctx.settings() {
        Ok(settings) => {
            checks.push(config_check(settings));
            checks.push(store_check(ctx));
            let breakers = match ctx.store_read_only() {
                Ok(Some(store)) => store.breakers().unwrap_or_default(),
                _ => Vec::new(),
            };
            let providers = ctx.providers()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut provider_checks = runtime.block_on(provider_checks(&providers));
            add_breakers(&mut provider_checks, &providers, &breakers, now_ms());
            checks.extend(provider_checks);
        }
        Err(e) => checks.push(Check::fail(
            "config",
            format!("{e:#}"),
            "fix the file or variable named above; config.example.toml lists every key",
        )),
    }

    let masker = ctx.masker();
    let ok = checks.iter().all(|c| c.status != Status::Fail);
    if args.json {
        let value = serde_json::json!({ "ok": ok, "checks": checks });
        println!("{}", masker.mask(&serde_json::to_string_pretty(&value)?));
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Pass => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            println!("{mark} {:<10} {}", c.name, masker.mask(&c.detail));
            if let Some(fix) = &c.fix {
                println!("  {:<10} fix: {}", "", masker.mask(fix));
            }
        }
        let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
        println!();
        println!(
            "{}",
            if ok {
                "All checks passed.".to_string()
            } else {
                format!("{failed} check(s) failed.")
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn config_check(settings: &Settings) -> Check {
    match &settings.source {
        ConfigSource::File(path) => Check::pass("config", format!("{} parsed", path.display())),
        ConfigSource::Defaults { looked_at } => Check::pass(
            "config",
            format!(
                "no file at {}; defaults and environment in use",
                looked_at.display()
            ),
        ),
    }
}

fn store_check(ctx: &Context) -> Check {
    let store = match ctx.store_read_only() {
        Ok(Some(store)) => store,
        Ok(None) => {
            return Check::warn(
                "store",
                format!(
                    "{} does not exist yet",
                    ctx.settings()
                        .map(|s| s.store_path().display().to_string())
                        .unwrap_or_default()
                ),
                "it is created on first use: run `convagent chat`",
            );
        }
        Err(e) => {
            return Check::fail(
                "store",
                format!("{e:#}"),
                "check the file's permissions, or set `store.path`",
            );
        }
    };
    match store.health() {
        Err(e) => Check::fail(
            "store",
            e.to_string(),
            "the file may not be a convagent store; move it aside",
        ),
        Ok(h) if h.integrity.is_err() => Check::fail(
            "store",
            format!(
                "{}: integrity check failed: {}",
                h.location,
                h.integrity.unwrap_err()
            ),
            "restore from a backup, or move the file aside to start afresh",
        ),
        Ok(h) if h.schema_version < h.latest_schema_version => Check::fail(
            "store",
            format!(
                "{}: schema {} of {}",
                h.location, h.schema_version, h.latest_schema_version
            ),
            "migrations apply when convagent opens the store for writing: run `convagent chat` once",
        ),
        Ok(h) if h.schema_version > h.latest_schema_version => Check::fail(
            "store",
            format!(
                "{}: schema {} is newer than this convagent knows ({})",
                h.location, h.schema_version, h.latest_schema_version
            ),
            "upgrade convagent",
        ),
        Ok(h) => Check::pass(
            "store",
            format!(
                "{} (schema {}/{}, integrity ok)",
                h.location, h.schema_version, h.latest_schema_version
            ),
        ),
    }
}

async fn provider_checks(providers: &[Configured]) -> Vec<Check> {
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
    // A provider that is down is only a warning while a later one answers:
    // the chain falls through to it.
    if checks.iter().any(|c| c.status == Status::Pass) {
        for c in &mut checks {
            if c.status == Status::Fail {
                c.status = Status::Warn;
                c.detail
                    .push_str(" (another provider in the chain answers)");
            }
        }
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

fn unreachable_check(name: &str, e: &LlmError, fix: &str) -> Check {
    Check::fail(name, e.to_string(), fix)
}

/// Adds each provider's circuit breaker, as persisted by the processes
/// that used it, to its check.
fn add_breakers(checks: &mut [Check], providers: &[Configured], breakers: &[Breaker], now: i64) {
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
