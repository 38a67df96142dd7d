//! `convagent doctor`: ✓/!/✗ per check with fixes, exit code, `--json`.

use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::{Env, stderr_of, stdout_of};

async fn fake_ollama(models: &[&str]) -> MockServer {
    let server = MockServer::start().await;
    let models: Vec<_> = models
        .iter()
        .map(|m| json!({ "name": m, "model": m }))
        .collect();
    Mock::given(method("GET"))
        .and(path("/api/tags"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "models": models })))
        .mount(&server)
        .await;
    let chat = [
        json!({ "model": "mistral:7b", "message": { "role": "assistant", "content": "OK" }, "done": false }),
        json!({ "model": "mistral:7b", "message": { "role": "assistant", "content": "" }, "done": true, "eval_count": 1 }),
    ]
    .iter()
    .map(|l| format!("{l}\n"))
    .collect::<String>();
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ResponseTemplate::new(200).set_body_string(chat))
        .mount(&server)
        .await;
    server
}

fn checks(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout_of(out)))
}

fn status_of<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v}"))["status"]
        .as_str()
        .unwrap()
}

#[tokio::test]
async fn all_green_with_ollama_serving_the_model() {
    let ollama = fake_ollama(&["mistral:7b"]).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    env.cmd(&["chat", "--chain", "embedded"])
        .write_stdin("")
        .assert()
        .success();

    let out = env.cmd(&["doctor"]).output().unwrap();
    let text = stdout_of(&out);
    assert!(out.status.success(), "{text}{}", stderr_of(&out));
    assert!(text.contains("✓ config"), "{text}");
    assert!(
        text.contains("✓ store") && text.contains("schema 14/14, integrity ok"),
        "{text}"
    );
    assert!(
        text.contains("✓ ollama") && text.contains("has mistral:7b"),
        "{text}"
    );
    assert!(
        text.contains("✓ embedded") && text.contains("sha256 verified"),
        "{text}"
    );
    assert!(
        text.contains("✓ media")
            && text.contains("voice notes, audio: notice (no speech-to-text: set [stt] base_url)"),
        "{text}"
    );
    assert!(text.contains("All checks passed."), "{text}");

    let out = env.cmd(&["doctor", "--json"]).output().unwrap();
    let v = checks(&out);
    assert_eq!(v["ok"], true);
    for name in ["config", "store", "ollama", "embedded"] {
        assert_eq!(status_of(&v, name), "pass");
    }
}

