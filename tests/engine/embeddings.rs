//! The HTTP embedders against local fakes speaking the documented wire
//! formats: Ollama's `POST /api/embed` (`{"model", "input"}` answered
//! `{"embeddings"}`) and OpenAI's `POST /v1/embeddings` (answered
//! `{"data": [{"index", "embedding"}]}`), batches, errors and the key kept
//! out of them; and the local model's vectors.

use convagent::adapters::embeddings::{self, LocalEmbedder};
use convagent::config::LlmConfig;
use convagent::core::embeddings::{EmbedProvider, Embedder, EmbeddingsConfig, cosine};
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

fn embedder(
    provider: EmbedProvider,
    model: &str,
    server: &MockServer,
) -> std::sync::Arc<dyn Embedder> {
    let mut llm = LlmConfig::default();
    llm.ollama.host = server.uri();
    llm.openai.base_url = format!("{}/v1", server.uri());
    llm.openai.api_key = Some("sk-test-secret".into());
    let config = EmbeddingsConfig {
        provider,
        model: Some(model.into()),
    };
    embeddings::from_config(&config, &llm, std::path::Path::new("/nonexistent"))
        .unwrap()
        .unwrap()
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("text {i}")).collect()
}

#[tokio::test]
async fn ollama_embeds_in_batches_in_order() {
    let server = MockServer::start().await;
    // Each text's vector says which it was: [i, 1].
    Mock::given(method("POST"))
        .and(path("/api/embed"))
        .and(body_partial_json(json!({ "model": "nomic-embed-text" })))
        .respond_with(|r: &Request| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            let vectors: Vec<Vec<f32>> = body["input"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    let i: f32 = t.as_str().unwrap()[5..].parse().unwrap();
                    vec![i, 1.0]
                })
                .collect();
            ResponseTemplate::new(200)
                .set_body_json(json!({ "model": "nomic-embed-text", "embeddings": vectors }))
        })
        .expect(3)
        .mount(&server)
        .await;
    let e = embedder(EmbedProvider::Ollama, "nomic-embed-text", &server);
    assert_eq!(e.name(), "ollama:nomic-embed-text");
    let vectors = e.embed(&texts(70)).await.unwrap();
    assert_eq!(vectors.len(), 70);
    for (i, v) in vectors.iter().enumerate() {
        assert_eq!(v, &[i as f32, 1.0]);
    }
    let sizes: Vec<usize> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["input"]
                .as_array()
                .unwrap()
                .len()
        })
        .collect();
    assert_eq!(sizes, [32, 32, 6], "batches of 32");
}

#[tokio::test]
async fn openai_answers_are_put_back_in_order_and_errors_name_no_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .and(header("authorization", "Bearer sk-test-secret"))
        .and(body_partial_json(
            json!({ "model": "text-embedding-3-small", "input": ["a", "b"] }),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "object": "list",
            "data": [
                { "object": "embedding", "index": 1, "embedding": [0.0, 2.0] },
                { "object": "embedding", "index": 0, "embedding": [1.0, 0.0] }
            ],
            "model": "text-embedding-3-small",
            "usage": { "prompt_tokens": 2, "total_tokens": 2 }
        })))
        .mount(&server)
        .await;
    let e = embedder(EmbedProvider::Openai, "text-embedding-3-small", &server);
    let vectors = e.embed(&["a".into(), "b".into()]).await.unwrap();
    assert_eq!(vectors, [vec![1.0, 0.0], vec![0.0, 2.0]], "by index");

    let failing = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/embeddings"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": { "message": "Incorrect API key provided", "type": "invalid_request_error" }
        })))
        .mount(&failing)
        .await;
    let e = embedder(EmbedProvider::Openai, "text-embedding-3-small", &failing);
    let why = e.embed(&["a".into()]).await.unwrap_err();
    assert!(
        why.contains("HTTP 401: Incorrect API key provided"),
        "{why}"
    );
    assert!(!why.contains("sk-test-secret"), "{why}");

    // Fewer vectors than texts is an error, not a misaligned index.
    let short = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/embed"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "embeddings": [[1.0]] })))
        .mount(&short)
        .await;
    let e = embedder(EmbedProvider::Ollama, "m", &short);
    let why = e.embed(&["a".into(), "b".into()]).await.unwrap_err();
    assert!(why.contains("1 vectors for 2 texts"), "{why}");
}

#[test]
fn a_missing_local_model_says_how_to_get_one() {
    let config = EmbeddingsConfig {
        provider: EmbedProvider::Local,
        model: Some("/nonexistent/model".into()),
    };
    let why = embeddings::from_config(&config, &LlmConfig::default(), std::path::Path::new("/x"))
        .err()
        .unwrap();
    assert!(why.contains("install.sh"), "{why}");
    let off = EmbeddingsConfig::default();
    assert!(
        embeddings::from_config(&off, &LlmConfig::default(), std::path::Path::new("/x"))
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_model_puts_paraphrases_near() {
    let e = LocalEmbedder::open(&crate::support::embedding_model()).unwrap();
    assert_eq!(e.name(), "local:all-MiniLM-L6-v2");
    let texts: Vec<String> = [
        "How do I copy a live database?",
        "The online backup API copies a database while it is in use.",
        "Foreign key constraints are off unless enabled.",
        // Padding: the short one is embedded beside a long one.
        "hi",
    ]
    .map(String::from)
    .to_vec();
    let v = e.embed(&texts).await.unwrap();
    assert_eq!(v.len(), 4);
    assert!(v.iter().all(|v| v.len() == 384), "MiniLM's 384 numbers");
    let norm: f32 = v[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "normalised: {norm}");
    let (near, far) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(near > far + 0.1, "paraphrase {near} vs unrelated {far}");
    // A text embedded alone gets the vector it got in a padded batch.
    let alone = e.embed(&texts[3..]).await.unwrap();
    assert!(
        cosine(&alone[0], &v[3]) > 0.999,
        "padding left out of the mean"
    );
}
