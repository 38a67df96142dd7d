//! convagent as an MCP server, driven by the official MCP Python SDK (`mcp`
//! from PyPI): `convagent mcp` on stdio beside a running `serve`, and `/mcp`
//! on `serve` behind its bearer tokens. The channel is a fake Telegram API.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::MockServer;

use crate::Env;
use crate::serve::{Daemon, accepting_telegram, post_update, sent, telegram_update};
use crate::support::{mcp_client_script, mcp_python};

/// The SDK's client running `calls` against `target` (`["stdio", convagent,
/// "mcp"]` or `["http", url, token]`), with the test environment's variables;
/// its JSON lines arrive on the receiver as they come.
struct Client {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Client {
    fn start(env: &Env, calls: &Value, target: &[&str]) -> Client {
        let mut like = env.std_cmd(&[]);
        // The channel as `serve` has it (a stdio server checks where it sends).
        like.env("TELEGRAM_BOT_TOKEN", "42:e2e-token")
            .env("TELEGRAM_WEBHOOK_SECRET", crate::serve::SECRET);
        let mut cmd = std::process::Command::new(mcp_python());
        for (k, v) in like.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(env.home.path())
            .arg(mcp_client_script())
            .arg(target[0])
            .arg(calls.to_string())
            .args(&target[1..])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).unwrap_or(json!({ "raw": line })));
            }
        });
        Client { child, lines }
    }

    fn next(&mut self, what: &str) -> Value {
        match self.lines.recv_timeout(Duration::from_secs(60)) {
            Ok(v) => v,
            Err(_) => {
                let _ = self.child.kill();
                let mut err = String::new();
                use std::io::Read;
                let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
                panic!("no {what} from the MCP client: {err}")
            }
        }
    }

    fn finish(mut self) {
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        use std::io::Read;
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "the MCP client failed: {err}");
    }
}

fn structured(line: &Value) -> &Value {
    let call = &line["call"];
    assert_eq!(call["isError"], false, "the call failed: {call}");
    &call["structuredContent"]
}