#[tokio::test]
async fn a_missing_ollama_model_is_a_warning_while_embedded_answers() {
    let ollama = fake_ollama(&["llama3.2:latest"]).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let out = env.cmd(&["doctor", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v = checks(&out);
    assert_eq!(status_of(&v, "ollama"), "warn");
    assert_eq!(status_of(&v, "store"), "warn", "not created yet");
    let ollama_check = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ollama")
        .unwrap();
    assert_eq!(ollama_check["fix"], "ollama pull mistral:7b");
}

#[test]
fn no_working_provider_fails_with_a_fix_for_each() {
    let env = Env::new();
    let out = env
        .cmd(&["doctor"])
        .env("CONVAGENT_MODEL_PATH", env.path("missing.gguf"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = stdout_of(&out);
    assert!(
        text.contains("✗ ollama") && text.contains("unreachable"),
        "{text}"
    );
    assert!(text.contains("fix: start Ollama"), "{text}");
    assert!(
        text.contains("✗ embedded") && text.contains("fix: run ./install.sh"),
        "{text}"
    );
    assert!(text.contains("2 check(s) failed."), "{text}");
}

#[test]
fn a_broken_config_file_fails_the_config_check() {
    let env = Env::new();
    env.write_config("[llm]\nchain = [\"ollama\", \"gpt\"]\n");
    let out = env.cmd(&["doctor", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = checks(&out);
    assert_eq!(v["ok"], false);
    assert_eq!(status_of(&v, "config"), "fail");
    let detail = v["checks"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("config.toml") && detail.contains("llm.chain"),
        "{detail}"
    );
}

#[test]
fn secrets_are_masked_in_doctor_output() {
    let env = Env::new();
    let out = env
        .cmd(&["doctor", "--json"])
        .env("CONVAGENT_LLM_CHAIN", "openai")
        .env(
            "OPENAI_BASE_URL",
            format!("{}/v1?key=sk-live-999", env.ollama),
        )
        .env("OPENAI_API_KEY", "sk-live-999")
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert!(!text.contains("sk-live-999"), "{text}");
    assert!(text.contains("********"), "{text}");
}

#[test]
fn doctor_shows_an_open_breaker_with_its_last_error() {
    let env = Env::new();
    // Three turns with Ollama down open its breaker (each gets the fallback).
    let out = env
        .cmd(&["chat", "--chain", "ollama"])
        .write_stdin("one\ntwo\nthree\nfour\n")
        .output()
        .unwrap();
    assert!(
        stderr_of(&out).contains("circuit open"),
        "{}",
        stderr_of(&out)
    );
    let out = env
        .cmd(&["doctor"])
        .env("CONVAGENT_LLM_CHAIN", "ollama")
        .output()
        .unwrap();
    let text = stdout_of(&out);
    assert!(text.contains("✗ ollama"), "{text}");
    assert!(text.contains("breaker open since"), "{text}");
    assert!(text.contains("next probe in "), "{text}");
    assert!(text.contains("last error: ollama is unreachable"), "{text}");
}

#[tokio::test]
async fn a_test_generation_reports_its_latency() {
    let ollama = fake_ollama(&["mistral:7b"]).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let out = env.cmd(&["doctor", "--json"]).output().unwrap();
    let v = checks(&out);
    let detail = |name: &str| {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(detail("ollama").contains("generated 1 token(s) in "), "{v}");
    assert!(detail("embedded").contains("token(s) in "), "{v}");
    for name in ["port", "clock", "disk"] {
        assert_eq!(status_of(&v, name), "pass", "{v}");
    }
    assert_eq!(status_of(&v, "channels"), "warn", "no channel enabled");
}

#[test]
fn a_config_file_with_secrets_must_not_be_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let path = env.write_config(
        "[channels.telegram]\nbot_token = \"1:abc\"\nwebhook_secret = \"tg-hook-secret\"\n",
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = env.cmd(&["doctor"]).output().unwrap();
    let text = stdout_of(&out);
    assert!(
        text.contains("holds secrets and others may read it (mode 644)"),
        "{text}"
    );
    assert!(
        text.contains(&format!("fix: chmod 600 {}", path.display())),
        "{text}"
    );
    assert!(!text.contains("1:abc"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = env.cmd(&["doctor", "--json"]).output().unwrap();
    assert_eq!(status_of(&checks(&out), "config"), "pass");
}

#[test]
fn half_configured_channels_and_a_missing_public_url_are_explained() {
    let env = Env::new();
    let out = env
        .cmd(&["doctor", "--json"])
        .env("TELEGRAM_BOT_TOKEN", "1:abc")
        .env("SLACK_BOT_TOKEN", "xoxb-1")
        .env("SLACK_SIGNING_SECRET", "slack-signing-secret")
        .output()
        .unwrap();
    let v = checks(&out);
    assert_eq!(status_of(&v, "telegram"), "fail");
    assert_eq!(status_of(&v, "slack"), "pass");
    assert_eq!(status_of(&v, "public url"), "warn");
    let text = v.to_string();
    assert!(
        text.contains("TELEGRAM_BOT_TOKEN is set but TELEGRAM_WEBHOOK_SECRET is not"),
        "{text}"
    );
    assert!(
        text.contains("not checked with the provider; --live does")
            || text.contains("credentials present"),
        "{text}"
    );
    assert!(
        !text.contains("1:abc") && !text.contains("xoxb-1"),
        "no secret in the output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_checks_ask_each_provider_and_the_tunnel() {
    use wiremock::matchers::path_regex;
    let api = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path_regex("^/bot[^/]+/getMe$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true, "result": { "id": 42, "is_bot": true, "first_name": "Convagent", "username": "convagent_bot" }
        })))
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path_regex("^/bot[^/]+/getWebhookInfo$"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "ok": true, "result": { "url": "https://old-tunnel.trycloudflare.com/webhook/telegram", "pending_update_count": 0 }
        })))
        .mount(&api)
        .await;
    Mock::given(method("POST"))
        .and(path("/auth.test"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({ "ok": false, "error": "invalid_auth" })),
        )
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/2010-04-01/Accounts/ACtest.json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({ "sid": "ACtest", "friendly_name": "My account", "status": "active" }),
        ))
        .mount(&api)
        .await;
    // The daemon as reached through the tunnel.
    let daemon = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok\n"))
        .mount(&daemon)
        .await;

    let env = Env::new();
    let out = env
        .cmd(&["doctor", "--live", "--json"])
        .env("CONVAGENT_PUBLIC_URL", daemon.uri())
        .env("TELEGRAM_BOT_TOKEN", "1:abc")
        .env("TELEGRAM_WEBHOOK_SECRET", "tg-hook-secret")
        .env("CONVAGENT_TELEGRAM_API_BASE", api.uri())
        .env("SLACK_BOT_TOKEN", "xoxb-1")
        .env("SLACK_SIGNING_SECRET", "slack-signing-secret")
        .env("CONVAGENT_SLACK_API_BASE", api.uri())
        .env("TWILIO_ACCOUNT_SID", "ACtest")
        .env("TWILIO_AUTH_TOKEN", "twilio-token")
        .env("CONVAGENT_TWILIO_API_BASE", api.uri())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v = checks(&out);
    let text = v.to_string();
    assert_eq!(status_of(&v, "telegram"), "pass", "{text}");
    assert!(text.contains("getMe: @convagent_bot"), "{text}");
    assert_eq!(status_of(&v, "whatsapp"), "pass", "{text}");
    assert!(text.contains("account My account (active)"), "{text}");
    assert_eq!(status_of(&v, "sms"), "pass", "{text}");
    assert_eq!(status_of(&v, "slack"), "fail", "{text}");
    assert!(text.contains("invalid_auth"), "{text}");
    assert_eq!(status_of(&v, "reachable"), "pass", "{text}");
    assert_eq!(status_of(&v, "webhook"), "fail", "{text}");
    assert!(
        text.contains("Telegram delivers to https://old-tunnel.trycloudflare.com/webhook/telegram"),
        "{text}"
    );
    // Without --live nothing is asked.
    let before = api.received_requests().await.unwrap().len();
    env.cmd(&["doctor"])
        .env("TELEGRAM_BOT_TOKEN", "1:abc")
        .env("TELEGRAM_WEBHOOK_SECRET", "tg-hook-secret")
        .env("CONVAGENT_TELEGRAM_API_BASE", api.uri())
        .output()
        .unwrap();
    assert_eq!(api.received_requests().await.unwrap().len(), before);
}

#[tokio::test]
async fn the_port_is_fine_when_our_daemon_holds_it_and_not_otherwise() {
    let ours = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/health"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok\n"))
        .mount(&ours)
        .await;
    let mut env = Env::new();
    env.listen = ours.address().to_string();
    let v = checks(&env.cmd(&["doctor", "--json"]).output().unwrap());
    assert_eq!(status_of(&v, "port"), "pass");
    assert!(v.to_string().contains("held by a running convagent serve"));

    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    env.listen = other.local_addr().unwrap().to_string();
    let v = checks(&env.cmd(&["doctor", "--json"]).output().unwrap());
    assert_eq!(status_of(&v, "port"), "fail");
    assert!(v.to_string().contains("held by another program"));
}

