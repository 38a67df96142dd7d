//! Channel checks: credentials present (and, with `--live`, accepted by the
//! provider), the public URL known (and reachable through it), and the
//! Telegram webhook registered where Telegram lets us ask.

use convagent::adapters::channels::registry;
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
    let config = &settings.config;
    let mut checks = Vec::new();
    let mut enabled = Vec::new();
    for spec in registry::ALL {
        let name = spec.channel.as_str();
        let present = (spec.present)(config);
        if present.iter().all(|p| !p) {
            continue;
        }
        let missing: Vec<&str> = spec
            .secrets
            .iter()
            .zip(&present)
            .filter(|(_, p)| !**p)
            .map(|(v, _)| *v)
            .collect();
        let Some(adapter) = (spec.build)(config).filter(|_| missing.is_empty()) else {
            let set: Vec<&str> = spec
                .secrets
                .iter()
                .zip(&present)
                .filter(|(_, p)| **p)
                .map(|(v, _)| *v)
                .collect();
            checks.push(Check::fail(
                name,
                format!(
                    "{} is set but {} is not",
                    set.join(" and "),
                    missing.join(" and ")
                ),
                format!("set {}", missing.join(" and ")),
            ));
            continue;
        };
        let mut detail = "credentials present".to_string();
        if let Some(from) = adapter.replies_from() {
            detail.push_str(&format!("; {from}"));
        }
        checks.push(Check::pass(name, detail));
        enabled.push((checks.len() - 1, adapter));
    }
    if checks.is_empty() {
        let hints: Vec<String> = registry::ALL
            .iter()
            .map(|s| s.secrets.join(" + "))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        checks.push(Check::warn(
            "channels",
            "no channel enabled: `convagent serve` answers every webhook with 404",
            format!("set {}", hints.join(", or ")),
        ));
        return checks;
    }
    if live {
        for (i, adapter) in &enabled {
            let check = &mut checks[*i];
            match adapter.check_credentials().await {
                Ok(who) => check.detail = format!("credentials accepted ({who})"),
                Err(e) => {
                    check.status = super::Status::Fail;
                    check.detail = e;
                    check.fix = Some(
                        "the provider refused the credentials: copy them again from its console"
                            .into(),
                    );
                }
            }
        }
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
        for (_, adapter) in &enabled {
            let hook = format!("{u}/webhook/{}", adapter.channel());
            if let Some(check) = adapter.check_webhook(&hook) {
                checks.push(match check.await {
                    Ok(detail) => Check::pass("webhook", detail),
                    Err((detail, fix)) => Check::fail("webhook", detail, fix),
                });
            }
        }
    }
    checks
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

/// What becomes of each kind of media a person sends: read as text, heard,
/// seen, or answered with its `[media]` notice, and why; where the files
/// are kept. Every kind is answered, so this passes; the detail says which
/// are not taken in.
pub fn media_check(settings: &Settings) -> Check {
    use convagent::config::ProviderKind;
    let config = &settings.config;
    let voice = match convagent::adapters::stt::OpenAiStt::from_config(&config.stt) {
        Some(stt) => {
            use convagent::core::stt::SpeechToText;
            format!("voice notes, audio: transcribed by {}", stt.describe())
        }
        None => "voice notes, audio: notice (no speech-to-text: set [stt] base_url)".into(),
    };
    let seers: Vec<&str> = config
        .llm
        .chain
        .iter()
        .filter_map(|kind| match kind {
            ProviderKind::Ollama => match config.llm.ollama.vision {
                Some(false) => None,
                Some(true) => Some("ollama"),
                None => Some("ollama if its /api/show lists \"vision\""),
            },
            ProviderKind::Openai => config.llm.openai.vision.then_some("openai"),
            ProviderKind::Embedded => None,
        })
        .collect();
    let images = match seers.is_empty() {
        true => "photos, stickers: notice (no model in the chain sees: set vision = true for \
                 a provider whose model does)"
            .to_string(),
        false => format!(
            "photos, stickers: shown to {} (the others read a stand-in)",
            seers.join(", ")
        ),
    };
    let m = &config.media;
    Check::pass(
        "media",
        format!(
            "places, contacts: read as text; {voice}; {images}; videos: notice (not taken in); \
             documents: text, Markdown, CSV, JSON and PDF read (at most {} characters), other \
             files: notice; each notice once per conversation and hour; files kept in {} \
             (at most {} MB voice, {} MB image, {} MB video, {} MB file)",
            m.document_chars,
            settings.media_dir().display(),
            m.voice_max_bytes >> 20,
            m.image_max_bytes >> 20,
            m.video_max_bytes >> 20,
            m.file_max_bytes >> 20,
        ),
    )
}
