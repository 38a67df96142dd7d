//! MCP both ways, timed (method and figures in benches/README.md):
//!
//!     cargo bench --bench mcp -- [--calls 300] [--sends 20]
//!
//! 1. The agent's tool calls: `McpTools` (what `serve` and `chat` use) calling
//!    `get_current_time` of the reference time server (`mcp-server-time`, over
//!    stdio), per call, and the server's start (spawn, handshake, tool list);
//!    and calling `list_conversations` on a `serve`'s `/mcp` (Streamable HTTP).
//! 2. convagent as an MCP server, seen by the official Python SDK's client:
//!    a `list_conversations` round trip over stdio (`convagent mcp`) and over
//!    Streamable HTTP (`/mcp` on the release `serve`), per call.
//! 3. `send_message` → the fake Telegram API receiving `sendMessage`: over
//!    `/mcp` (the daemon wakes its outbox at once) and over stdio (another
//!    process queues; `serve`'s outbox looks every second).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use convagent::adapters::mcp::{McpTools, SandboxSettings};
use convagent::config::{McpServerConfig, SandboxConfig};
use convagent::core::tools::{ToolCall, Tools};

#[path = "support/flags.rs"]
mod flags;
use flags::flag;

const TOKEN: &str = "1:bench";

/// Tool servers' directories for the bench, with the default limits.
fn sandbox() -> SandboxSettings {
    SandboxSettings {
        tools_dir: std::env::temp_dir().join("convagent-bench-tools"),
        limits: SandboxConfig::default(),
    }
}

fn python() -> PathBuf {
    std::env::var_os("CONVAGENT_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            convagent::config::Dirs::from_env()
                .unwrap()
                .data
                .join("mcp-venv/bin/python")
        })
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `p50 / p90 / p99 / max` of microsecond samples, in ms.
fn summary(mut us: Vec<u64>) -> String {
    us.sort_unstable();
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} calls)",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        us.len()
    )
}

fn main() {
    let calls: usize = flag("--calls", 300);
    let sends: usize = flag("--sends", 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        agent_tools(calls).await;
        server(calls, sends).await;
    });
}

async fn agent_tools(calls: usize) {
    let config = McpServerConfig {
        name: "time".into(),
        command: python().display().to_string(),
        args: ["-m", "mcp_server_time", "--local-timezone", "UTC"]
            .map(String::from)
            .to_vec(),
        tools: vec!["get_current_time".into()],
        ..McpServerConfig::default()
    };
    let began = Instant::now();
    let (tools, statuses) = McpTools::start(&[config], Duration::from_secs(15), &sandbox()).await;
    let start = began.elapsed();
    assert!(statuses[0].tools.is_ok(), "{statuses:?}");
    let call = ToolCall {
        id: None,
        name: "get_current_time".into(),
        arguments: serde_json::json!({ "timezone": "UTC" }),
    };
    let us = timed(&tools, &call, calls).await;
    println!("1. agent → mcp-server-time (stdio)");
    println!(
        "   start (spawn, handshake, tools/list)  {:.0} ms",
        start.as_secs_f64() * 1000.0
    );
    println!("   get_current_time                      {}", summary(us));
    tools.stop().await;
}

/// `calls` round trips of `call` (after 10 to warm up), in µs.
async fn timed(tools: &McpTools, call: &ToolCall, calls: usize) -> Vec<u64> {
    for _ in 0..10 {
        tools.call(call).await.unwrap();
    }
    let mut us = Vec::new();
    for _ in 0..calls {
        let t = Instant::now();
        tools.call(call).await.unwrap();
        us.push(t.elapsed().as_micros() as u64);
    }
    us
}

/// The fake Telegram: when each `sendMessage` arrived (unix ns), by text.
type Arrivals = Arc<Mutex<Vec<(String, u128)>>>;

async fn send_message(State(seen): State<Arrivals>, body: String) -> String {
    let at = unix_ns();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let text = v["text"].as_str().unwrap_or_default().to_string();
    seen.lock().unwrap().push((text, at));
    r#"{"ok":true,"result":{"message_id":1}}"#.into()
}