#[test]
fn the_prompt_version_and_its_origin_follow_the_config() {
    let env = Env::new();
    env.write_config(&format!(
        "{}[agent]\nsystem_prompt = \"You are Ada's shop assistant.\"\n",
        crate::BASE_CONFIG
    ));
    env.cmd(&["chat", "--chain", "embedded"])
        .write_stdin("")
        .assert()
        .success();
    let v = checks(&env.cmd(&["doctor", "--json"]).output().unwrap());
    assert_eq!(status_of(&v, "prompt"), "pass", "{v}");
    assert!(v.to_string().contains("version 1 from the config"), "{v}");

    // Edited: doctor says a new version is due; the next start makes it.
    env.write_config(&format!(
        "{}[agent]\nsystem_prompt = \"You are Ada's bakery assistant.\"\n",
        crate::BASE_CONFIG
    ));
    let v = checks(&env.cmd(&["doctor", "--json"]).output().unwrap());
    assert_eq!(status_of(&v, "prompt"), "warn", "{v}");
    assert!(v.to_string().contains("has changed since"), "{v}");
    env.cmd(&["chat", "--chain", "embedded"])
        .write_stdin("")
        .assert()
        .success();
    let v = checks(&env.cmd(&["doctor", "--json"]).output().unwrap());
    assert_eq!(status_of(&v, "prompt"), "pass", "{v}");
    assert!(v.to_string().contains("version 2 from the config"), "{v}");
}

