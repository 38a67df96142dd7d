//! `convagent knowledge` and what `chat` makes of it: documents indexed
//! from disk (HTML here, SQLite's public-domain pages), listed, searched at
//! each turn and given to the model with their source, shown by
//! `/sources`, and removed.

use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::ollama_answer;
use crate::{Env, stderr_of, stdout_of};

fn docs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/knowledge/sqlite-docs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_indexed_retrieved_with_their_source_and_removed() {
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(ollama_answer("At a checkpoint the WAL is copied back [1].")),
        )
        .mount(&ollama)
        .await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let run = |args: &[&str]| tokio::task::block_in_place(|| env.cmd(args).output().unwrap());

    let wal = docs().join("wal.html");
    let limits = docs().join("limits.html");
    let out = run(&[
        "knowledge",
        "add",
        wal.to_str().unwrap(),
        limits.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("2 added"), "{}", stdout_of(&out));
    let out = run(&["knowledge", "add", wal.to_str().unwrap()]);
    assert!(
        stdout_of(&out).contains("0 added, 0 indexed again, 2 unchanged"),
        "{}",
        stdout_of(&out)
    );
    let listed = stdout_of(&run(&["knowledge", "list"]));
    assert!(
        listed.contains("wal.html") && listed.contains("limits.html"),
        "{listed}"
    );

    let out = tokio::task::block_in_place(|| {
        env.cmd(&["chat", "--json", "--chain", "ollama"])
            .write_stdin("What happens to the WAL file at a checkpoint?\n/sources\n")
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = stdout_of(&out);
    let reply: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let first = &reply["sources"][0];
    assert_eq!(first["source"]["kind"], "document");
    assert!(
        first["source"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/wal.html"),
        "{reply}"
    );
    assert!(stdout.contains("[1] wal.html#"), "/sources: {stdout}");

    // The model was given the passage, numbered, with its source.
    let request: Value =
        serde_json::from_slice(&ollama.received_requests().await.unwrap()[0].body).unwrap();
    let given = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| {
            m["role"] == "system" && m["content"].as_str().unwrap().starts_with("What you know")
        })
        .unwrap_or_else(|| panic!("{request}"))["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(given.contains("[1] (wal.html#"), "{given}");
    assert!(given.to_lowercase().contains("checkpoint"), "{given}");

    // Removed: no longer listed, no longer given.
    let out = run(&["knowledge", "remove", wal.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(!stdout_of(&run(&["knowledge", "list"])).contains("wal.html"));
    let out = run(&["knowledge", "remove", wal.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("is not indexed"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&["knowledge", "add", "/nonexistent/kb"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("does not exist"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&["knowledge", "reindex"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("1 indexed again"),
        "{}",
        stdout_of(&out)
    );
}

/// With `[knowledge.embeddings]` (the local model), a question that shares
/// no word with the document that answers it still finds it: its vector is
/// near. `knowledge list` names the embedder; a misconfigured embedder is a
/// clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_find_what_shares_no_word_with_the_question() {
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_string(ollama_answer("From nine in the morning [1].")),
        )
        .mount(&ollama)
        .await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let kb = env.path("kb");
    std::fs::create_dir_all(&kb).unwrap();
    std::fs::write(
        kb.join("hours.md"),
        "# Opening times\n\nThe shop welcomes visitors from nine in the morning until six in \
         the evening, every weekday.",
    )
    .unwrap();
    std::fs::write(
        kb.join("returns.md"),
        "# Returns\n\nAn unworn item may be sent back within thirty days for a full refund.",
    )
    .unwrap();
    let model = crate::support::embedding_model();
    env.write_config(&format!(
        "{}\n[knowledge]\npaths = [{:?}]\n\n[knowledge.embeddings]\nprovider = \"local\"\n\
         model = {:?}\n",
        crate::BASE_CONFIG,
        kb.display().to_string(),
        model.display().to_string()
    ));
    let run = |args: &[&str]| tokio::task::block_in_place(|| env.cmd(args).output().unwrap());
    let out = run(&["knowledge", "reindex"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("2 added"), "{}", stdout_of(&out));
    let listed = stdout_of(&run(&["knowledge", "list"]));
    assert!(listed.contains("VECTORS"), "{listed}");
    assert_eq!(
        listed.matches("local:all-MiniLM-L6-v2").count(),
        2,
        "{listed}"
    );

    let out = tokio::task::block_in_place(|| {
        env.cmd(&["chat", "--json", "--chain", "ollama"])
            .write_stdin("What time do you open?\n/sources\n")
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stdout = stdout_of(&out);
    let reply: Value = serde_json::from_str(stdout.lines().next().unwrap()).unwrap();
    let first = &reply["sources"][0];
    assert!(
        first["source"]["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("/hours.md")),
        "the opening times first: {reply}"
    );
    assert!(stdout.contains("[1] hours.md#1"), "/sources: {stdout}");

    // An Ollama embedder without a model is refused with the fix.
    env.write_config(&format!(
        "{}\n[knowledge.embeddings]\nprovider = \"ollama\"\n",
        crate::BASE_CONFIG
    ));
    let out = run(&["knowledge", "reindex"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("[knowledge.embeddings] model"),
        "{}",
        stderr_of(&out)
    );
}
