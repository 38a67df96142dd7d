//! The MCP servers whose tools convagent's agent calls (`[[mcp.servers]]`):
//! each is a command started at start-up, spoken to on its stdin and stdout
//! with the official SDK. Their tools (the allowed ones) are offered to the
//! model; a call runs within `mcp.call_timeout_secs`. A server that does not
//! start is left out (and said so); one that fails or hangs later fails only
//! the calls made to it, and the turn is answered without them.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};

use super::sandbox::{Sandbox, SandboxSettings};
use crate::config::McpServerConfig;
use crate::core::llm::BoxFuture;
use crate::core::tools::{ApprovalRule, ToolCall, ToolSpec, Tools};

/// How long a server may take to start and list its tools.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// What became of one configured server at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerStatus {
    pub name: String,
    /// The tools offered to the model (after the allow-list), or why none.
    pub tools: Result<Vec<String>, String>,
    /// Tools its allow-list names that it does not have.
    pub missing: Vec<String>,
    /// What its command runs with (`Sandbox::describe`; none for a URL).
    pub sandbox: Option<String>,
}

struct Server {
    name: String,
    client: RunningService<RoleClient, ()>,
    /// Which of its tools wait for an approval, and whether in the chat.
    approve: crate::config::Approve,
    approve_in_chat: bool,
}

/// Every started server's tools, by name.
pub struct McpTools {
    servers: Vec<Server>,
    /// The offered tools and the server (index) each belongs to.
    specs: Vec<(ToolSpec, usize)>,
    timeout: Duration,
}

/// Connects to `config`'s server (its command, confined in `sandbox`, or
/// its URL) and lists its tools, within [`START_TIMEOUT`].
async fn start(
    config: &McpServerConfig,
    sandbox: &Sandbox,
) -> Result<(RunningService<RoleClient, ()>, Vec<rmcp::model::Tool>), String> {
    let has_url = !config.url.trim().is_empty();
    let has_command = !config.command.trim().is_empty();
    if has_url == has_command {
        return Err("give either `command` (stdio) or `url` (Streamable HTTP)".into());
    }
    if has_url {
        // reqwest's rustls takes the process's crypto provider: ring, as
        // for every other TLS connection here.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut transport = StreamableHttpClientTransportConfig::with_uri(config.url.trim());
        if !config.token.is_empty() {
            transport = transport.auth_header(config.token.clone());
        }
        let transport = StreamableHttpClientTransport::from_config(transport);
        return handshake(().serve(transport)).await;
    }
    let command = sandbox.command(&config.command, &config.args)?;
    let (process, _) = TokioChildProcess::builder(command)
        // Its log lines would land in the terminal of `chat` or the TUI.
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start `{}`: {e}", config.command))?;
    handshake(().serve(process)).await
}

/// The handshake and the tool list, within [`START_TIMEOUT`].
async fn handshake<E: std::fmt::Display>(
    serving: impl std::future::Future<Output = Result<RunningService<RoleClient, ()>, E>>,
) -> Result<(RunningService<RoleClient, ()>, Vec<rmcp::model::Tool>), String> {
    let started = tokio::time::timeout(START_TIMEOUT, async {
        let client = serving.await.map_err(|e| {
            let e = e.to_string();
            if e.contains("Auth required") {
                "the server refused the token (HTTP 401): check `token`".to_string()
            } else {
                format!("no MCP handshake: {e}")
            }
        })?;
        let tools = client
            .list_all_tools()
            .await
            .map_err(|e| format!("cannot list its tools: {e}"))?;
        Ok::<_, String>((client, tools))
    })
    .await;
    match started {
        Ok(result) => result,
        Err(_) => Err(format!(
            "did not answer within {}s",
            START_TIMEOUT.as_secs()
        )),
    }
}

