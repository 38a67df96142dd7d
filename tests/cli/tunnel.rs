//! `convagent tunnel` with a stand-in `cloudflared` on PATH that prints
//! what the real one prints for a quick tunnel, and fake Telegram and
//! Twilio APIs. Nothing reaches the internet.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{Env, stderr_of};

const URL: &str = "https://seasonal-deck-organisms-sf.trycloudflare.com";

/// cloudflared's quick-tunnel banner, on stderr as the real one logs it.
const STANDIN: &str = r##"#!/bin/sh
echo $$ > "$STANDIN_DIR/pid"
# Counted before the banner: the tunnel acts on the banner at once.
echo start >> "$STANDIN_DIR/starts"
echo "$@" > "$STANDIN_DIR/args"
cat >&2 <<'BANNER'
2024-05-01T10:00:00Z INF Thank you for trying Cloudflare Tunnel. Doing so, without a Cloudflare account, is a quick way to experiment and try it out. However, be aware that these account-less Tunnels have no uptime guarantee.
2024-05-01T10:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...
2024-05-01T10:00:01Z INF +--------------------------------------------------------------------------------------------+
2024-05-01T10:00:01Z INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):  |
2024-05-01T10:00:01Z INF |  https://seasonal-deck-organisms-sf.trycloudflare.com                                      |
2024-05-01T10:00:01Z INF +--------------------------------------------------------------------------------------------+
2024-05-01T10:00:01Z INF Version 2024.4.1
BANNER
if [ -n "${STANDIN_DIE_ONCE:-}" ] && [ "$(wc -l < "$STANDIN_DIR/starts")" -eq 1 ]; then
  echo "2024-05-01T10:00:02Z ERR Connection terminated" >&2
  exit 1
fi
if [ -n "${STANDIN_DIE:-}" ]; then
  echo "2024-05-01T10:00:02Z ERR Failed to create new quic connection error=\"timeout: no recent network activity\"" >&2
  exit 1
fi
exec sleep 60
"##;

fn standin(env: &Env) -> std::path::PathBuf {
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("cloudflared");
    std::fs::write(&script, STANDIN).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    bin
}

/// Reads the tunnel's stdout until it has said "Press Ctrl-C" `times` times.
/// The reader comes back too: the pipe must stay open while the tunnel runs.
fn read_until_ready(
    child: &mut std::process::Child,
    times: usize,
) -> (String, BufReader<std::process::ChildStdout>) {
    let mut out = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    tokio::task::block_in_place(|| {
        while out.matches("Press Ctrl-C").count() < times {
            let mut line = String::new();
            assert!(
                lines.read_line(&mut line).unwrap() > 0,
                "tunnel ended early:\n{out}"
            );
            out.push_str(&line);
        }
    });
    (out, lines)
}

fn path_with(bin: &std::path::Path) -> String {
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

async fn fake_telegram() -> MockServer {
    let server = MockServer::start().await;
    for (m, result) in [
        ("setWebhook", json!(true)),
        ("deleteWebhook", json!(true)),
        (
            "getWebhookInfo",
            json!({ "url": format!("{URL}/webhook/telegram"), "has_custom_certificate": false, "pending_update_count": 2 }),
        ),
    ] {
        Mock::given(method("POST"))
            .and(path_regex(format!("^/bot[^/]+/{m}$")))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({ "ok": true, "result": result, "description": "Webhook was set" }),
            ))
            .mount(&server)
            .await;
    }
    server
}

