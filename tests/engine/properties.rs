//! Property tests of every channel's verify + parse and of the config
//! loader: for any input, no panic and only a 4xx-class refusal; an
//! authenticated payload in the provider's format is never refused for
//! missing fields, whichever ones are missing.

use convagent::adapters::channels::registry;
use convagent::config::Config;
use convagent::core::Channel;
use convagent::core::channel::{ChannelAdapter, Inbound, WebhookError, WebhookRequest};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::support::signing;

const TELEGRAM_SECRET: &str = "tg-secret";
const SLACK_SECRET: &str = "slack-secret";
const TWILIO_TOKEN: &str = "twilio-token";
const URL: &str = "https://bot.example/webhook/x";
const NOW_MS: i64 = 1_763_712_000_000;

fn config() -> Config {
    let mut c = Config::default();
    c.channels.telegram.bot_token = Some("1:token".into());
    c.channels.telegram.webhook_secret = Some(TELEGRAM_SECRET.into());
    c.channels.slack.bot_token = Some("xoxb-1".into());
    c.channels.slack.signing_secret = Some(SLACK_SECRET.into());
    c.channels.twilio.account_sid = Some("ACx".into());
    c.channels.twilio.auth_token = Some(TWILIO_TOKEN.into());
    c
}

fn adapter(channel: Channel) -> std::sync::Arc<dyn ChannelAdapter> {
    registry::adapter(&config(), channel).unwrap()
}

/// The headers that authenticate `body` for `channel`, as its provider
/// would send them.
fn authenticated(channel: Channel, body: &[u8]) -> Vec<(String, String)> {
    let mut h = Vec::new();
    match channel {
        Channel::Telegram => {
            h.push(("content-type".into(), "application/json".into()));
            h.push((
                "x-telegram-bot-api-secret-token".into(),
                TELEGRAM_SECRET.into(),
            ));
        }
        Channel::Slack => {
            let ts = (NOW_MS / 1000).to_string();
            h.push(("content-type".into(), "application/json".into()));
            h.push((
                "x-slack-signature".into(),
                signing::slack(SLACK_SECRET, &ts, body),
            ));
            h.push(("x-slack-request-timestamp".into(), ts));
        }
        _ => {
            let params: Vec<(String, String)> =
                serde_urlencoded::from_bytes(body).unwrap_or_default();
            h.push((
                "content-type".into(),
                "application/x-www-form-urlencoded".into(),
            ));
            h.push((
                "x-twilio-signature".into(),
                signing::twilio(TWILIO_TOKEN, URL, &params),
            ));
        }
    }
    h
}

fn check(
    channel: Channel,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Inbound, WebhookError> {
    let request = WebhookRequest {
        url: URL,
        headers,
        body,
        now_ms: NOW_MS,
    };
    let a = adapter(channel);
    a.verify(&request).and_then(|()| a.parse(&request))
}

/// Field names the adapters read, and some they do not.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "update_id",
            "message",
            "edited_message",
            "callback_query",
            "channel_post",
            "message_id",
            "from",
            "chat",
            "id",
            "type",
            "is_bot",
            "first_name",
            "username",
            "text",
            "caption",
            "entities",
            "reply_to_message",
            "data",
            "date",
            "event",
            "event_id",
            "event_time",
            "user",
            "channel",
            "ts",
            "thread_ts",
            "bot_id",
            "subtype",
            "channel_type",
            "challenge",
            "user_profile",
            "display_name",
        ])
        .prop_map(str::to_string),
        "[a-z_]{1,8}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("message".to_string()),
            Just("event_callback".to_string()),
            Just("url_verification".to_string()),
            Just("app_mention".to_string()),
            Just("im".to_string()),
            Just("group".to_string()),
            ".{0,12}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every object-key path of `value` (`message.chat.id`, ...).
fn paths(value: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            prefix.push(k.clone());
            out.push(prefix.clone());
            paths(v, prefix, out);
            prefix.pop();
        }
    }
}