#[test]
fn twilio_channels_say_which_number_replies_go_from() {
    let env = Env::new();
    let v = checks(
        &env.cmd(&["doctor", "--json"])
            .env("TWILIO_ACCOUNT_SID", "ACtest")
            .env("TWILIO_AUTH_TOKEN", "twilio-token")
            .env("TWILIO_SMS_FROM", "+15017122661")
            .output()
            .unwrap(),
    );
    let text = v.to_string();
    assert!(
        text.contains("replies from the number each person wrote to (TWILIO_WHATSAPP_FROM unset)"),
        "{text}"
    );
    assert!(
        text.contains("replies from +15017122661 (TWILIO_SMS_FROM)"),
        "{text}"
    );
}

/// Guardrail refusals (over 10 an hour) and senders held back by a limit
/// in the last hour are reported, as the alerts report them.
#[test]
fn guardrail_refusals_and_senders_held_back_are_reported() {
    use convagent::core::ports::all::*;
    let env = Env::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let check = |name: &str| {
        let out = env
            .cmd(&["doctor", "--json"])
            .env("CONVAGENT_LLM_CHAIN", "ollama")
            .output()
            .unwrap();
        let v = checks(&out);
        let check = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {v}"))
            .clone();
        (
            check["status"].as_str().unwrap().to_string(),
            check["detail"].as_str().unwrap().to_string(),
        )
    };
    let store = convagent::adapters::store::SqliteStore::open(&env.store()).unwrap();
    let prompt = store.ensure_prompt("be nice", now).unwrap();
    let (status, detail) = check("limits");
    assert_eq!(status, "pass", "{detail}");
    assert!(
        detail.contains("10 messages a minute per sender"),
        "{detail}"
    );
    assert_eq!(check("guardrails").0, "pass");

    let ids: Vec<i64> = (0..2)
        .map(|i| {
            let m = crate::support::inbound(
                convagent::core::Channel::Telegram,
                "999",
                &format!("spam-{i}"),
                "spam",
                now + i,
            );
            store.accept(&m).unwrap().message_id
        })
        .collect();
    let rule = "messages_per_minute".to_string();
    store
        .write_now(convagent::core::Write::Turn(convagent::core::TurnRecord {
            message_id: ids[1],
            covers: vec![ids[0]],
            violations: ids.iter().map(|&id| (id, rule.clone())).collect(),
            reply: convagent::core::NewReply {
                kind: convagent::core::ReplyKind::Refusal,
                provider: "limit".into(),
                model: rule.clone(),
                ..crate::support::answer("Please wait a minute.", prompt.version, now + 2)
            },
        }))
        .unwrap();
    let (status, detail) = check("limits");
    assert_eq!(status, "warn", "{detail}");
    assert!(
        detail.contains("2 messages from 1 sender over messages_per_minute"),
        "{detail}"
    );
    // Limits are not guardrails: still a pass there.
    assert_eq!(check("guardrails").0, "pass");

    for i in 0..11 {
        store
            .record_violation(ids[0], "credential_request", now + i)
            .unwrap();
    }
    let (status, detail) = check("guardrails");
    assert_eq!(status, "warn", "{detail}");
    assert!(
        detail.contains("11 messages refused in the last hour (11 credential_request)"),
        "{detail}"
    );
}

