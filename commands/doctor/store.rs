//! Config and store checks.

use std::os::unix::fs::PermissionsExt;

use convagent::config::{ConfigSource, Settings, read_file};
use convagent::core::RuleCount;
use convagent::core::ports::{PROMPT_FROM_CHAT, PROMPT_FROM_CONFIG};

use super::Check;
use crate::context::Context;
use crate::output::{age, now_ms};

pub fn config_check(settings: &Settings) -> Check {
    match &settings.source {
        ConfigSource::File(path) => {
            // Secrets in a file others can read are secrets no more.
            let holds_secrets = read_file(path).is_ok_and(|c| !c.secrets().is_empty());
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            if holds_secrets && mode & 0o077 != 0 {
                return Check::fail(
                    "config",
                    format!(
                        "{} holds secrets and others may read it (mode {mode:o})",
                        path.display()
                    ),
                    format!("chmod 600 {}", path.display()),
                );
            }
            let secrets = if holds_secrets {
                format!("holds secrets, mode {mode:o}")
            } else {
                "no secrets in it".into()
            };
            Check::pass("config", format!("{} parsed ({secrets})", path.display()))
        }
        ConfigSource::Defaults { looked_at } => Check::pass(
            "config",
            format!(
                "no file at {}; defaults and environment in use",
                looked_at.display()
            ),
        ),
    }
}

pub fn store_check(ctx: &Context) -> Check {
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
                if postgres(ctx).is_some() {
                    "check store.url / CONVAGENT_DATABASE_URL and that Postgres accepts this user"
                } else {
                    "check the file's permissions, or set `store.path`"
                },
            );
        }
    };
    match store.health() {
        Err(e) => Check::fail(
            "store",
            e.to_string(),
            if postgres(ctx).is_some() {
                "the database may not be convagent's: point store.url at its own database"
            } else {
                "the file may not be a convagent store; move it aside"
            },
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

/// On Postgres: whether a commit is on disk when it returns. With `fsync`
/// or `synchronous_commit` off, a message the daemon acknowledged may be
/// lost if the database's machine goes down.
pub fn durability_check(ctx: &Context) -> Option<Check> {
    let url = postgres(ctx)?;
    let store = convagent::adapters::store::PostgresStore::connect(&url, 1).ok()?;
    let (fsync, commit) = store.durability().ok()?;
    let detail = format!("fsync = {fsync}, synchronous_commit = {commit}");
    Some(if fsync == "off" || commit == "off" || commit == "local" {
        Check::warn(
            "durability",
            format!(
                "{detail}: an acknowledged message may be lost if the database's machine goes down"
            ),
            "set fsync = on and synchronous_commit = on (Postgres's defaults) in postgresql.conf",
        )
    } else {
        Check::pass(
            "durability",
            format!("{detail}: a 200 means the message is on disk"),
        )
    })
}

/// On Postgres: whether `pg_dump` is here to back the database up
/// (`convagent store backup` is for SQLite).
pub fn backup_check(ctx: &Context) -> Option<Check> {
    postgres(ctx)?;
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("pg_dump"))
            .find(|p| p.is_file())
    });
    Some(match found {
        Some(path) => Check::pass(
            "backup",
            format!("pg_dump at {} backs the database up", path.display()),
        ),
        None => Check::warn(
            "backup",
            "pg_dump is not installed: nothing here can back the database up",
            "install Postgres's client tools (apt-get install postgresql-client)",
        ),
    })
}

/// The Postgres URL in use, if the store is on Postgres.
fn postgres(ctx: &Context) -> Option<String> {
    ctx.settings().ok()?.config.store.url.clone()
}

/// On Postgres: the connections this database has and may have (several
/// daemons and commands share them), and the lease backlog — claims whose
/// lease ran out because their daemon stopped without giving them up (the
/// others take that work over; many mean daemons are dying).
pub fn database_check(ctx: &Context) -> Option<Check> {
    let url = postgres(ctx)?;
    let store = match convagent::adapters::store::PostgresStore::connect(&url, 1) {
        Ok(store) => store,
        // The store check already says why.
        Err(_) => return None,
    };
    let read = || -> Result<_, convagent::core::StoreError> {
        let (in_use, max) = store.connections()?;
        let (expired, held) = store.leases()?;
        Ok((in_use, max, expired, held))
    };
    Some(match read() {
        Err(e) => Check::fail(
            "database",
            e.to_string(),
            "the schema may be missing: start `convagent serve` once",
        ),
        Ok((in_use, max, _, _)) if in_use * 10 >= max * 9 => Check::warn(
            "database",
            format!("{in_use} of {max} connections in use"),
            "lower store.connections per daemon, or raise Postgres's max_connections",
        ),
        Ok((in_use, max, expired, held)) if expired > 0 => Check::warn(
            "database",
            format!(
                "{in_use} of {max} connections; {expired} of {held} claims outlived their lease (a daemon stopped without giving them up)"
            ),
            "other daemons take that work over; look at the logs of the one that stopped",
        ),
        Ok((in_use, max, _, held)) => Check::pass(
            "database",
            format!("{in_use} of {max} connections; {held} claims held, none past its lease"),
        ),
    })
}

