//! The embedded provider generating real text from the real default model
//! (SmolLM2-135M-Instruct Q4_1), greedy so the output is deterministic.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use convagent::adapters::llm::embedded::{DEFAULT_MODEL_SIZE, ModelFileCheck, check_model_file};
use convagent::adapters::llm::{Embedded, EmbeddedSettings};
use convagent::core::{ChatMessage, LlmError, LlmProvider, LlmRequest, Role};

use crate::support::{Collected, model_path};

/// One model for the whole test binary: loading is the costly part.
fn model() -> Arc<Embedded> {
    static MODEL: OnceLock<Arc<Embedded>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(Embedded::new(EmbeddedSettings {
                model_path: model_path(),
                threads: 2,
                context_size: 2048,
                temperature: 0.0,
                seed: 1,
            }))
        })
        .clone()
}

fn question(text: &str, max_tokens: u32) -> LlmRequest {
    LlmRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You are a helpful assistant."),
            ChatMessage::new(Role::User, text),
        ],
        max_tokens,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generates_real_text_deterministically_and_streams_it() {
    let m = model();
    let request = question("What is the capital of France?", 48);
    let mut first = Collected::default();
    let out = m.generate(&request, &mut first.sink()).await.unwrap();
    assert!(
        out.text.contains("Paris"),
        "unexpected answer: {:?}",
        out.text
    );
    assert_eq!(first.text(), out.text, "the stream carries the whole reply");
    assert!(first.tokens.len() > 1, "streamed in pieces, not at once");
    assert_eq!(out.provider, "embedded");
    assert_eq!(out.model, "SmolLM2-135M-Instruct.Q4_1");
    let completion = out.completion_tokens.unwrap();
    assert!(completion > 0 && completion <= 48, "{completion}");
    assert!(out.prompt_tokens.unwrap() > 10);

    // Greedy decoding: the same question gives the same answer, and the
    // loaded model is reused (a second context, not a second load).
    let again = m.generate(&request, &mut |_| {}).await.unwrap();
    assert_eq!(again.text, out.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reply_stops_at_max_tokens() {
    let out = model()
        .generate(
            &question("Write a long story about a dragon.", 5),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(out.completion_tokens, Some(5));
    assert!(!out.text.is_empty());
}

#[tokio::test]
async fn a_missing_model_file_says_how_to_get_one() {
    let m = Embedded::new(EmbeddedSettings {
        model_path: "/nonexistent/model.gguf".into(),
        threads: 1,
        context_size: 512,
        temperature: 0.0,
        seed: 1,
    });
    let err = m
        .generate(&question("hi", 4), &mut |_| {})
        .await
        .unwrap_err();
    match err {
        LlmError::ModelMissing { hint, .. } => assert!(hint.contains("install.sh"), "{hint}"),
        other => panic!("expected ModelMissing, got {other:?}"),
    }
}

#[test]
fn the_installed_model_is_the_verified_default() {
    let path = model_path();
    assert_eq!(
        check_model_file(&path).unwrap(),
        ModelFileCheck::Ok {
            size: DEFAULT_MODEL_SIZE,
            verified: true
        }
    );
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        check_model_file(&dir.path().join("nope.gguf")).unwrap(),
        ModelFileCheck::Missing
    );
    let fake = dir.path().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::write(&fake, b"GGUF not really a model").unwrap();
    assert!(matches!(
        check_model_file(&fake).unwrap(),
        ModelFileCheck::Corrupt { .. }
    ));
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, b"hello").unwrap();
    assert_eq!(
        check_model_file(Path::new(&text)).unwrap(),
        ModelFileCheck::NotGguf
    );
}