fn tool_names(line: &Value) -> Vec<String> {
    let mut names: Vec<String> = line["tools"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outside_agent_answers_telegram_through_convagent_mcp() {
    let telegram = accepting_telegram().await;
    let env = Env::new();
    env.write_config(&format!(
        "{}[agent]\nmode = \"external\"\n",
        crate::BASE_CONFIG
    ));
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let said = crate::support::eventually_blocking(10, || daemon.stderr().contains("external"));
    assert!(said, "{}", daemon.stderr());

    let calls = json!([
        ["tools"],
        ["call", "wait_for_message", { "timeout_secs": 60 }],
        ["call", "send_message", {
            "conversation_id": "$prev:conversation.id",
            "text": "Hello from the outside agent"
        }],
        ["call", "wait_for_message", { "timeout_secs": 1 }],
    ]);
    let bin = assert_cmd::cargo::cargo_bin("convagent");
    let mut client = Client::start(&env, &calls, &["stdio", bin.to_str().unwrap(), "mcp"]);
    let init = client.next("initialize");
    assert_eq!(init["initialized"]["serverInfo"]["name"], "convagent");
    let tools = client.next("tools");
    assert_eq!(
        tool_names(&tools),
        [
            "get_conversation",
            "get_trace",
            "list_conversations",
            "search_messages",
            "send_message",
            "set_mode",
            "wait_for_message"
        ]
    );
    // The client now waits; a person writes on Telegram.
    let url = daemon.url.clone();
    let status = tokio::task::block_in_place(|| {
        post_update(&url, &telegram_update(31, 3100, "Is anyone there?"))
    });
    assert_eq!(status, 200);

    let waited = client.next("the waited message");
    let waited = structured(&waited);
    assert_eq!(waited["message"]["text"], "Is anyone there?");
    assert_eq!(waited["message"]["role"], "user");
    assert_eq!(waited["conversation"]["channel"], "telegram");
    assert_eq!(waited["conversation"]["sender"], "31");
    let message_id = waited["message"]["id"].clone();

    let sent_line = client.next("the send");
    let answer = structured(&sent_line);
    assert_eq!(answer["answered"], json!([message_id]), "{answer}");
    assert!(answer["outbox_id"].is_i64(), "{answer}");
    // Nothing else waits: the message was answered, not handed out again.
    let nothing = client.next("the empty wait");
    assert_eq!(structured(&nothing)["message"], Value::Null);
    tokio::task::block_in_place(|| client.finish());

    // `serve` delivers what the stdio process queued (its outbox looks
    // every second), and its own agent answered nothing.
    let texts = sent_within(&telegram, 1, 10).await;
    assert_eq!(texts, ["Hello from the outside agent"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sent(&telegram, "chat_id").await,
        ["31"],
        "only the outside agent's reply went out"
    );
    stop(daemon);
}

/// The texts sent to Telegram once there are `n` (or after `secs`).
async fn sent_within(telegram: &MockServer, n: usize, secs: u64) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let texts = sent(telegram, "text").await;
        if texts.len() >= n || std::time::Instant::now() > deadline {
            return texts;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stop(mut daemon: Daemon) {
    crate::send_signal(daemon.child.id(), "-TERM");
    let status = daemon.child.wait().unwrap();
    assert!(status.success(), "{status:?}: {}", daemon.stderr());
}

fn token(env: &Env, name: &str) -> String {
    let out = env.cmd(&["mcp", "token", "create", name]).output().unwrap();
    assert!(out.status.success(), "{}", crate::stderr_of(&out));
    let token = crate::stdout_of(&out).trim().to_string();
    assert!(token.starts_with("cvg_") && token.len() == 68, "{token}");
    token
}

fn post_mcp(url: &str, bearer: Option<&str>) -> (u16, String) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{url}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "curl", "version": "1"}}})
            .to_string(),
        );
    if let Some(b) = bearer {
        request = request.bearer_auth(b);
    }
    let response = request.send().unwrap();
    (
        response.status().as_u16(),
        response.text().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_needs_a_token_and_sends_through_the_outbox() {
    let telegram = accepting_telegram().await;
    let env = Env::new();
    let good = token(&env, "ci");
    let revoked = token(&env, "old-laptop");
    let out = env
        .cmd(&["mcp", "token", "revoke", "old-laptop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::stderr_of(&out));
    let listed = env.cmd(&["mcp", "token", "list"]).output().unwrap();
    let listed = crate::stdout_of(&listed);
    assert!(
        listed.contains("ci") && !listed.contains("old-laptop"),
        "{listed}"
    );
    assert!(
        !listed.contains(&good),
        "the list never shows a token: {listed}"
    );

    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let url = daemon.url.clone();
    let refusals = tokio::task::block_in_place(|| {
        [
            post_mcp(&url, None),
            post_mcp(&url, Some("cvg_not-a-token")),
            post_mcp(&url, Some(&revoked)),
        ]
    });
    for (status, body) in &refusals {
        assert_eq!(*status, 401, "{body}");
    }
    assert!(
        refusals[0].1.contains("convagent mcp token create"),
        "{}",
        refusals[0].1
    );
    assert!(refusals[2].1.contains("not known"), "{}", refusals[2].1);

    let calls = json!([
        ["tools"],
        ["call", "send_message", { "channel": "telegram", "recipient": "808", "text": "A note for you" }],
        ["call", "send_message", { "channel": "slack", "recipient": "C1", "text": "x" }],
        ["call", "send_message", { "conversation_id": 424242, "text": "x" }],
        ["call", "list_conversations", { "channel": "telegram" }],
    ]);
    let endpoint = format!("{url}/mcp");
    let mut client = Client::start(&env, &calls, &["http", &endpoint, &good]);
    client.next("initialize");
    assert_eq!(tool_names(&client.next("tools")).len(), 7);
    let sent_line = client.next("the send");
    let sent_view = structured(&sent_line).clone();
    assert!(sent_view["outbox_id"].is_i64(), "{sent_view}");
    let slack = client.next("the send to slack");
    assert_eq!(slack["call"]["isError"], true);
    let why = slack["call"]["content"][0]["text"].as_str().unwrap();
    assert!(why.contains("slack is not configured"), "{why}");
    let missing = client.next("the send to nowhere");
    assert_eq!(missing["call"]["isError"], true);
    assert!(
        missing["call"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("424242 not found"),
        "{missing}"
    );
    let listed = client.next("the list");
    let conversations = &structured(&listed)["conversations"];
    assert_eq!(conversations[0]["sender"], "808");
    tokio::task::block_in_place(|| client.finish());

    // The daemon's own outbox sends it at once, and traces it.
    assert_eq!(sent_within(&telegram, 1, 10).await, ["A note for you"]);
    assert_eq!(sent(&telegram, "chat_id").await, ["808"]);
    let correlation = sent_view["correlation_id"].as_str().unwrap().to_string();
    let conversation_uri = format!("convagent://conversations/{}", sent_view["conversation_id"]);
    let traced = json!([
        ["call", "get_trace", { "correlation_id": correlation }],
        ["resources"],
        ["read", conversation_uri.clone()],
        ["read", "convagent://health"],
        ["read", "convagent://nothing"],
    ]);
    let mut client = Client::start(&env, &traced, &["http", &endpoint, &good]);
    client.next("initialize");
    let trace = client.next("the trace");
    let stages: Vec<String> = structured(&trace)["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s["stage"].as_str().unwrap(),
                s["outcome"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        stages
            .iter()
            .any(|s| s.starts_with("send") && s.ends_with("ok")),
        "{stages:?}"
    );
    // Resources: the health summary and each conversation.
    let resources = client.next("the resources");
    let uris: Vec<&str> = resources["resources"]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    assert_eq!(uris, ["convagent://health", conversation_uri.as_str()]);
    let read = client.next("the conversation resource");
    let text = read["read"]["contents"][0]["text"].as_str().unwrap();
    let resource: Value = serde_json::from_str(text).unwrap();
    assert_eq!(resource["messages"][0]["text"], "A note for you");
    let health = client.next("the health resource");
    let health: Value =
        serde_json::from_str(health["read"]["contents"][0]["text"].as_str().unwrap()).unwrap();
    assert!(health["outbox"]["queued"].is_u64(), "{health}");
    let unknown = client.next("an unknown resource");
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("no resource convagent://nothing"),
        "{unknown}"
    );
    tokio::task::block_in_place(|| client.finish());
    // The token's use was recorded.
    let listed = env
        .cmd(&["mcp", "token", "list", "--json"])
        .output()
        .unwrap();
    let line: Value = serde_json::from_str(crate::stdout_of(&listed).trim()).unwrap();
    assert!(line["last_used_at"].is_i64(), "{line}");
    stop(daemon);
}

/// One JSON-RPC exchange with `/mcp`: (status, the JSON-RPC message of the
/// answer, its session id). Answers come as JSON or as one SSE event.
fn rpc(
    url: &str,
    token: &str,
    origin: Option<&str>,
    session: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let mut request = reqwest::blocking::Client::new()
        .post(format!("{url}/mcp"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string());
    if let Some(o) = origin {
        request = request.header("origin", o);
    }
    if let Some(s) = session {
        // After initialize, every request names the session and version.
        request = request
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let response = request.send().unwrap();
    let status = response.status().as_u16();
    let session = response
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = response.text().unwrap_or_default();
    let message = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .chain(std::iter::once(text.trim()))
        .find_map(|d| {
            serde_json::from_str::<Value>(d)
                .ok()
                .filter(|v| v.is_object())
        })
        .unwrap_or(Value::String(text));
    (status, message, session)
}

fn initialize(version: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {},
        "clientInfo": {"name": "spec-check", "version": "1"}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_over_http_keeps_the_transport_s_musts() {
    let telegram = accepting_telegram().await;
    let env = Env::new();
    env.write_config(&format!(
        "{}[mcp]\nallowed_origins = [\"https://app.example.com\"]\n",
        crate::BASE_CONFIG
    ));
    let good = token(&env, "ci");
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let url = daemon.url.clone();
    tokio::task::block_in_place(|| {
        // A foreign Origin is refused (DNS rebinding), even with a good
        // token; an allowed one, with the default port spelled out, and a
        // request without Origin are served.
        let (status, body, _) = rpc(
            &url,
            &good,
            Some("https://evil.example"),
            None,
            initialize("2025-06-18"),
        );
        assert_eq!(status, 403, "{body}");
        assert!(body.to_string().contains("mcp.allowed_origins"), "{body}");
        for allowed in [
            "https://app.example.com:443",
            "http://localhost:5173",
            "http://[::1]",
        ] {
            let (status, body, _) = rpc(&url, &good, Some(allowed), None, initialize("2025-06-18"));
            assert_eq!(status, 200, "{allowed}: {body}");
        }
        let (status, _, _) = rpc(
            &url,
            &good,
            Some("http://localhost.evil.example"),
            None,
            initialize("2025-06-18"),
        );
        assert_eq!(status, 403);

        // 2025-03-26 requires batches, which are not taken: it is not
        // offered, the server answers with a version it keeps.
        let (status, init, session) = rpc(&url, &good, None, None, initialize("2025-03-26"));
        assert_eq!(status, 200, "{init}");
        let version = init["result"]["protocolVersion"].as_str().unwrap();
        assert_ne!(version, "2025-03-26", "{init}");
        let session = session.expect("a session id");
        let s = Some(session.as_str());
        let (status, _, _) = rpc(
            &url,
            &good,
            None,
            s,
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        );
        assert_eq!(status, 202);

        // Malformed params are invalid params, not an unknown method.
        for (method, id) in [("tools/call", 2), ("resources/read", 3)] {
            let (_, answer, _) = rpc(
                &url,
                &good,
                None,
                s,
                json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}),
            );
            assert_eq!(answer["error"]["code"], -32602, "{method}: {answer}");
        }
        let (_, answer, _) = rpc(
            &url,
            &good,
            None,
            s,
            json!({"jsonrpc": "2.0", "id": 4, "method": "nothing/here", "params": {}}),
        );
        assert_eq!(answer["error"]["code"], -32601, "{answer}");

        // A resource is read back with the MIME type it is listed with.
        let (_, listed, _) = rpc(
            &url,
            &good,
            None,
            s,
            json!({"jsonrpc": "2.0", "id": 5, "method": "resources/list"}),
        );
        let health = listed["result"]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["uri"] == "convagent://health")
            .unwrap()
            .clone();
        let (_, read, _) = rpc(
            &url,
            &good,
            None,
            s,
            json!({"jsonrpc": "2.0", "id": 6, "method": "resources/read",
                   "params": {"uri": "convagent://health"}}),
        );
        assert_eq!(
            read["result"]["contents"][0]["mimeType"], health["mimeType"],
            "{read}"
        );
        assert_eq!(health["mimeType"], "application/json");

        // Ending the session is answered as done.
        let deleted = reqwest::blocking::Client::new()
            .delete(format!("{url}/mcp"))
            .bearer_auth(&good)
            .header("mcp-session-id", &session)
            .header("mcp-protocol-version", version)
            .send()
            .unwrap();
        assert_eq!(deleted.status().as_u16(), 204);
        let (status, _, _) = rpc(
            &url,
            &good,
            None,
            s,
            json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list"}),
        );
        assert_eq!(status, 404, "the session is gone");
    });
}

/// A reverse proxy on loopback that adds `Authorization: Bearer <token>` to
/// every request for `upstream`, streaming answers back (SSE included): the
/// conformance suite's client has no way to send a token of its own.
async fn bearer_proxy(upstream: String, token: String) -> String {
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (client, upstream, token) = (client.clone(), upstream.clone(), token.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut forward = client.request(parts.method, format!("{upstream}{target}"));
            for (name, value) in &parts.headers {
                if name != axum::http::header::HOST {
                    forward = forward.header(name, value);
                }
            }
            let answer = forward.bearer_auth(&token).body(body).send().await.unwrap();
            let mut response = axum::http::Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                response = response.header(name, value);
            }
            response
                .body(axum::body::Body::from_stream(answer.bytes_stream()))
                .unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// The server scenarios of the official suite that apply to convagent:
/// the lifecycle, ping, listing its tools and resources, and the
/// Streamable HTTP transport's own. The others exercise fixture tools,
/// prompts and capabilities a test server of the suite's own offers
/// (`test_simple_text`, sampling, elicitation, prompts, completion,
/// logging, subscriptions), which convagent has no reason to have.
const CONFORMANCE_SCENARIOS: &[&str] = &[
    "server-initialize",
    "ping",
    "tools-list",
    "resources-list",
    "dns-rebinding-protection",
    "server-sse-polling",
    "server-sse-multiple-streams",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_conformance_suite_passes_the_scenarios_that_apply() {
    let (node, suite) = crate::support::mcp_conformance();
    let telegram = accepting_telegram().await;
    let env = Env::new();
    let good = token(&env, "conformance");
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let proxy = bearer_proxy(daemon.url.clone(), good).await;
    let mut failed = Vec::new();
    for scenario in CONFORMANCE_SCENARIOS {
        let out = tokio::process::Command::new(&node)
            .arg(&suite)
            .args([
                "server",
                "--url",
                &format!("{proxy}/mcp"),
                "--scenario",
                scenario,
            ])
            .current_dir(env.home.path())
            .output()
            .await
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            failed.push(format!("{scenario}:\n{said}"));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn mcp_on_stdio_offers_no_batch_version_and_says_invalid_params() {
    let env = Env::new();
    let lines = [
        initialize("2025-03-26"),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {}}),
        json!({"jsonrpc": "2.0", "id": 3, "method": "resources/read", "params": {}}),
    ]
    .map(|l| l.to_string() + "\n")
    .concat();
    let out = env
        .cmd(&["mcp"])
        .write_stdin(lines)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let answers: Vec<Value> = crate::stdout_of(&out)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let by_id = |id: i64| {
        answers
            .iter()
            .find(|a| a["id"] == id)
            .unwrap_or_else(|| panic!("no answer {id}: {answers:?} {}", crate::stderr_of(&out)))
    };
    let version = by_id(1)["result"]["protocolVersion"].as_str().unwrap();
    assert_ne!(version, "2025-03-26");
    assert_eq!(by_id(2)["error"]["code"], -32602, "{answers:?}");
    assert_eq!(by_id(3)["error"]["code"], -32602, "{answers:?}");
}

/// With `mcp.send_takes_over`, an MCP client is an operator's inbox: its
/// `send_message` takes the conversation over (the agent is silent there)
/// and `set_mode` gives it back; `list_conversations` says who answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_send_takes_the_conversation_over_and_set_mode_gives_it_back() {
    let telegram = accepting_telegram().await;
    let (env, _ollama) = crate::serve::echoing().await;
    env.write_config(&format!(
        "{}[mcp]\nsend_takes_over = true\n",
        crate::BASE_CONFIG
    ));
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let post = |n: i64, text: &str| {
        let url = daemon.url.clone();
        let update = telegram_update(41, n, text);
        tokio::task::block_in_place(move || post_update(&url, &update))
    };
    assert_eq!(post(1, "hi"), 200);
    assert_eq!(sent_within(&telegram, 1, 10).await, ["re: hi"]);

    let bin = assert_cmd::cargo::cargo_bin("convagent");
    let stdio = ["stdio", bin.to_str().unwrap(), "mcp"];
    let calls = json!([
        ["call", "send_message", { "conversation_id": 1, "text": "Ana from support here." }],
        ["call", "list_conversations", {}],
    ]);
    let mut client = Client::start(&env, &calls, &stdio);
    client.next("initialize");
    client.next("the send");
    let listed = client.next("the list");
    let conversation = &structured(&listed)["conversations"][0];
    assert_eq!(conversation["mode"], "human", "{conversation}");
    tokio::task::block_in_place(|| client.finish());
    assert_eq!(
        sent_within(&telegram, 2, 10).await,
        ["re: hi", "Ana from support here."]
    );

    assert_eq!(post(2, "thank you!"), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        sent(&telegram, "text").await.len(),
        2,
        "the agent is silent"
    );

    let calls = json!([["call", "set_mode", { "conversation_id": 1, "mode": "agent" }]]);
    let mut client = Client::start(&env, &calls, &stdio);
    client.next("initialize");
    let set = client.next("set_mode");
    assert_eq!(structured(&set)["mode"], "agent");
    tokio::task::block_in_place(|| client.finish());
    assert_eq!(post(3, "one more question"), 200);
    let texts = sent_within(&telegram, 3, 10).await;
    assert!(
        texts.len() >= 3 && texts[2..].iter().all(|t| t.starts_with("re: ")),
        "the agent answers again, what waited too: {texts:?}"
    );
    stop(daemon);
}

/// Which clients are operators' is a property of their token: over `/mcp`,
/// a send with an `--operator` token takes the conversation over, and one
/// with an ordinary token does not (`send_takes_over` is off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_token_takes_over_and_an_ordinary_one_does_not() {
    let telegram = accepting_telegram().await;
    let env = Env::new();
    let ordinary = token(&env, "reports");
    let out = env
        .cmd(&["mcp", "token", "create", "ana-desk", "--operator"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::stderr_of(&out));
    let operator = crate::stdout_of(&out).trim().to_string();
    let listed = crate::stdout_of(&env.cmd(&["mcp", "token", "list"]).output().unwrap());
    let yes = listed.lines().find(|l| l.starts_with("ana-desk")).unwrap();
    assert!(yes.contains(" yes "), "{listed}");

    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let endpoint = format!("{}/mcp", daemon.url);
    let send = |bearer: &str, conversation: Option<i64>| {
        let to = match conversation {
            Some(id) => json!({ "conversation_id": id, "text": "hello" }),
            None => json!({ "channel": "telegram", "recipient": "909", "text": "hello" }),
        };
        let calls = json!([
            ["call", "send_message", to],
            ["call", "list_conversations", {}]
        ]);
        let mut client = Client::start(&env, &calls, &["http", &endpoint, bearer]);
        client.next("initialize");
        client.next("the send");
        let listed = client.next("the list");
        tokio::task::block_in_place(|| client.finish());
        structured(&listed)["conversations"][0]["mode"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mode = tokio::task::block_in_place(|| send(&ordinary, None));
    assert_eq!(mode, "agent", "an ordinary client's send");
    let mode = tokio::task::block_in_place(|| send(&operator, Some(1)));
    assert_eq!(mode, "human", "an operator's send");
    assert_eq!(sent_within(&telegram, 2, 10).await, ["hello", "hello"]);
    stop(daemon);
}
