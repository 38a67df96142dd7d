//! Channel checks: credentials present (and, with `--live`, accepted by the
//! provider), the public URL known (and reachable through it), and the
//! Telegram webhook registered where Telegram lets us ask.

use convagent::adapters::channels;
use convagent::config::Settings;
use convagent::daemon::public_url::{PublicUrl, recorded_path};

use super::Check;

/// The public URL as `serve` would use it: configured, else recorded by
/// `convagent tunnel`.
pub fn public_url(settings: &Settings) -> Option<String> {
    PublicUrl::new(
        settings.config.server.public_url.clone(),
        Some(recorded_path(&settings.dirs.state)),
    )
    .current()
}

pub async fn channel_checks(settings: &Settings, live: bool) -> Vec<Check> {
    let c = &settings.config.channels;
    let mut checks = Vec::new();
    let pairs = [
        (
            "whatsapp",
            c.twilio.account_sid.is_some(),
            "TWILIO_ACCOUNT_SID",
            c.twilio.auth_token.is_some(),
            "TWILIO_AUTH_TOKEN",
        ),
        (
            "telegram",
            c.telegram.bot_token.is_some(),
            "TELEGRAM_BOT_TOKEN",
            c.telegram.webhook_secret.is_some(),
            "TELEGRAM_WEBHOOK_SECRET",
        ),
        (
            "slack",
            c.slack.bot_token.is_some(),
            "SLACK_BOT_TOKEN",
            c.slack.signing_secret.is_some(),
            "SLACK_SIGNING_SECRET",
        ),
    ];
    for (name, a, a_var, b, b_var) in pairs {
        match (a, b) {
            (false, false) => {}
            (true, true) => checks.push(Check::pass(name, "credentials present")),
            (true, false) => checks.push(Check::fail(
                name,
                format!("{a_var} is set but {b_var} is not"),
                format!("set {b_var}"),
            )),
            (false, true) => checks.push(Check::fail(
                name,
                format!("{b_var} is set but {a_var} is not"),
                format!("set {a_var}"),
            )),
        }
    }
    if checks.is_empty() {
        checks.push(Check::warn(
            "channels",
            "no channel enabled: `convagent serve` answers every webhook with 404",
            "set TELEGRAM_BOT_TOKEN + TELEGRAM_WEBHOOK_SECRET, SLACK_BOT_TOKEN + SLACK_SIGNING_SECRET, or the TWILIO_* variables",
        ));
        return checks;
    }
    if live {
        live_credentials(settings, &mut checks).await;
    } else if checks.iter().all(|c| c.status == super::Status::Pass) {
        for check in &mut checks {
            check
                .detail
                .push_str(" (not checked with the provider; --live does)");
        }
    }

    let url = public_url(settings);
    checks.push(match &url {
        Some(u) => Check::pass("public url", u.clone()),
        None => Check::warn(
            "public url",
            "unknown: providers cannot reach this machine, and Twilio signatures need it",
            "run `convagent tunnel` (records it), or set CONVAGENT_PUBLIC_URL",
        ),
    });
    if live && let Some(u) = &url {
        checks.push(reachable(u).await);
        if let Some(telegram) = channels::telegram(&settings.config) {
            let want = format!("{u}/webhook/telegram");
            checks.push(match telegram.webhook_info().await {
                Ok(info) if info.url == want => Check::pass(
                    "webhook",
                    format!(
                        "Telegram delivers to {want} ({} pending)",
                        info.pending_update_count
                    ),
                ),
                Ok(info) if info.url.is_empty() => Check::fail(
                    "webhook",
                    "Telegram has no webhook set",
                    "run `convagent tunnel`",
                ),
                Ok(info) => Check::fail(
                    "webhook",
                    format!("Telegram delivers to {}, not {want}", info.url),
                    "run `convagent tunnel` to register the current URL",
                ),
                Err(e) => Check::fail("webhook", e, "check TELEGRAM_BOT_TOKEN"),
            });
        }
    }
    checks
}

async fn live_credentials(settings: &Settings, checks: &mut [Check]) {
    let config = &settings.config;
    for check in checks
        .iter_mut()
        .filter(|c| c.status == super::Status::Pass)
    {
        let result = match check.name.as_str() {
            "telegram" => match channels::telegram(config) {
                Some(t) => t.get_me().await.map(|u| format!("getMe: @{u}")),
                None => continue,
            },
            "slack" => match channels::slack(config) {
                Some(s) => s.auth_test().await.map(|who| format!("auth.test: {who}")),
                None => continue,
            },
            "whatsapp" => match channels::whatsapp(config) {
                Some(w) => w.fetch_account().await.map(|a| format!("account {a}")),
                None => continue,
            },
            _ => continue,
        };
        match result {
            Ok(detail) => check.detail = format!("credentials accepted ({detail})"),
            Err(e) => {
                check.status = super::Status::Fail;
                check.detail = e;
                check.fix = Some(
                    "the provider refused the credentials: copy them again from its console".into(),
                );
            }
        }
    }
}

/// The daemon's `/health` through the public URL.
async fn reachable(url: &str) -> Check {
    let health = format!("{url}/health");
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build();
    let answer = match client {
        Ok(c) => c.get(&health).send().await,
        Err(e) => return Check::fail("reachable", e.to_string(), "check the URL"),
    };
    match answer {
        Ok(r) if r.status().is_success() => {
            Check::pass("reachable", format!("{health} answers through the tunnel"))
        }
        Ok(r) => Check::fail(
            "reachable",
            format!("{health} answered HTTP {}", r.status().as_u16()),
            "is `convagent serve` running on the port the tunnel points at?",
        ),
        Err(e) => Check::fail(
            "reachable",
            format!("{health}: {}", e.without_url()),
            "start `convagent serve`, then `convagent tunnel`",
        ),
    }
}