struct Serve {
    child: Child,
    url: String,
    home: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

fn command(home: &std::path::Path, telegram: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_convagent"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_STATE_HOME", home.join("state"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("TELEGRAM_BOT_TOKEN", TOKEN)
        .env("TELEGRAM_WEBHOOK_SECRET", "s3cret")
        .env("CONVAGENT_TELEGRAM_API_BASE", telegram)
        .env("CONVAGENT_LLM_CHAIN", "ollama")
        .env("CONVAGENT_LOG", "warn");
    cmd
}

// The child is waited for by `Serve`'s drop, which clippy does not follow.
#[allow(clippy::zombie_processes)]
fn start_serve(home: &std::path::Path, telegram: &str) -> Serve {
    let log = home.join("serve.log");
    let mut child = command(home, telegram, &["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting convagent serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(url) = text
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
        {
            return Serve {
                child,
                url: url.to_string(),
                home: home.to_path_buf(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve did not start: {text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Python client's lines: call round trips (µs) and send start times.
fn run_client(mut cmd: Command) -> (Vec<u64>, Vec<(String, u128)>) {
    let out = cmd.output().expect("running the Python MCP client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut calls = Vec::new();
    let mut sends = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["call", us] => calls.push(us.parse().unwrap()),
            ["send", i, ns] => sends.push((format!("bench {i}"), ns.parse().unwrap())),
            _ => {}
        }
    }
    (calls, sends)
}

/// Start-to-arrival of each send, in µs (waiting up to 5 s for stragglers).
async fn latencies(seen: &Arrivals, sends: &[(String, u128)]) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let arrived = seen.lock().unwrap().clone();
        let matched: Vec<u64> = sends
            .iter()
            .filter_map(|(text, began)| {
                arrived
                    .iter()
                    .find(|(t, _)| t == text)
                    .map(|(_, at)| ((at - began) / 1000) as u64)
            })
            .collect();
        if matched.len() == sends.len() || Instant::now() > deadline {
            return matched;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn server(calls: usize, sends: usize) {
    let seen: Arrivals = Arc::default();
    let app = Router::new()
        .route(&format!("/bot{TOKEN}/sendMessage"), post(send_message))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let telegram = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let home = std::env::temp_dir().join(format!("convagent-mcp-bench-{}", std::process::id()));
    std::fs::create_dir_all(home.join("config/convagent")).unwrap();
    let serve = tokio::task::block_in_place(|| start_serve(&home, &telegram));
    let token = command(&home, &telegram, &["mcp", "token", "create", "bench"])
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/mcp_client.py");

    // The agent's tool calls over Streamable HTTP: `McpTools` on serve's /mcp.
    let config = McpServerConfig {
        name: "relay".into(),
        url: format!("{}/mcp", serve.url),
        token: token.clone(),
        tools: vec!["list_conversations".into()],
        ..McpServerConfig::default()
    };
    let (tools, statuses) = McpTools::start(&[config], Duration::from_secs(15), &sandbox()).await;
    assert!(statuses[0].tools.is_ok(), "{statuses:?}");
    let call = ToolCall {
        id: None,
        name: "list_conversations".into(),
        arguments: serde_json::json!({ "limit": 5 }),
    };
    let agent_http = timed(&tools, &call, calls).await;
    tools.stop().await;
    println!("1. agent → convagent's /mcp (Streamable HTTP)");
    println!(
        "   list_conversations                    {}",
        summary(agent_http)
    );

    let mut http = Command::new(python());
    http.args([script, "http", &calls.to_string(), &sends.to_string()])
        .arg(format!("{}/mcp", serve.url))
        .arg(&token);
    let (http_calls, http_sends) = tokio::task::block_in_place(|| run_client(http));
    let http_latency = latencies(&seen, &http_sends).await;
    seen.lock().unwrap().clear();

    // The stdio server is another process on the same store, with serve's
    // environment.
    let like = command(&home, &telegram, &[]);
    let mut stdio = Command::new(python());
    for (k, v) in like.get_envs() {
        if let Some(v) = v {
            stdio.env(k, v);
        }
    }
    stdio.args([script, "stdio", &calls.to_string(), &sends.to_string()]);
    stdio.arg(env!("CARGO_BIN_EXE_convagent"));
    let (stdio_calls, stdio_sends) = tokio::task::block_in_place(|| run_client(stdio));
    let stdio_latency = latencies(&seen, &stdio_sends).await;

    println!("2. convagent as an MCP server, list_conversations round trip (Python SDK client)");
    println!("   stdio (`convagent mcp`)     {}", summary(stdio_calls));
    println!("   Streamable HTTP (/mcp)      {}", summary(http_calls));
    println!("3. send_message → fake Telegram received it");
    println!(
        "   over /mcp (serve wakes its outbox)        {}",
        summary(http_latency)
    );
    println!(
        "   over stdio (serve's outbox looks each 1 s) {}",
        summary(stdio_latency)
    );
    drop(serve);
}
