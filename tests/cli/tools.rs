//! The agent calling tools of real MCP servers (`[[mcp.servers]]`): the
//! reference time server (`mcp-server-time` from PyPI) and a server of the
//! official SDK that hangs. Ollama is a fake speaking its documented tool
//! calling: a `tool_calls` message first, the final text once the request
//! carries the tool's result.

use convagent::adapters::store::{OpenMode, SqliteStore};
use convagent::core::ports::all::*;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::support::{mcp_python, ollama_answer};
use crate::{Env, stderr_of, stdout_of};

/// Asks for `tool` with `arguments` until the request carries a `tool`
/// message, then answers with what that message said.
struct ToolCallingOllama {
    tool: &'static str,
    arguments: Value,
}

impl wiremock::Respond for ToolCallingOllama {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        let messages = body["messages"].as_array().unwrap();
        let answer = match messages.iter().find(|m| m["role"] == "tool") {
            Some(result) => ollama_answer(&format!(
                "Tool said: {}",
                result["content"].as_str().unwrap()
            )),
            None => format!(
                "{}\n",
                json!({
                    "model": "mistral:7b",
                    "message": { "role": "assistant", "content": "", "tool_calls": [
                        { "function": { "name": self.tool, "arguments": self.arguments } }
                    ]},
                    "done": true, "done_reason": "stop", "eval_count": 9
                })
            ),
        };
        ResponseTemplate::new(200).set_body_string(answer)
    }
}

pub(crate) async fn ollama(tool: &'static str, arguments: Value) -> MockServer {
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(ToolCallingOllama { tool, arguments })
        .mount(&ollama)
        .await;
    ollama
}

pub(crate) fn server(name: &str, args: &[&str], tools: &[&str], timeout_secs: u64) -> String {
    format!(
        "{}[llm]\nchain = [\"ollama\"]\n[mcp]\ncall_timeout_secs = {timeout_secs}\n\
         [[mcp.servers]]\nname = \"{name}\"\ncommand = {:?}\nargs = {}\ntools = {}\n",
        crate::BASE_CONFIG,
        mcp_python().display().to_string(),
        json!(args),
        json!(tools),
    )
}

/// The traces of a turn, `stage outcome detail` each.
fn stages(env: &Env, correlation: &str) -> Vec<String> {
    let store = SqliteStore::open_with(&env.store(), OpenMode::ReadOnly).unwrap();
    store
        .trace(correlation)
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e.stage,
                e.outcome,
                e.detail.clone().unwrap_or_default()
            )
        })
        .collect()
}

