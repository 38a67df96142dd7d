//! Ingress: every golden payload gets its documented answer; signatures,
//! content types, sizes and schemas are checked with a clear 4xx.

use convagent::core::ports::all::*;
use std::path::Path;

use convagent::core::TraceStore;
use convagent::golden::Golden;

use crate::support::signing;
use crate::{Harness, Options, SLACK_SECRET, TWILIO_TOKEN, mount_success, now_secs};

fn header<'a>(r: &'a convagent::golden::SignedRequest, name: &str) -> &'a str {
    &r.headers.iter().find(|(k, _)| k == name).unwrap().1
}

fn set_header(r: &mut convagent::golden::SignedRequest, name: &str, value: &str) {
    r.headers.retain(|(k, _)| k != name);
    r.headers.push((name.to_string(), value.to_string()));
}

#[tokio::test]
async fn every_golden_payload_gets_its_documented_answer() {
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    let all =
        Golden::load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")).unwrap();
    assert!(all.len() >= 18, "the golden set: {}", all.len());
    for (path, golden) in &all {
        let (status, body, correlation) = h.post(&h.sign(golden)).await;
        assert_eq!(status, golden.expect_status, "{}: {body}", path.display());
        let expect = golden.expect.as_deref().unwrap();
        match expect {
            "accepted" => {
                assert_eq!(body, "ok\n", "{}", path.display());
                assert_eq!(correlation.unwrap().len(), 32);
            }
            "ignored" => assert!(body.starts_with("ignored: "), "{}: {body}", path.display()),
            other => assert!(body.starts_with(other), "{}: {body}", path.display()),
        }
    }
    h.stop().await;
}

#[tokio::test]
async fn telegram_secret_header_is_required_and_compared() {
    let h = Harness::start(Options::default()).await;
    let golden = h.golden("telegram/text.json");
    let mut request = h.sign(&golden);
    set_header(
        &mut request,
        "x-telegram-bot-api-secret-token",
        "wrong-secret",
    );
    let (status, body, _) = h.post(&request).await;
    assert_eq!(
        (status, body.trim()),
        (
            401,
            "X-Telegram-Bot-Api-Secret-Token does not match the configured secret"
        )
    );
    request
        .headers
        .retain(|(k, _)| k != "x-telegram-bot-api-secret-token");
    let (status, body, _) = h.post(&request).await;
    assert_eq!(
        (status, body.trim()),
        (401, "missing X-Telegram-Bot-Api-Secret-Token header")
    );
    h.stop().await;
}

#[tokio::test]
async fn slack_signatures_cover_secret_body_and_timestamp() {
    let h = Harness::start(Options::default()).await;
    let golden = h.golden("slack/message_im.json");
    let good = h.sign(&golden);
    let ts = header(&good, "x-slack-request-timestamp").to_string();

    let mut wrong_secret = good.clone();
    set_header(
        &mut wrong_secret,
        "x-slack-signature",
        &signing::slack("not-the-secret", &ts, &good.body),
    );
    assert_eq!(h.post(&wrong_secret).await.0, 401);

    let mut tampered = good.clone();
    tampered.body = String::from_utf8(good.body.clone())
        .unwrap()
        .replace("hear me", "wire me $100")
        .into_bytes();
    assert_eq!(h.post(&tampered).await.0, 401);

    // Well past the window, so a second ticking in between changes nothing;
    // the exact boundary is a unit test on a fixed clock (slack.rs).
    for skew in [-400, 400] {
        let stale_ts = (now_secs() + skew).to_string();
        let mut stale = good.clone();
        set_header(&mut stale, "x-slack-request-timestamp", &stale_ts);
        set_header(
            &mut stale,
            "x-slack-signature",
            &signing::slack(SLACK_SECRET, &stale_ts, &good.body),
        );
        let (status, body, _) = h.post(&stale).await;
        assert_eq!(status, 401, "skew {skew}");
        assert!(body.contains("more than 5 minutes"), "{body}");
    }

    let mut unsigned = good.clone();
    unsigned.headers.retain(|(k, _)| k != "x-slack-signature");
    assert_eq!(
        h.post(&unsigned).await.1.trim(),
        "missing X-Slack-Signature header"
    );

    assert_eq!(h.post(&good).await.0, 200, "the untouched request passes");
    h.stop().await;
}

