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
                context_size: 2048,
                temperature: 0.0,
                seed: 1,
                ..EmbeddedSettings::for_model(model_path())
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
        tools: Vec::new(),
        exchanges: Vec::new(),
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
        threads: 1,
        context_size: 512,
        temperature: 0.0,
        ..EmbeddedSettings::for_model("/nonexistent/model.gguf".into())
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

fn conversation(system: &str, turns: &[(&str, &str)], next: &str, max_tokens: u32) -> LlmRequest {
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    for (user, assistant) in turns {
        messages.push(ChatMessage::new(Role::User, *user));
        messages.push(ChatMessage::new(Role::Assistant, *assistant));
    }
    messages.push(ChatMessage::new(Role::User, next));
    LlmRequest {
        messages,
        max_tokens,
        tools: Vec::new(),
        exchanges: Vec::new(),
    }
}

fn own_model(cached_conversations: u32) -> Embedded {
    Embedded::new(EmbeddedSettings {
        context_size: 2048,
        temperature: 0.0,
        seed: 1,
        cached_conversations,
        ..EmbeddedSettings::for_model(model_path())
    })
}

/// A conversation's next turn is evaluated from where it differs from what
/// the cache holds (its system prompt and earlier turns are not read again),
/// and gives the reply a fresh evaluation gives; a second conversation in
/// between does not push the first out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_turn_reads_only_what_is_new() {
    let m = own_model(2);
    let a1 = conversation("You are assistant A.", &[], "Name a fruit.", 16);
    let first = m.generate(&a1, &mut |_| {}).await.unwrap();
    let after_first = m.stats();
    assert_eq!(after_first.cached_tokens, 0, "a fresh conversation");

    let a2 = conversation(
        "You are assistant A.",
        &[("Name a fruit.", &first.text)],
        "And a vegetable?",
        16,
    );
    let second = m.generate(&a2, &mut |_| {}).await.unwrap();
    let reused = m.stats().cached_tokens - after_first.cached_tokens;
    let first_prompt = u64::from(first.prompt_tokens.unwrap());
    assert!(
        reused >= first_prompt,
        "turn 2 reused {reused} tokens; turn 1's prompt alone was {first_prompt}"
    );
    let fresh = own_model(1).generate(&a2, &mut |_| {}).await.unwrap();
    assert_eq!(
        second.text, fresh.text,
        "the cache changes nothing in the reply"
    );

    // Another conversation, then A again: A's turns are still cached.
    m.generate(
        &conversation("You are assistant B.", &[], "Name a colour.", 8),
        &mut |_| {},
    )
    .await
    .unwrap();
    let before = m.stats().cached_tokens;
    let a3 = conversation(
        "You are assistant A.",
        &[
            ("Name a fruit.", &first.text),
            ("And a vegetable?", &second.text),
        ],
        "Thanks!",
        8,
    );
    m.generate(&a3, &mut |_| {}).await.unwrap();
    let reused = m.stats().cached_tokens - before;
    let second_prompt = u64::from(second.prompt_tokens.unwrap());
    assert!(
        reused >= second_prompt,
        "turn 3 reused {reused}; turn 2's prompt was {second_prompt}"
    );
}

/// A reply cut by its token budget costs one decode for the prompt and one
/// per token after the first (the last token is never decoded), and a
/// caller that gives up stops the generation at its next token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_decode_is_wasted_and_a_caller_that_leaves_stops_generation() {
    let m = Arc::new(own_model(2));
    let story = |n| question("Write a long story about a dragon who learns to sing.", n);
    let before = m.stats();
    let out = m.generate(&story(40), &mut |_| {}).await.unwrap();
    assert_eq!(
        out.completion_tokens,
        Some(40),
        "the story is longer than 40 tokens"
    );
    let after = m.stats();
    assert_eq!(after.decodes - before.decodes, 40, "1 for the prompt + 39");

    // Asked for 1,500 tokens, the caller leaves after the first piece.
    let (first, got_first) = tokio::sync::oneshot::channel::<()>();
    let leaving = m.clone();
    let call = tokio::spawn(async move {
        let mut first = Some(first);
        let _ = leaving
            .generate(&story(1_500), &mut |_| {
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
            })
            .await;
    });
    got_first.await.unwrap();
    call.abort();
    // Jobs run one at a time: once this one is answered, the other ended.
    m.generate(&question("Hi", 2), &mut |_| {}).await.unwrap();
    let spent = m.stats().completion_tokens - after.completion_tokens;
    assert!(
        spent < 200,
        "{spent} tokens generated for a caller that left after the first"
    );
}