impl McpTools {
    /// Starts every server of `configs` (one at a time; a few at most) and
    /// offers the allowed tools of those that started. A tool whose name
    /// another server took first is offered as `server__tool` (function
    /// names may not hold a dot).
    pub async fn start(
        configs: &[McpServerConfig],
        timeout: Duration,
        sandbox: &SandboxSettings,
    ) -> (McpTools, Vec<ServerStatus>) {
        let mut tools = McpTools {
            servers: Vec::new(),
            specs: Vec::new(),
            timeout,
        };
        let mut statuses = Vec::new();
        for config in configs {
            let name = [&config.name, &config.url, &config.command]
                .into_iter()
                .find(|n| !n.is_empty())
                .cloned()
                .unwrap_or_default();
            let mut missing = Vec::new();
            let confined = Sandbox::plan(config, &name, sandbox, |v| std::env::var(v).ok());
            let status = match start(config, &confined).await {
                Ok((client, listed)) => {
                    let index = tools.servers.len();
                    let mut offered = Vec::new();
                    for tool in listed {
                        if !config.tools.is_empty() && !config.tools.iter().any(|t| *t == tool.name)
                        {
                            continue;
                        }
                        let mut exposed = tool.name.to_string();
                        if tools.specs.iter().any(|(s, _)| s.name == exposed) {
                            exposed = format!("{name}__{exposed}");
                        }
                        offered.push(exposed.clone());
                        tools.specs.push((
                            ToolSpec {
                                name: exposed,
                                description: tool
                                    .description
                                    .as_deref()
                                    .unwrap_or_default()
                                    .to_string(),
                                parameters: tool.schema_as_json_value(),
                            },
                            index,
                        ));
                    }
                    missing = config
                        .tools
                        .iter()
                        .filter(|t| {
                            !offered
                                .iter()
                                .any(|o| o == *t || o.ends_with(&format!("__{t}")))
                        })
                        .cloned()
                        .collect();
                    if !missing.is_empty() {
                        tracing::warn!(server = %name, ?missing, "allowed tools the server does not have");
                    }
                    tools.servers.push(Server {
                        name: name.clone(),
                        client,
                        approve: config.approve.clone(),
                        approve_in_chat: config.approve_in_chat,
                    });
                    tracing::info!(server = %name, tools = ?offered, "MCP server started");
                    Ok(offered)
                }
                Err(why) => {
                    tracing::warn!(server = %name, error = %why, "MCP server left out");
                    Err(why)
                }
            };
            statuses.push(ServerStatus {
                name,
                tools: status,
                missing,
                sandbox: config.url.trim().is_empty().then(|| confined.describe()),
            });
        }
        (tools, statuses)
    }

    /// No tool to offer.
    pub fn is_empty(&self) -> bool {
        self.specs.is_empty()
    }

    /// Stops the servers (their processes end with their stdin).
    pub async fn stop(self) {
        for server in self.servers {
            let _ = server.client.cancel().await;
        }
    }

    /// The server of the tool offered as `name`, and the tool's own name there.
    fn server_of(&self, name: &str) -> Option<(&Server, &str)> {
        let (spec, index) = self.specs.iter().find(|(s, _)| s.name == name)?;
        let server = &self.servers[*index];
        let tool = spec
            .name
            .strip_prefix(&format!("{}__", server.name))
            .unwrap_or(&spec.name);
        Some((server, tool))
    }

    async fn run(&self, call: &ToolCall) -> Result<String, String> {
        let Some((server, tool)) = self.server_of(&call.name) else {
            return Err(format!("there is no tool named {:?}", call.name));
        };
        let mut params = CallToolRequestParams::new(tool.to_string());
        match &call.arguments {
            serde_json::Value::Object(map) => params = params.with_arguments(map.clone()),
            serde_json::Value::Null => {}
            other => return Err(format!("its arguments are not an object: {other}")),
        }
        let result = tokio::time::timeout(self.timeout, server.client.call_tool(params))
            .await
            .map_err(|_| {
                format!(
                    "{} did not answer within {}s",
                    server.name,
                    self.timeout.as_secs()
                )
            })?
            .map_err(|e| format!("{}: {e}", server.name))?;
        let text: Vec<String> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.clone()))
            .collect();
        let text = if text.is_empty() {
            result
                .structured_content
                .map(|v| v.to_string())
                .unwrap_or_default()
        } else {
            text.join("\n")
        };
        if result.is_error == Some(true) {
            return Err(if text.is_empty() {
                "the tool reported an error".into()
            } else {
                text
            });
        }
        Ok(text)
    }
}

impl Tools for McpTools {
    fn specs(&self) -> Vec<ToolSpec> {
        self.specs.iter().map(|(s, _)| s.clone()).collect()
    }

    fn call<'a>(&'a self, call: &'a ToolCall) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(self.run(call))
    }

    fn needs_approval(&self, name: &str) -> Option<ApprovalRule> {
        let (server, tool) = self.server_of(name)?;
        server.approve.covers(tool).then_some(ApprovalRule {
            in_chat: server.approve_in_chat,
        })
    }
}

/// `McpTools` as the agent holds it.
pub fn shared(tools: McpTools) -> Option<Arc<dyn Tools>> {
    (!tools.is_empty()).then(|| Arc::new(tools) as Arc<dyn Tools>)
}