/// On Postgres: the store check reads the database's schema, and the
/// database check reports connections and claims whose lease ran out (a
/// daemon that died holding them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_it_checks_the_schema_connections_and_lease_backlog() {
    let ollama = fake_ollama(&["mistral:7b"]).await;
    let cluster = crate::support::postgres::Cluster::start();
    let url = cluster.database("doctor");
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let doctor = |env: &Env| {
        let out = env
            .cmd(&["doctor"])
            .env("CONVAGENT_DATABASE_URL", &url)
            .output()
            .unwrap();
        stdout_of(&out)
    };
    // Before anything migrated it: the schema is missing, and said so.
    let text = tokio::task::block_in_place(|| doctor(&env));
    assert!(
        text.contains("✗ store") && text.contains("schema 0 of 9"),
        "{text}"
    );

    let store = tokio::task::block_in_place(|| {
        convagent::adapters::store::PostgresStore::open(&url, 1).unwrap()
    });
    let text = tokio::task::block_in_place(|| doctor(&env));
    assert!(
        text.contains("✓ store") && text.contains("schema 9/9"),
        "{text}"
    );
    assert!(
        text.contains("✓ database") && text.contains("0 claims held, none past its lease"),
        "{text}"
    );
    // The test cluster trades durability for speed: doctor says so. And
    // it names the tool that backs Postgres up.
    assert!(
        text.contains("! durability") && text.contains("fsync = off, synchronous_commit = off"),
        "{text}"
    );
    assert!(
        text.contains("✓ backup") && text.contains("pg_dump at "),
        "{text}"
    );
    // A daemon that died holding a claim with a 1 ms lease.
    use convagent::core::ports::all::*;
    assert!(
        store
            .claim(convagent::core::ClaimKind::Turns, 1, "gone", 1)
            .unwrap()
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    let text = tokio::task::block_in_place(|| doctor(&env));
    assert!(
        text.contains("! database") && text.contains("1 of 1 claims outlived their lease"),
        "{text}"
    );
}

/// Each `[[mcp.servers]]` entry is started as the agent would start it: one
/// that speaks MCP passes with its tools (a warning for allowed tools it
/// lacks), one that does not start fails with a fix.
#[test]
fn it_starts_each_mcp_server_and_lists_its_tools() {
    let env = Env::new();
    let python = crate::support::mcp_python().display().to_string();
    env.write_config(&format!(
        "{}[[mcp.servers]]\nname = \"time\"\ncommand = {python:?}\n\
         args = [\"-m\", \"mcp_server_time\", \"--local-timezone\", \"UTC\"]\n\
         [[mcp.servers]]\nname = \"clock\"\ncommand = {python:?}\n\
         args = [\"-m\", \"mcp_server_time\"]\ntools = [\"get_current_time\", \"nope\"]\n\
         [[mcp.servers]]\nname = \"ghost\"\ncommand = \"/nonexistent/mcp\"\n",
        crate::BASE_CONFIG
    ));
    let out = env.cmd(&["doctor"]).output().unwrap();
    let text = stdout_of(&out);
    assert!(!out.status.success(), "ghost fails the run: {text}");
    assert!(
        text.contains("✓ mcp        server time: 2 tool(s) offered to the model (get_current_time, convert_time)"),
        "{text}"
    );
    assert!(
        text.contains("! mcp        server clock: 1 tool(s) (clock__get_current_time)")
            && text.contains("does not have: nope"),
        "{text}"
    );
    assert!(
        text.contains("✗ mcp        server ghost: cannot start `/nonexistent/mcp`"),
        "{text}"
    );
    // What each command runs with: its variables (names only), its own
    // directory, the limits, and what Landlock lets it touch.
    let dir = env.home.path().join("state/convagent/tools/time");
    let line = text
        .lines()
        .find(|l| l.contains("server time runs with"))
        .unwrap_or_else(|| panic!("no sandbox line for time: {text}"));
    let names: Vec<&str> = line
        .split("env ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let allowed = ["HOME", "PATH", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];
    assert!(
        names.contains(&"HOME") && names.iter().all(|n| allowed.contains(n)),
        "{line}"
    );
    assert!(line.contains(&format!("dir {}", dir.display())), "{line}");
    assert!(
        line.contains("limits 3600 CPU s, 1024 MiB, 256 files, 4096 processes; no new privileges"),
        "{line}"
    );
    assert!(
        line.contains("Landlock (ABI") || line.contains("no Landlock"),
        "{line}"
    );
}
