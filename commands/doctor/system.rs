//! Machine checks: the serve port, the clock, disk space, and the MCP
//! servers the agent would start.

use std::path::Path;
use std::time::Duration;

use convagent::adapters::mcp::McpTools;
use convagent::config::{AgentMode, Settings};

use super::Check;
use crate::output::{now_ms, utc};

/// Free or held by a convagent daemon is fine; held by anything else is not.
pub async fn port_check(settings: &Settings) -> Check {
    let listen = &settings.config.server.listen;
    match std::net::TcpListener::bind(listen) {
        Ok(_) => Check::pass("port", format!("{listen} is free for `convagent serve`")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let ours = async {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .ok()?;
                let r = client
                    .get(format!("http://{listen}/health"))
                    .send()
                    .await
                    .ok()?;
                Some(r.text().await.ok()? == "ok\n")
            };
            match ours.await {
                Some(true) => Check::pass(
                    "port",
                    format!("{listen} is held by a running convagent serve"),
                ),
                _ => Check::fail(
                    "port",
                    format!("{listen} is held by another program"),
                    "stop it, or choose another address with --listen / CONVAGENT_LISTEN",
                ),
            }
        }
        Err(e) => Check::fail(
            "port",
            format!("cannot listen on {listen}: {e}"),
            "fix CONVAGENT_LISTEN",
        ),
    }
}

/// Slack rejects requests signed more than 5 minutes off; a clock stuck in
/// the past breaks every signature check.
pub fn clock_check() -> Check {
    let now = now_ms();
    // 2024-01-01 .. 2100-01-01
    if (1_704_067_200_000..4_102_444_800_000).contains(&now) {
        Check::pass("clock", format!("{} UTC", utc(now)))
    } else {
        Check::fail(
            "clock",
            format!("the system clock says {} UTC", utc(now)),
            "set the clock (e.g. enable NTP: timedatectl set-ntp true)",
        )
    }
}

const MIB: u64 = 1024 * 1024;

pub fn disk_check(name: &str, dir: &Path) -> Check {
    // The directory may not exist yet: look at its nearest existing parent.
    let existing = dir
        .ancestors()
        .find(|d| d.exists())
        .unwrap_or(Path::new("/"));
    match rustix::fs::statvfs(existing) {
        Ok(s) => {
            let free = s.f_bavail.saturating_mul(s.f_frsize);
            let detail = format!("{} MiB free for {}", free / MIB, dir.display());
            if free < 10 * MIB {
                Check::fail(
                    name,
                    detail,
                    "free some disk space: the store and logs cannot grow",
                )
            } else if free < 100 * MIB {
                Check::warn(name, detail, "free some disk space soon")
            } else {
                Check::pass(name, detail)
            }
        }
        Err(e) => Check::warn(
            name,
            format!("cannot tell free space of {}: {e}", dir.display()),
            "check the path",
        ),
    }
}

/// Each `[[mcp.servers]]` entry started as `serve` and `chat` would start
/// it: whether it speaks MCP, and the tools the model would be offered.
pub async fn mcp_checks(settings: &Settings) -> Vec<Check> {
    let mcp = &settings.config.mcp;
    if mcp.servers.is_empty() {
        return Vec::new();
    }
    let timeout = Duration::from_secs(mcp.call_timeout_secs);
    let sandbox = crate::context::tool_sandbox(settings);
    let (tools, statuses) = McpTools::start(&mcp.servers, timeout, &sandbox).await;
    tools.stop().await;
    let external = settings.config.agent.mode == AgentMode::External;
    let confinement: Vec<Check> = statuses
        .iter()
        .filter_map(|s| Some((&s.name, s.sandbox.as_ref()?)))
        .map(|(name, sandbox)| {
            let detail = format!("server {name} runs with {sandbox}");
            if mcp.sandbox.landlock && convagent::adapters::mcp::sandbox::landlock_abi().is_none() {
                Check::warn(
                    "mcp sandbox",
                    detail,
                    "this kernel cannot confine the server's files: it can read what convagent's user can",
                )
            } else {
                Check::pass("mcp sandbox", detail)
            }
        })
        .collect();
    let mut checks: Vec<Check> = statuses
        .into_iter()
        .map(|status| match status.tools {
            Err(why) => Check::fail(
                "mcp",
                format!("server {}: {why}", status.name),
                format!(
                    "check `command` and `args` of the [[mcp.servers]] entry named {:?}; \
                     run them by hand: the server must speak MCP on stdin and stdout",
                    status.name
                ),
            ),
            Ok(_) if external => Check::warn(
                "mcp",
                format!(
                    "server {} starts, but agent.mode = \"external\": its tools are not used",
                    status.name
                ),
                "set agent.mode = \"agent\" for the built-in agent to use them",
            ),
            Ok(offered) if !status.missing.is_empty() => Check::warn(
                "mcp",
                format!(
                    "server {}: {} tool(s) ({}); its allow-list names tools it does not have: {}",
                    status.name,
                    offered.len(),
                    offered.join(", "),
                    status.missing.join(", ")
                ),
                "fix the `tools` list of that [[mcp.servers]] entry",
            ),
            Ok(offered) if offered.is_empty() => Check::warn(
                "mcp",
                format!("server {} starts but offers no tool", status.name),
                "its `tools` allow-list leaves none, or the server has none",
            ),
            Ok(offered) => Check::pass(
                "mcp",
                format!(
                    "server {}: {} tool(s) offered to the model ({})",
                    status.name,
                    offered.len(),
                    offered.join(", ")
                ),
            ),
        })
        .collect();
    checks.extend(confinement);
    checks
}