fn requests_to(server_requests: &[wiremock::Request], suffix: &str) -> Vec<serde_json::Value> {
    server_requests
        .iter()
        .filter(|r| r.url.path().ends_with(suffix))
        .map(|r| {
            serde_json::from_slice(&r.body).unwrap_or_else(|_| {
                let form: std::collections::BTreeMap<String, String> =
                    serde_urlencoded::from_bytes(&r.body).unwrap();
                json!(form)
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_records_the_url_registers_webhooks_and_cleans_up_on_ctrl_c() {
    let telegram = fake_telegram().await;
    let twilio = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(
            "/2010-04-01/Accounts/ACtest/IncomingPhoneNumbers/PN123.json",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({ "sid": "PN123", "sms_url": format!("{URL}/webhook/whatsapp") }),
            ),
        )
        .mount(&twilio)
        .await;
    let env = Env::new();
    let bin = standin(&env);
    let mut child = env
        .std_cmd(&["tunnel", "--port", "18123", "--cleanup"])
        .env("PATH", path_with(&bin))
        .env("STANDIN_DIR", env.path(""))
        .env("TELEGRAM_BOT_TOKEN", "42:tok")
        .env("TELEGRAM_WEBHOOK_SECRET", "hook-secret")
        .env("CONVAGENT_TELEGRAM_API_BASE", telegram.uri())
        .env("TWILIO_ACCOUNT_SID", "ACtest")
        .env("TWILIO_AUTH_TOKEN", "tw-token")
        .env("CONVAGENT_TWILIO_PHONE_NUMBER_SID", "PN123")
        .env("CONVAGENT_TWILIO_API_BASE", twilio.uri())
        .env("SLACK_BOT_TOKEN", "xoxb-1")
        .env("SLACK_SIGNING_SECRET", "sign")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, _stdout) = read_until_ready(&mut child, 1);
    assert!(
        out.contains(&format!("✓ tunnel     {URL} → http://127.0.0.1:18123")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "webhook set to {URL}/webhook/telegram (getWebhookInfo confirms; 2 pending)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "now posts incoming messages to {URL}/webhook/whatsapp"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{URL}/webhook/slack")), "{out}");
    assert!(
        !out.contains("hook-secret") && !out.contains("tw-token"),
        "no secret printed"
    );

    // Recorded where serve reads it.
    let recorded = env.path("state/convagent/public_url");
    assert_eq!(std::fs::read_to_string(&recorded).unwrap().trim(), URL);
    assert_eq!(
        std::fs::read_to_string(env.path("args")).unwrap().trim(),
        "tunnel --no-autoupdate --url http://127.0.0.1:18123"
    );
    let received = telegram.received_requests().await.unwrap();
    assert_eq!(
        requests_to(&received, "/setWebhook"),
        vec![json!({
            "url": format!("{URL}/webhook/telegram"),
            "secret_token": "hook-secret",
            "allowed_updates": ["message", "edited_message", "callback_query"]
        })]
    );
    let twilio_received = twilio.received_requests().await.unwrap();
    assert_eq!(
        requests_to(&twilio_received, "/PN123.json")[0]["SmsUrl"],
        format!("{URL}/webhook/whatsapp")
    );

    // Ctrl-C: cloudflared stops, the webhook goes (--cleanup), the record too.
    let standin_pid = std::fs::read_to_string(env.path("pid"))
        .unwrap()
        .trim()
        .to_string();
    crate::send_signal(child.id(), "-INT");
    let status = tokio::task::block_in_place(|| child.wait().unwrap());
    assert!(status.success(), "{status:?}");
    // Reaped by the time tunnel exits; /proc may lag a moment behind.
    let gone = || !std::path::Path::new(&format!("/proc/{standin_pid}")).exists();
    assert!(
        crate::support::eventually(5, gone).await,
        "cloudflared was stopped"
    );
    assert!(!recorded.exists());
    let received = telegram.received_requests().await.unwrap();
    assert_eq!(requests_to(&received, "/deleteWebhook").len(), 1);
}

#[test]
fn a_missing_cloudflared_says_how_to_install_it() {
    let env = Env::new();
    let out = env
        .cmd(&["tunnel"])
        .env("PATH", env.path("empty"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    assert!(stderr.contains("`cloudflared` was not found"), "{stderr}");
    assert!(stderr.contains("hint: install cloudflared"), "{stderr}");
}

#[test]
fn cloudflared_dying_is_reported_with_its_last_lines() {
    let env = Env::new();
    let bin = standin(&env);
    let out = env
        .cmd(&["tunnel", "--port", "18124"])
        .env("PATH", path_with(&bin))
        .env("STANDIN_DIR", env.path(""))
        .env("STANDIN_DIE", "1")
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("cloudflared exited (exit status: 1)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Failed to create new quic connection"),
        "{stderr}"
    );
    assert!(stderr.contains("--keep-alive"), "{stderr}");
    assert!(
        !env.path("state/convagent/public_url").exists(),
        "a dead tunnel's URL is not left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_restarts_a_dead_cloudflared() {
    let env = Env::new();
    let bin = standin(&env);
    let mut child = env
        .std_cmd(&["tunnel", "--port", "18125", "--keep-alive"])
        .env("PATH", path_with(&bin))
        .env("STANDIN_DIR", env.path(""))
        .env("STANDIN_DIE_ONCE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first cloudflared dies after printing its URL; the second stays.
    let _stdout = read_until_ready(&mut child, 2);
    assert_eq!(
        std::fs::read_to_string(env.path("starts"))
            .unwrap()
            .lines()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read_to_string(env.path("state/convagent/public_url"))
            .unwrap()
            .trim(),
        URL,
        "the restarted tunnel's URL is recorded again"
    );
    crate::send_signal(child.id(), "-INT");
    let status = tokio::task::block_in_place(|| child.wait().unwrap());
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("Connection terminated") && stderr.contains("restarting cloudflared"),
        "{stderr}"
    );
}