#[tokio::test]
async fn twilio_signatures_use_the_public_url_with_or_without_the_default_port() {
    let public = "https://bot.example.com";
    let h = Harness::start(Options {
        public_url: Some(public.into()),
        ..Options::default()
    })
    .await;
    let golden = h.golden("whatsapp/text.json");
    let params: Vec<(String, String)> = golden.form.clone().unwrap().0;
    let mut request = h.sign_for(&golden, Some(public));
    assert_eq!(h.post(&request).await.0, 200, "signed over the public URL");

    // Twilio may sign the URL with the default port spelled out.
    let with_port = signing::twilio(
        TWILIO_TOKEN,
        "https://bot.example.com:443/webhook/whatsapp",
        &params,
    );
    set_header(&mut request, "x-twilio-signature", &with_port);
    assert_eq!(h.post(&request).await.0, 200, "default port accepted");

    // Signed over the loopback URL, which is not the one the provider calls.
    let local = signing::twilio(
        TWILIO_TOKEN,
        &format!("{}/webhook/whatsapp", h.url),
        &params,
    );
    set_header(&mut request, "x-twilio-signature", &local);
    let (status, body, _) = h.post(&request).await;
    assert_eq!(status, 401);
    assert!(
        body.contains("public URL"),
        "the reason points at the usual mistake: {body}"
    );

    let wrong = signing::twilio(
        "other-token",
        "https://bot.example.com/webhook/whatsapp",
        &params,
    );
    set_header(&mut request, "x-twilio-signature", &wrong);
    assert_eq!(h.post(&request).await.0, 401);
    request.headers.retain(|(k, _)| k != "x-twilio-signature");
    assert_eq!(
        h.post(&request).await.1.trim(),
        "missing X-Twilio-Signature header"
    );
    h.stop().await;
}

#[tokio::test]
async fn bad_requests_get_a_status_with_a_reason_and_store_nothing() {
    let h = Harness::start(Options::default()).await;
    let golden = h.golden("telegram/text.json");

    let mut wrong_type = h.sign(&golden);
    set_header(&mut wrong_type, "content-type", "text/plain");
    assert_eq!(h.post(&wrong_type).await.0, 415);

    let mut huge = h.sign(&golden);
    huge.body = vec![b' '; 2 * 1024 * 1024];
    assert_eq!(h.post(&huge).await.0, 413);

    for broken in [&b"{not json"[..], br#"{"update_id": "seven"}"#] {
        let mut bad = h.sign(&golden);
        bad.body = broken.to_vec();
        let (status, body, _) = h.post(&bad).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.starts_with("invalid Telegram update"), "{body}");
    }

    let mut unknown = h.sign(&golden);
    unknown.url = format!("{}/webhook/discord", h.url);
    let (status, body, _) = h.post(&unknown).await;
    assert_eq!(status, 404);
    assert!(body.contains("unknown channel `discord`"), "{body}");

    assert!(
        h.store
            .conversations(&Default::default())
            .unwrap()
            .is_empty(),
        "nothing stored"
    );
    h.stop().await;
}