/// The system prompt in use: its version and where it came from, and
/// whether an edited `agent.system_prompt` is waiting for the next start.
pub fn prompt_check(ctx: &Context) -> Option<Check> {
    let store = ctx.store_read_only().ok()??;
    let configured = &ctx.settings().ok()?.config.agent.system_prompt;
    let current = store.current_prompt().ok()?;
    let Some(current) = current else {
        return Some(Check::pass(
            "prompt",
            "none stored yet: the first start stores agent.system_prompt as version 1",
        ));
    };
    let origin = match current.source.as_str() {
        PROMPT_FROM_CONFIG => "from the config (agent.system_prompt)",
        PROMPT_FROM_CHAT => "set with /prompt set in `convagent chat`",
        _ => "the first configured prompt",
    };
    let detail = format!(
        "version {} {origin}, {}",
        current.version,
        age(current.created_at, now_ms())
    );
    if store.configured_prompt_changed(configured).ok()? {
        return Some(Check::warn(
            "prompt",
            format!("{detail}; agent.system_prompt has changed since"),
            "the next start of `convagent serve` or `chat` stores it as a new version",
        ));
    }
    Some(Check::pass("prompt", detail))
}

/// The outbox as the alerting rules see it: dead letters, and replies that
/// wait long (a channel down or rate limiting).
pub fn outbox_check(ctx: &Context) -> Option<Check> {
    let store = ctx.store_read_only().ok()??;
    let stats = store.outbox_stats().ok()?;
    let oldest = store
        .outbox_entries(convagent::core::OutboxView::Queued, 1)
        .ok()?
        .into_iter()
        .next();
    let now = now_ms();
    if stats.dead > 0 {
        return Some(Check::warn(
            "outbox",
            format!(
                "{} dead letter{} (replies given up on), {} queued",
                stats.dead,
                if stats.dead == 1 { "" } else { "s" },
                stats.queued
            ),
            "`convagent outbox --dead` shows the providers' errors; \
             `convagent outbox retry --all-dead` queues them again",
        ));
    }
    if let Some(oldest) = oldest.filter(|o| now - o.created_at > 10 * 60 * 1000) {
        return Some(Check::warn(
            "outbox",
            format!(
                "{} replies queued, the oldest since {}",
                stats.queued,
                age(oldest.created_at, now)
            ),
            "is `convagent serve` running? `convagent outbox --queued` shows their last errors",
        ));
    }
    Some(Check::pass(
        "outbox",
        format!("{} queued, no dead letters", stats.queued),
    ))
}

/// Guardrail violations and senders held back by limits in the last hour,
/// as the alerting rules see them (`ConvagentGuardrailRefusals`,
/// `ConvagentSendersLimited`).
pub fn violation_checks(ctx: &Context) -> Vec<Check> {
    let limits = &ctx.settings().map(|s| s.config.limits.clone());
    let (Ok(limits), Ok(Some(store))) = (limits, ctx.store_read_only()) else {
        return Vec::new();
    };
    let Ok(counts) = store.violations_since(now_ms() - 60 * 60 * 1000) else {
        return Vec::new();
    };
    let (held, broke): (Vec<RuleCount>, Vec<RuleCount>) = counts
        .into_iter()
        .partition(|c| convagent::core::limits::Rule::parse(&c.rule).is_some());
    vec![guardrails_check(&broke), limits_check(limits, &held)]
}

/// More than 10 guardrail violations an hour: the alert's threshold.
fn guardrails_check(broke: &[RuleCount]) -> Check {
    let total: u64 = broke.iter().map(|c| c.messages).sum();
    let rules: Vec<String> = broke
        .iter()
        .map(|c| format!("{} {}", c.messages, c.rule))
        .collect();
    if total > 10 {
        return Check::warn(
            "guardrails",
            format!(
                "{total} messages refused in the last hour ({})",
                rules.join(", ")
            ),
            "each got a refusal, not an answer; `convagent history` shows the conversations",
        );
    }
    Check::pass(
        "guardrails",
        format!("{total} messages refused in the last hour"),
    )
}

fn limits_check(limits: &convagent::core::Limits, held: &[RuleCount]) -> Check {
    let per_minute = match limits.messages_per_minute {
        0 => "no message rate".to_string(),
        n => format!("{n} messages a minute per sender"),
    };
    if held.is_empty() {
        return Check::pass(
            "limits",
            format!("{per_minute}; nobody held back in the last hour"),
        );
    }
    let what: Vec<String> = held
        .iter()
        .map(|h| {
            format!(
                "{} message{} from {} sender{} over {}",
                h.messages,
                if h.messages == 1 { "" } else { "s" },
                h.senders,
                if h.senders == 1 { "" } else { "s" },
                h.rule
            )
        })
        .collect();
    Check::warn(
        "limits",
        format!("in the last hour: {}", what.join("; ")),
        "each sender got one notice and the LLM was not called; if they are real users, \
         raise the limit in [limits] (config.example.toml lists the keys)",
    )
}