fn chat(env: &Env, line: &str) -> (Value, String) {
    let out = env
        .cmd(&["chat", "--json"])
        .write_stdin(format!("{line}\n"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let reply = serde_json::from_str(stdout_of(&out).lines().last().unwrap()).unwrap();
    (reply, stderr_of(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_calls_the_time_server_and_answers_with_its_result() {
    let ollama = ollama("get_current_time", json!({ "timezone": "UTC" })).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    env.write_config(&server(
        "time",
        &["-m", "mcp_server_time", "--local-timezone", "UTC"],
        &["get_current_time"],
        15,
    ));
    let (reply, stderr) = tokio::task::block_in_place(|| chat(&env, "What time is it?"));
    assert!(stderr.contains("MCP server time: 1 tool(s)"), "{stderr}");

    // The tool really ran: the reply carries the server's answer, today's date.
    let text = reply["reply"].as_str().unwrap();
    let today = convagent_today();
    assert!(text.starts_with("Tool said: "), "{text}");
    assert!(
        text.contains("\"timezone\"") && text.contains(&today),
        "{text} ({today})"
    );

    // The model was offered only the allowed tool, then given its result.
    let requests = ollama.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let first: Value = serde_json::from_slice(&requests[0].body).unwrap();
    let offered: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, ["get_current_time"], "convert_time is not allowed");
    let second: Value = serde_json::from_slice(&requests[1].body).unwrap();
    let messages = second["messages"].as_array().unwrap();
    let n = messages.len();
    assert_eq!(
        messages[n - 2]["tool_calls"][0]["function"]["name"],
        "get_current_time"
    );
    assert_eq!(messages[n - 1]["role"], "tool");
    assert_eq!(messages[n - 1]["tool_name"], "get_current_time");

    // The trace shows the call, its arguments and its result.
    let correlation = reply["correlation_id"].as_str().unwrap();
    let traced = stages(&env, correlation);
    let call = traced
        .iter()
        .find(|s| s.starts_with("tool call ok"))
        .unwrap_or_else(|| panic!("{traced:?}"));
    assert!(
        call.contains("get_current_time {\"timezone\":\"UTC\"}"),
        "{call}"
    );
    assert!(call.contains(&today), "{call}");
}

/// Today's date in UTC, as the time server writes it (`2026-11-22`).
fn convagent_today() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tool_server_costs_the_call_not_the_message() {
    let ollama = ollama("lookup_order", json!({ "order_id": "A-17" })).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let script = env!("CARGO_MANIFEST_DIR").to_string() + "/tests/support/mcp_slow_server.py";
    env.write_config(&server("orders", &[&script], &[], 1));
    let began = std::time::Instant::now();
    let (reply, _) = tokio::task::block_in_place(|| chat(&env, "Where is my order A-17?"));
    assert!(
        began.elapsed().as_secs() < 30,
        "the turn waited for the hung tool"
    );
    let text = reply["reply"].as_str().unwrap();
    assert!(
        text.contains("did not answer within 1s"),
        "the model was told: {text}"
    );
    assert_eq!(reply["kind"], "answer", "{reply}");
    let traced = stages(&env, reply["correlation_id"].as_str().unwrap());
    assert!(
        traced
            .iter()
            .any(|s| s.starts_with("tool call failed lookup_order")
                && s.contains("did not answer within 1s")),
        "{traced:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_does_not_start_is_left_out_and_the_agent_answers() {
    let ollama = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/chat"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(ollama_answer("Hello without tools.")),
        )
        .mount(&ollama)
        .await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    env.write_config(&format!(
        "{}[llm]\nchain = [\"ollama\"]\n[[mcp.servers]]\nname = \"ghost\"\ncommand = \"/nonexistent/mcp-server\"\n",
        crate::BASE_CONFIG
    ));
    let (reply, stderr) = tokio::task::block_in_place(|| chat(&env, "Hi"));
    assert!(
        stderr.contains("MCP server ghost left out: cannot start"),
        "{stderr}"
    );
    assert_eq!(reply["reply"], "Hello without tools.");
    let requests = ollama.received_requests().await.unwrap();
    let body: Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert!(body.get("tools").is_none(), "no tools offered: {body}");
}

/// A tool server over Streamable HTTP with a bearer token: convagent's own
/// `/mcp` on a running `serve` (a real MCP server of the official Rust SDK).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_calls_tools_over_streamable_http_with_its_token() {
    let ollama = ollama("list_conversations", json!({ "limit": 5 })).await;
    let telegram = crate::serve::accepting_telegram().await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let out = env
        .cmd(&["mcp", "token", "create", "agent"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let token = stdout_of(&out).trim().to_string();
    let daemon =
        tokio::task::block_in_place(|| crate::serve::Daemon::start(&env, &telegram.uri(), &[]));
    let config = |token: &str| {
        format!(
            "{}[llm]\nchain = [\"ollama\"]\n[[mcp.servers]]\nname = \"relay\"\n\
             url = \"{}/mcp\"\ntoken = \"{token}\"\ntools = [\"list_conversations\"]\n",
            crate::BASE_CONFIG,
            daemon.url
        )
    };
    env.write_config(&config(&token));
    let (reply, stderr) = tokio::task::block_in_place(|| chat(&env, "Who wrote lately?"));
    assert!(stderr.contains("MCP server relay: 1 tool(s)"), "{stderr}");
    let text = reply["reply"].as_str().unwrap();
    // The tool saw this very chat's conversation in the shared store.
    assert!(
        text.starts_with("Tool said: ") && text.contains("\"channel\":\"cli\""),
        "{text}"
    );
    assert!(
        !stderr.contains(&token) && !text.contains(&token),
        "the token stays secret"
    );

    // A wrong token: the server is left out, with the reason, and the agent
    // still answers.
    env.write_config(&config("cvg_wrong"));
    let (reply, stderr) = tokio::task::block_in_place(|| chat(&env, "And now?"));
    assert!(stderr.contains("MCP server relay left out"), "{stderr}");
    assert!(stderr.contains("refused the token (HTTP 401)"), "{stderr}");
    assert!(reply["reply"].as_str().is_some(), "{reply}");
    crate::send_signal(daemon.child.id(), "-TERM");
    let mut daemon = daemon;
    assert!(daemon.child.wait().unwrap().success());
}

/// `chat` with the probe server, a secret exported to convagent as it would
/// be to `serve`, and the model asking for `tool` with `arguments`.
async fn probe(env: &mut Env, tool: &'static str, arguments: Value, sandbox: &str) -> Value {
    let ollama = ollama(tool, arguments).await;
    env.ollama = ollama.uri();
    let script = env!("CARGO_MANIFEST_DIR").to_string() + "/tests/support/mcp_probe_server.py";
    env.write_config(&format!(
        "{}[mcp.sandbox]\n{sandbox}\n",
        server("probe", &[&script], &[], 15)
    ));
    let out = tokio::task::block_in_place(|| {
        env.cmd(&["chat", "--json"])
            .env("TELEGRAM_BOT_TOKEN", SECRET)
            .env("CONVAGENT_TEST_NOT_PASSED", "kept-out")
            .write_stdin("probe\n")
            .output()
            .unwrap()
    });
    assert!(out.status.success(), "{}", stderr_of(&out));
    serde_json::from_str(stdout_of(&out).lines().last().unwrap()).unwrap()
}

const SECRET: &str = "987654:SECRET-bot-token-of-the-daemon";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_server_sees_no_secret_and_cannot_read_the_store() {
    let mut env = Env::new();
    let reply = probe(&mut env, "environment", json!({}), "").await;
    assert_eq!(reply["kind"], "answer", "{reply}");
    let text = reply["reply"].as_str().unwrap();
    // Only what the sandbox passes on (the locale ones where the test's
    // environment has them), whatever else convagent's environment holds.
    let names: Vec<&str> = text
        .split("names: ")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"))
        .split_whitespace()
        .collect();
    for required in ["HOME", "PATH", "TMPDIR"] {
        assert!(names.contains(&required), "{names:?}");
    }
    let allowed = ["HOME", "PATH", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "TZ"];
    assert!(names.iter().all(|n| allowed.contains(n)), "{names:?}");

    // What the server really got, as it wrote it in its own directory.
    let dir = env.home.path().join("state/convagent/tools/probe");
    let seen: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(dir.join("seen_env.json")).unwrap()).unwrap();
    assert!(!seen.contains_key("TELEGRAM_BOT_TOKEN"), "{seen:?}");
    assert!(!seen.contains_key("CONVAGENT_TEST_NOT_PASSED"), "{seen:?}");
    assert!(seen.values().all(|v| !v.contains(SECRET)), "{seen:?}");
    assert_eq!(seen["HOME"], dir.display().to_string());

    // The store is out of its reach; its own directory is not.
    let store = env.store();
    assert!(store.exists());
    let reply = probe(
        &mut env,
        "read_file",
        json!({ "path": store.display().to_string() }),
        "",
    )
    .await;
    let text = reply["reply"].as_str().unwrap();
    assert!(text.contains("refused: Permission denied"), "{text}");
    let reply = probe(
        &mut env,
        "read_file",
        json!({ "path": dir.join("seen_env.json").display().to_string() }),
        "",
    )
    .await;
    let text = reply["reply"].as_str().unwrap();
    assert!(text.contains("Tool said: read "), "{text}");

    // Without Landlock the same read goes through: the refusal above is the
    // sandbox's, not the file's.
    let reply = probe(
        &mut env,
        "read_file",
        json!({ "path": store.display().to_string() }),
        "landlock = false",
    )
    .await;
    let text = reply["reply"].as_str().unwrap();
    assert!(text.contains("Tool said: read "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_server_that_allocates_without_end_is_stopped_and_the_turn_answered() {
    let mut env = Env::new();
    let limits = "memory_mb = 256\ncpu_secs = 120\nopen_files = 64\nprocesses = 100";
    let reply = probe(&mut env, "limits", json!({}), limits).await;
    let text = reply["reply"].as_str().unwrap();
    let mib = 1024 * 1024;
    assert!(
        text.contains(&format!(
            "CPU=120/120 DATA={}/{} NOFILE=64/64 NPROC=100/100",
            256 * mib,
            256 * mib
        )),
        "{text}"
    );

    let reply = probe(&mut env, "hog", json!({}), limits).await;
    assert_eq!(reply["kind"], "answer", "{reply}");
    let traced = stages(&env, reply["correlation_id"].as_str().unwrap());
    assert!(
        traced.iter().any(
            |s| s.starts_with("tool call failed hog") && s.contains("Error executing tool hog")
        ),
        "{traced:?}"
    );
}

/// A call of a tool marked `approve` waits for an operator; the daemon is
/// killed (SIGKILL) while it waits and started again; the wait is kept, and
/// `convagent approvals approve` after the restart lets the call run, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_survives_a_kill_and_the_approved_call_runs_once() {
    use crate::serve::{Daemon, accepting_telegram, post_update, sent, telegram_update};
    let telegram = accepting_telegram().await;
    let ollama = ollama("book_table", json!({ "people": 4 })).await;
    let mut env = Env::new();
    env.ollama = ollama.uri();
    let script = env!("CARGO_MANIFEST_DIR").to_string() + "/tests/support/mcp_probe_server.py";
    env.write_config(&format!(
        "{}approve = [\"book_table\"]\n",
        server("probe", &[&script], &["book_table"], 15)
    ));
    let run = |args: &[&str]| tokio::task::block_in_place(|| env.cmd(args).output().unwrap());
    let waiting = || {
        let out = run(&["approvals", "list", "--json"]);
        assert!(out.status.success(), "{}", stderr_of(&out));
        stdout_of(&out)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };

    let mut daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let url = daemon.url.clone();
    let update = telegram_update(55, 1, "a table for four tonight, please");
    assert_eq!(
        tokio::task::block_in_place(|| post_update(&url, &update)),
        200
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while waiting().is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.stderr());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let asked = waiting().remove(0);
    assert_eq!(asked["tool"], "book_table");
    assert_eq!(asked["arguments"], r#"{"people":4}"#);
    assert_eq!(asked["state"], "pending");
    let listed = stdout_of(&run(&["approvals", "list"]));
    assert!(listed.contains("book_table {\"people\":4}"), "{listed}");

    // Killed while it waits; started again, it waits on the same approval.
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let still = waiting();
    assert_eq!(still.len(), 1, "one approval, not a second ask");
    assert_eq!(still[0]["id"], asked["id"]);
    assert!(
        sent(&telegram, "text").await.is_empty(),
        "nothing answered yet"
    );

    let id = asked["id"].to_string();
    let out = run(&["approvals", "approve", &id, "--as", "ana"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("approved by ana"),
        "{}",
        stdout_of(&out)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let texts = loop {
        let texts = sent(&telegram, "text").await;
        if !texts.is_empty() || std::time::Instant::now() > deadline {
            break texts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        texts,
        ["Tool said: booked for 4 (booking #1)"],
        "{}",
        daemon.stderr()
    );
    let bookings = std::fs::read_to_string(
        env.home
            .path()
            .join("state/convagent/tools/probe/bookings.txt"),
    )
    .unwrap();
    assert_eq!(bookings, "4\n", "the tool ran once");

    // Answered once: a second answer is refused with a hint.
    let out = run(&["approvals", "deny", &id]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("approved already, by ana"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&["approvals", "approve", "999"]);
    assert!(
        stderr_of(&out).contains("there is no approval 999"),
        "{}",
        stderr_of(&out)
    );
    let all = stdout_of(&run(&["approvals", "list", "--all"]));
    assert!(all.contains("approved") && all.contains("ana"), "{all}");
    drop(daemon);
}