#[tokio::test]
async fn a_channel_without_secrets_answers_404_with_the_variables_to_set() {
    let h = Harness::start(Options::default()).await;
    // A daemon with no channel enabled.
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        convagent::adapters::store::SqliteStore::open(&dir.path().join("x.db")).unwrap(),
    );
    let metrics = convagent::daemon::Metrics::new();
    let tracer = convagent::daemon::Tracer::start(store.clone(), metrics.clone());
    let agent = convagent::core::Agent::new(
        store.clone(),
        std::sync::Arc::new(crate::support::EchoLlm::new()),
        std::sync::Arc::new(convagent::adapters::clock::SystemClock),
        convagent::core::Guardrails::new(&[]).unwrap(),
        Default::default(),
    );
    let daemon = convagent::daemon::Daemon::new(
        store,
        convagent::daemon::Live::new(std::sync::Arc::new(agent), vec![], vec![]),
        std::sync::Arc::new(convagent::adapters::clock::SystemClock),
        Default::default(),
        metrics,
        tracer,
    );
    let app = convagent::daemon::router(daemon);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let request = crate::sign_to(&url, &h.golden("slack/message_im.json"), None);
    let (status, body, _) = h.post(&request).await;
    assert_eq!(status, 404);
    assert!(
        body.contains("SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET"),
        "{body}"
    );
    let ready = reqwest::get(format!("{url}/health/ready")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "not ready without channels");
    h.stop().await;
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let h = Harness::start(Options::default()).await;
    mount_success(&h).await;
    assert_eq!(
        reqwest::get(format!("{}/health", h.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ok\n"
    );
    let ready: serde_json::Value = reqwest::get(format!("{}/health/ready", h.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["store"], "ok");
    assert_eq!(
        ready["channels"],
        serde_json::json!(["whatsapp", "sms", "telegram", "slack"])
    );

    let golden = h.golden("telegram/text.json");
    h.post(&h.sign(&golden)).await;
    h.post(&h.sign(&golden)).await;
    let text = h.metrics().await;
    for line in [
        r#"convagent_inbound_total{channel="telegram",outcome="accepted"} 1"#,
        r#"convagent_inbound_total{channel="telegram",outcome="duplicate"} 1"#,
        "convagent_stage_duration_seconds_bucket{",
        r#"stage="ack""#,
        "convagent_outbox_depth ",
        "convagent_dead_letters 0",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
    h.stop().await;
}

#[tokio::test]
async fn the_public_url_recorded_by_tunnel_is_followed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = dir.path().join("state-public_url");
    // As `convagent tunnel` records it: a new file renamed over the old one.
    // Both writes get the same length and modification time, as two writes
    // within one tick of the file system's clock would.
    let stamp = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_763_712_000);
    let record = |url: &str| {
        let tmp = dir.path().join("state-public_url.tmp");
        std::fs::write(&tmp, format!("{url}\n")).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&tmp)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        std::fs::rename(&tmp, &recorded).unwrap();
    };
    let (first, second) = (
        "https://aaaa-tunnel.trycloudflare.com",
        "https://bbbb-tunnel.trycloudflare.com",
    );
    record(first);
    let mut options = Options::default();
    options.settings.recorded_public_url = Some(recorded.clone());
    let h = Harness::start(options).await;
    let golden = h.golden("whatsapp/text.json");
    let signed_for = |public: &str| h.sign_for(&golden, Some(public));

    assert_eq!(h.post(&signed_for(first)).await.0, 200);
    // A new tunnel, a new URL: the daemon follows the file at once.
    record(second);
    let (status, body, _) = h.post(&signed_for(first)).await;
    assert_eq!(status, 401, "{body}");
    let (status, body, _) = h.post(&signed_for(second)).await;
    assert_eq!(status, 200, "{body}");
    h.stop().await;
}

#[tokio::test]
async fn body_limits_are_per_channel() {
    let h = Harness::start(Options {
        configure: |c| c.channels.telegram.max_body_bytes = 2048,
        ..Options::default()
    })
    .await;
    mount_success(&h).await;
    let mut long = h.golden("telegram/text.json");
    long.json.as_mut().unwrap()["message"]["text"] = serde_json::json!("x".repeat(4000));
    let (status, body, _) = h.post(&h.sign(&long)).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("limited to 2048 bytes"), "{body}");

    // Slack keeps the default limit: the same size passes there.
    let mut slack = h.golden("slack/message_im.json");
    slack.json.as_mut().unwrap()["event"]["text"] = serde_json::json!("y".repeat(4000));
    assert_eq!(h.post(&h.sign(&slack)).await.0, 200);
    h.stop().await;
}

#[tokio::test]
async fn ignored_updates_are_acknowledged_with_a_traced_reason() {
    let h = Harness::start(Options::default()).await;
    let (status, body, correlation) = h
        .post(&h.sign(&h.golden("telegram/testing_sample_inline_query.json")))
        .await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ignored: update kind not handled\n")
    );
    let correlation = correlation.unwrap();
    // The tracer writes in the background.
    assert!(
        crate::support::eventually(5, || !h.store.trace(&correlation).unwrap().is_empty()).await
    );
    let trace = h.store.trace(&correlation).unwrap();
    assert_eq!(trace.len(), 1, "{trace:?}");
    assert_eq!(trace[0].stage, convagent::core::Stage::Ignored);
    assert_eq!(
        trace[0].detail.as_deref(),
        Some("telegram: update kind not handled")
    );
    h.stop().await;
}

/// With a metrics token, `/metrics` answers only the scraper that has it.
#[tokio::test]
async fn metrics_can_require_a_bearer_token() {
    let token = "metrics-token-for-the-test";
    let h = Harness::start(Options {
        settings: convagent::daemon::DaemonSettings {
            metrics_token: Some(token.into()),
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/metrics", h.url);
    for auth in [None, Some("Bearer wrong"), Some(token)] {
        let mut request = client.get(&url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body = response.text().await.unwrap();
        assert!(body.contains("CONVAGENT_METRICS_TOKEN"), "{body}");
        assert!(!body.contains(token), "never the token itself");
    }
    let response = client.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("convagent_"));
    // Health stays open: load balancers do not carry the token.
    assert_eq!(
        reqwest::get(format!("{}/health", h.url))
            .await
            .unwrap()
            .status(),
        200
    );
    h.stop().await;
}
