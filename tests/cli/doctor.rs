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
        text.contains("✓ store") && text.contains("schema 2/2, integrity ok"),
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
