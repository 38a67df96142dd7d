//! Any bytes as a webhook body, with headers the fuzzer also chooses, to
//! every channel's verify and parse: no panic, and a refusal is always one
//! of the 4xx kinds. Run with `cargo fuzz run webhook` (nightly).

#![no_main]

use std::sync::OnceLock;

use convagent::adapters::channels::registry;
use convagent::config::Config;
use convagent::core::channel::{ChannelAdapter, WebhookRequest};
use libfuzzer_sys::fuzz_target;

fn adapters() -> &'static Vec<std::sync::Arc<dyn ChannelAdapter>> {
    static ADAPTERS: OnceLock<Vec<std::sync::Arc<dyn ChannelAdapter>>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let mut c = Config::default();
        c.channels.telegram.bot_token = Some("1:token".into());
        c.channels.telegram.webhook_secret = Some("secret".into());
        c.channels.slack.bot_token = Some("xoxb-1".into());
        c.channels.slack.signing_secret = Some("secret".into());
        c.channels.twilio.account_sid = Some("ACx".into());
        c.channels.twilio.auth_token = Some("secret".into());
        registry::enabled(&c)
    })
}

fuzz_target!(|data: &[u8]| {
    // The first bytes pick headers; the rest is the body.
    let (head, body) = data.split_at(data.len().min(2));
    let content_type = match head.first().copied().unwrap_or(0) % 3 {
        0 => "application/json",
        1 => "application/x-www-form-urlencoded",
        _ => "text/plain",
    };
    let headers = vec![
        ("content-type".to_string(), content_type.to_string()),
        (
            "x-telegram-bot-api-secret-token".to_string(),
            "secret".to_string(),
        ),
        (
            "x-slack-request-timestamp".to_string(),
            "1763712000".to_string(),
        ),
    ];
    let request = WebhookRequest {
        url: "https://bot.example/webhook/x",
        headers: &headers,
        body,
        now_ms: 1_763_712_000_000,
    };
    for adapter in adapters() {
        // Parse runs on unauthenticated input too, to reach deeper code.
        let _ = adapter.verify(&request);
        let _ = adapter.parse(&request);
    }
});
