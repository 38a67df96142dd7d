//! `convagent doctor`: what is wrong and how to fix it. Config and its
//! permissions, store and migrations, each LLM provider (reachable, model
//! present, a short generation, breaker), each channel's credentials
//! (checked with the provider only with `--live`), public URL and webhook,
//! the serve port, the clock, disk space. ✓/!/✗ with a fix each; exit 1 on
//! any ✗; `--json` for scripts.

mod channels;
mod providers;
mod store;
mod system;

use std::process::ExitCode;

use anyhow::Result;
use serde::Serialize;

use crate::context::Context;
use crate::output::now_ms;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the checks as JSON
    #[arg(long)]
    json: bool,

    /// Also ask the providers: credentials (getMe, auth.test, the Twilio
    /// account), the public URL through the tunnel, the Telegram webhook
    #[arg(long)]
    live: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(
        name: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        }
    }
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Pass, detail, None)
    }
    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(name, Status::Fail, detail, Some(fix.into()))
    }
    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(name, Status::Warn, detail, Some(fix.into()))
    }
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    let mut checks = Vec::new();
    match ctx.settings() {
        Ok(settings) => {
            checks.push(store::config_check(settings));
            checks.push(store::store_check(ctx));
            checks.extend(store::database_check(ctx));
            checks.extend(store::durability_check(ctx));
            checks.extend(store::backup_check(ctx));
            checks.extend(store::prompt_check(ctx));
            checks.extend(store::outbox_check(ctx));
            checks.extend(store::violation_checks(ctx));
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            checks.extend(runtime.block_on(async {
                let breakers = match ctx.store_read_only() {
                    Ok(Some(store)) => store.breakers().unwrap_or_default(),
                    _ => Vec::new(),
                };
                let configured = ctx.providers()?;
                let mut llm = providers::provider_checks(&configured).await;
                for (check, provider) in llm.iter_mut().zip(&configured) {
                    providers::generation(check, provider).await;
                }
                providers::soften_if_another_answers(&mut llm);
                providers::add_breakers(&mut llm, &configured, &breakers, now_ms());
                let mut all = llm;
                all.extend(channels::channel_checks(settings, args.live).await);
                all.push(channels::media_check(settings));
                all.extend(system::mcp_checks(settings).await);
                all.push(system::port_check(settings).await);
                all.push(system::clock_check());
                all.push(system::disk_check("disk", &settings.dirs.data));
                if settings.log_dir() != settings.dirs.data {
                    all.push(system::disk_check("disk", &settings.log_dir()));
                }
                anyhow::Ok(all)
            })?);
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
        outln!("{}", masker.mask(&serde_json::to_string_pretty(&value)?));
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Pass => "✓",
                Status::Warn => "!",
                Status::Fail => "✗",
            };
            outln!("{mark} {:<10} {}", c.name, masker.mask(&c.detail));
            if let Some(fix) = &c.fix {
                outln!("  {:<10} fix: {}", "", masker.mask(fix));
            }
        }
        let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
        outln!();
        outln!(
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