fn remove(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for p in parents {
        match node.get_mut(p.as_str()) {
            Some(next) => node = next,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

fn documented(channel: Channel) -> Value {
    match channel {
        Channel::Telegram => json!({
            "update_id": 900000001,
            "message": {
                "message_id": 101,
                "from": { "id": 111, "is_bot": false, "first_name": "Ada", "username": "ada_l" },
                "chat": { "id": 111, "first_name": "Ada", "type": "private" },
                "date": 1763712000, "text": "Hello!",
                "entities": [{ "type": "bot_command", "offset": 0, "length": 1 }]
            }
        }),
        _ => json!({
            "token": "XXYYZZ", "team_id": "T0001", "api_app_id": "A0001",
            "type": "event_callback", "event_id": "Ev0PV52K22", "event_time": 1763712000,
            "event": { "type": "message", "channel": "D024BE91L", "user": "U2147483697",
                       "text": "Hello", "ts": "1355517523.000005", "channel_type": "im" }
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_authenticated_json_gets_an_answer_or_a_400(value in json_value(), raw in any::<bool>(), bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        for channel in [Channel::Telegram, Channel::Slack] {
            let body = if raw { bytes.clone() } else { value.to_string().into_bytes() };
            let headers = authenticated(channel, &body);
            match check(channel, &headers, &body) {
                Ok(_) | Err(WebhookError::BadRequest(_)) => {}
                Err(other) => prop_assert!(false, "{channel}: authenticated but {other:?}"),
            }
        }
    }

    #[test]
    fn any_authenticated_form_gets_an_answer(fields in prop::collection::vec((prop::sample::select(vec![
        "MessageSid", "SmsMessageSid", "SmsSid", "From", "To", "Body", "NumMedia", "MediaUrl0",
        "MediaContentType0", "MediaUrl1", "ProfileName", "WaId", "MessageStatus", "AccountSid",
    ]).prop_map(str::to_string), ".{0,16}"), 0..12)) {
        let body = serde_urlencoded::to_string(&fields).unwrap().into_bytes();
        for channel in [Channel::Whatsapp, Channel::Sms] {
            let headers = authenticated(channel, &body);
            let result = check(channel, &headers, &body);
            prop_assert!(result.is_ok(), "{channel}: {result:?} for {fields:?}");
        }
    }

    #[test]
    fn unauthenticated_or_garbled_requests_get_a_4xx_never_a_panic(
        body in prop::collection::vec(any::<u8>(), 0..128),
        headers in prop::collection::vec((prop::sample::select(vec![
            "content-type", "x-telegram-bot-api-secret-token", "x-slack-signature",
            "x-slack-request-timestamp", "x-twilio-signature",
        ]).prop_map(str::to_string), ".{0,24}"), 0..5),
    ) {
        for spec in registry::ALL {
            // No secret, no valid signature: refused (a 4xx with its reason),
            // whatever the body and the other headers.
            let unsigned = check(spec.channel, &headers, &body);
            match &unsigned {
                Err(e) => prop_assert!(!e.to_string().is_empty(), "{}: no reason", spec.channel),
                Ok(inbound) => prop_assert!(false, "{}: let through unauthenticated: {inbound:?}", spec.channel),
            }
            // Signed as the provider signs, the same garbled body is read or
            // refused as malformed, never taken for a bad signature.
            let signed = check(spec.channel, &authenticated(spec.channel, &body), &body);
            prop_assert!(
                !matches!(signed, Err(WebhookError::Unauthorized(_))),
                "{}: a signed request refused as unauthenticated: {signed:?}",
                spec.channel
            );
        }
    }

    #[test]
    fn documented_payloads_missing_any_fields_are_never_refused(drop in prop::collection::vec(any::<bool>(), 32)) {
        for channel in [Channel::Telegram, Channel::Slack] {
            let mut payload = documented(channel);
            let mut all = Vec::new();
            paths(&payload, &mut Vec::new(), &mut all);
            for (path, gone) in all.iter().zip(drop.iter().cycle()) {
                if *gone {
                    remove(&mut payload, path);
                }
            }
            let body = payload.to_string().into_bytes();
            let headers = authenticated(channel, &body);
            let result = check(channel, &headers, &body);
            prop_assert!(result.is_ok(), "{channel}: {result:?} for {payload}");
        }
    }

    #[test]
    fn the_config_loader_never_panics_and_names_what_is_wrong(text in "(\\[[a-z._]{0,20}\\]\n)?([a-z_]{1,16} = (\"[^\"\n]{0,12}\"|[0-9]{1,6}|true|\\[\\]|\\{\\})\n){0,4}") {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &text).unwrap();
        match convagent::config::read_file(&path) {
            Ok(config) => { let _ = config.validate(); }
            Err(e) => {
                let message = e.to_string();
                prop_assert!(message.contains("config.toml"), "{message}");
                prop_assert!(message.contains("key `"), "{message}");
            }
        }
    }
}
