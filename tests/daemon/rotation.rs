//! Rotating a channel's signing secret without downtime: while the grace
//! period lasts, webhooks signed with the previous secret are accepted
//! beside the new one; after it, only the new one is.

use std::sync::Arc;

use crate::support::FakeClock;
use crate::{Harness, Options, TELEGRAM_SECRET};

const NEW_TELEGRAM: &str = "rotated-telegram-secret";

/// The harness signs with its usual secrets; here they are the previous
/// ones and each channel has a new one.
fn rotated(c: &mut convagent::config::Config) {
    let ch = &mut c.channels;
    ch.telegram.webhook_secret_previous = ch.telegram.webhook_secret.replace(NEW_TELEGRAM.into());
    ch.slack.signing_secret_previous = ch
        .slack
        .signing_secret
        .replace("rotated-slack-secret".into());
    ch.twilio.auth_token_previous = ch.twilio.auth_token.replace("rotated-twilio-token".into());
    c.server.previous_secret_grace_secs = 60;
}

#[tokio::test]
async fn the_previous_secret_is_accepted_during_its_grace_period_only() {
    let h = Harness::start(Options {
        // Now: Slack's signatures carry the real time.
        clock: Some(Arc::new(FakeClock::at(crate::now_secs() * 1000))),
        configure: rotated,
        ..Options::default()
    })
    .await;
    let goldens = [
        "telegram/text.json",
        "slack/message_im.json",
        "whatsapp/text.json",
    ];
    for golden in goldens {
        let (status, body, _) = h.post(&h.sign(&h.golden(golden))).await;
        assert_eq!(
            status, 200,
            "{golden} signed with the previous secret: {body}"
        );
    }
    // The new secret works too (Telegram sends it as it is).
    let mut request = h.sign(&h.golden("telegram/text.json"));
    for (name, value) in request.headers.iter_mut() {
        if name == "x-telegram-bot-api-secret-token" {
            assert_eq!(value, TELEGRAM_SECRET);
            *value = NEW_TELEGRAM.into();
        }
    }
    assert_eq!(h.post(&request).await.0, 200);

    h.advance(60_000);
    for golden in goldens {
        let (status, body, _) = h.post(&h.sign(&h.golden(golden))).await;
        assert_eq!(status, 401, "{golden} after the grace period: {body}");
    }
    assert_eq!(h.post(&request).await.0, 200, "the new secret still works");
    h.stop().await;
}
