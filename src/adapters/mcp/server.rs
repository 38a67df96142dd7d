//! convagent as an MCP server: other agents send and read messages on the
//! channels convagent verifies, orders and delivers. The server relays text;
//! it never generates it. Sends go through the store's outbox like the
//! agent's replies (ordering, 429 waits, dead letters, dry run).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use rmcp::ErrorData;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::{Json, Parameters};
use rmcp::model::{
    CustomRequest, CustomResult, ErrorCode, Implementation, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, ProtocolVersion, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::core::Clock;
use crate::core::handoff::{Handoff, Mode};
use crate::core::message::{Channel, ConversationKey, CorrelationId};
use crate::core::ports::{
    AnyStore, ConversationFilter, ConversationSummary, Destination, Outgoing, SearchOrder,
    StoreError, StoredMessage, Take, Write, Written,
};

/// The provider name stored with what an outside agent sends.
pub const PROVIDER: &str = "mcp";
/// The resources: the health summary, and each conversation.
const HEALTH_URI: &str = "convagent://health";
const CONVERSATION_URI: &str = "convagent://conversations/";
/// The one MIME type of every resource, listed and read.
const RESOURCE_MIME: &str = "application/json";
/// The protocol versions offered. Not 2025-03-26: that version requires
/// JSON-RPC batches, which rmcp's transports do not take (the versions
/// before and after it have none).
const OFFERED_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2024_11_05,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2026_07_28,
];
/// Methods of the protocol this server answers. A request for one of them
/// reaches `on_custom_request` only when rmcp could not read its params.
const SERVED_METHODS: &[&str] = &[
    "tools/call",
    "tools/list",
    "resources/read",
    "resources/list",
    "resources/templates/list",
    "initialize",
    "ping",
];
/// The longest `wait_for_message` waits.
const MAX_WAIT_SECS: u64 = 300;
/// How often a waiting consumer looks at the store (for messages another
/// process stored: word of this process's own comes at once).
const LOOK_EVERY: Duration = Duration::from_millis(250);
/// How often it tries a take though nothing changed.
const RETRY_TAKES: Duration = Duration::from_secs(2);

/// An access token's stored form: its SHA-256, in hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What the relay serves and how.
pub struct RelaySettings {
    /// Channels configured to send (a message for another one would only
    /// be dead-lettered).
    pub channels: Vec<Channel>,
    /// `agent.mode = "external"`: messages wait for MCP consumers, and a
    /// send answers what waits in its conversation.
    pub external: bool,
    /// How long a taken message stays with its consumer (`mcp.take_secs`).
    pub take: Duration,
    /// `mcp.send_takes_over`: a send into a conversation the agent answers
    /// takes it over for a person and answers what waits there.
    pub send_takes_over: bool,
    /// Called after each send (the daemon wakes its outbox at once; another
    /// process's outbox sees the reply within a second).
    pub after_send: Arc<dyn Fn() + Send + Sync>,
    /// Changes when this process stored an inbound message (the daemon);
    /// without it the relay looks at the store every 250 ms.
    pub arrivals: Option<watch::Receiver<u64>>,
}

struct Parts {
    store: Arc<dyn AnyStore>,
    clock: Arc<dyn Clock>,
    settings: RelaySettings,
}

/// The MCP server: one per session (cheap to clone).
#[derive(Clone)]
pub struct Relay {
    parts: Arc<Parts>,
    tool_router: ToolRouter<Relay>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SendParams {
    /// The text to send.
    pub text: String,
    /// A conversation to send to (from `list_conversations`,
    /// `wait_for_message`). Or give `channel` and `recipient`.
    pub conversation_id: Option<i64>,
    /// whatsapp, sms, telegram or slack.
    pub channel: Option<String>,
    /// Who on the channel, as convagent stores senders: `whatsapp:+15551234567`,
    /// `+15551234567` for SMS, a Telegram chat id, a Slack channel id.
    pub recipient: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SentView {
    pub message_id: i64,
    pub conversation_id: i64,
    /// The outbox item that delivers it (`convagent outbox` shows it).
    pub outbox_id: Option<i64>,
    /// Traces of its delivery: `get_trace`.
    pub correlation_id: Option<String>,
    /// The inbound messages it answered (`agent.mode = "external"`).
    pub answered: Vec<i64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ListParams {
    /// Only this channel's.
    pub channel: Option<String>,
    /// At most this many, newest activity first (default 20, at most 200).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversationView {
    pub id: i64,
    pub channel: String,
    pub sender: String,
    pub thread: String,
    pub display_name: Option<String>,
    pub message_count: u64,
    pub started_at_ms: i64,
    pub last_activity_at_ms: i64,
    /// Closed by `/reset`: the sender's next message starts a new one.
    pub closed: bool,
    /// Who answers it: `agent`, or `human` (a person took it over).
    pub mode: String,
    /// Who set that mode, and when.
    pub mode_by: Option<String>,
    pub mode_at_ms: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SetModeParams {
    pub conversation_id: i64,
    /// `human` (a person answers; the agent is silent) or `agent`.
    pub mode: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Conversations {
    pub conversations: Vec<ConversationView>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct GetParams {
    pub conversation_id: i64,
    /// The newest this many messages (default 50, at most 500).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MessageView {
    pub id: i64,
    pub conversation_id: i64,
    /// user (the person) or assistant (the agent, or an outside agent).
    pub role: String,
    pub text: String,
    pub created_at_ms: i64,
    pub correlation_id: Option<String>,
    /// For a reply: the message it answers.
    pub reply_to: Option<i64>,
    /// For a reply: who made it (an LLM provider, `mcp`, `limit`).
    pub provider: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ConversationWithMessages {
    pub conversation: ConversationView,
    pub messages: Vec<MessageView>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchParams {
    /// Words to find (every word must match; diacritics are folded).
    pub query: String,
    pub channel: Option<String>,
    /// Default 20, at most 200.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Hit {
    pub message: MessageView,
    pub channel: String,
    pub sender: String,
    /// The text around the match, matches in [brackets].
    pub snippet: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Hits {
    pub hits: Vec<Hit>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct TraceParams {
    pub correlation_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StageView {
    /// received, stored, turn, llm, tool, reply stored, send attempt N, …
    pub stage: String,
    pub outcome: String,
    pub started_at_ms: i64,
    pub duration_us: u64,
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TraceView {
    pub correlation_id: String,
    pub stages: Vec<StageView>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct WaitParams {
    /// Only messages of this channel.
    pub channel: Option<String>,
    /// Only messages of this conversation.
    pub conversation_id: Option<i64>,
    /// How long to wait for one (default 30, at most 300 seconds).
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Waited {
    /// The message, now yours until `take_until_ms`: reply with
    /// `send_message` to its conversation. None when the wait timed out.
    pub message: Option<MessageView>,
    pub conversation: Option<ConversationView>,
    pub take_until_ms: Option<i64>,
}

fn message_view(m: StoredMessage) -> MessageView {
    MessageView {
        id: m.id,
        conversation_id: m.conversation_id,
        role: m.role.as_str().to_string(),
        text: m.text,
        created_at_ms: m.created_at,
        correlation_id: m.correlation_id,
        reply_to: m.reply_to,
        provider: m.provider,
    }
}

fn conversation_view(c: ConversationSummary) -> ConversationView {
    ConversationView {
        id: c.id,
        channel: c.channel.as_str().to_string(),
        sender: c.sender,
        thread: c.thread,
        display_name: c.display_name,
        message_count: c.message_count,
        started_at_ms: c.started_at,
        last_activity_at_ms: c.last_activity_at,
        closed: c.closed,
        mode: c.mode.as_str().to_string(),
        mode_by: c.mode_by,
        mode_at_ms: c.mode_at,
    }
}

fn channel(name: Option<&str>) -> Result<Option<Channel>, String> {
    name.map(|n| n.parse::<Channel>().map_err(|e| e.to_string()))
        .transpose()
}

fn limit(asked: Option<usize>, default: usize, max: usize) -> usize {
    asked.unwrap_or(default).clamp(1, max)
}

fn store_error(e: StoreError) -> String {
    match e {
        StoreError::NotFound(what) => format!("{what} not found"),
        StoreError::Invalid(why) => format!("invalid: {why}"),
        other => format!("the store failed: {other}"),
    }
}

/// The client's name, as it introduced itself.
/// Who calls, as `/mcp`'s token check found it (an extension of the HTTP
/// request; stdio has none).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// The token is an operator's (`mcp token create --operator`).
    pub operator: bool,
}

/// Whether the caller's token is an operator's.
fn operator(context: &RequestContext<RoleServer>) -> bool {
    context
        .extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .is_some_and(|c| c.operator)
}

fn consumer(context: &RequestContext<RoleServer>) -> String {
    context
        .peer
        .peer_info()
        .map(|p| p.client_info.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "mcp-client".into())
}

impl Relay {
    /// Records who answers `conversation` now, traced with who did it.
    async fn hand(&self, conversation: i64, mode: Mode, by: &str) -> Result<(), String> {
        let handoff = Handoff {
            conversation_id: conversation,
            mode,
            by: by.to_string(),
            at: self.parts.clock.now_ms(),
        };
        let trace = handoff.trace();
        let store = &self.parts.store;
        store
            .write(Write::Handoff(handoff))
            .await
            .map_err(store_error)?;
        store
            .write(Write::Traces(vec![trace]))
            .await
            .map_err(store_error)?;
        Ok(())
    }

    pub fn new(store: Arc<dyn AnyStore>, clock: Arc<dyn Clock>, settings: RelaySettings) -> Self {
        Relay {
            parts: Arc::new(Parts {
                store,
                clock,
                settings,
            }),
            tool_router: Self::tool_router(),
        }
    }

    /// A store read, off the async threads (the Postgres pool blocks).
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn AnyStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, String> {
        let parts = self.parts.clone();
        tokio::task::spawn_blocking(move || f(parts.store.as_ref()))
            .await
            .map_err(|e| format!("the store read failed: {e}"))?
            .map_err(store_error)
    }

    /// A conversation and its newest `keep` messages.
    async fn conversation_with_messages(
        &self,
        id: i64,
        keep: usize,
    ) -> Result<ConversationWithMessages, String> {
        let conversation = self.conversation(id).await?;
        let mut messages = self.read(move |s| s.messages(id)).await?;
        let skip = messages.len().saturating_sub(keep);
        messages.drain(..skip);
        Ok(ConversationWithMessages {
            conversation: conversation_view(conversation),
            messages: messages.into_iter().map(message_view).collect(),
        })
    }

    /// What `convagent://health` says: the outbox and the LLM breakers.
    async fn health(&self) -> Result<serde_json::Value, String> {
        let (outbox, breakers) = self
            .read(|s| Ok((s.outbox_stats()?, s.breakers()?)))
            .await?;
        Ok(serde_json::json!({
            "outbox": outbox,
            "breakers": breakers,
            "external_agent": self.parts.settings.external,
            "channels": self.parts.settings.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        }))
    }

    async fn conversation(&self, id: i64) -> Result<ConversationSummary, String> {
        self.read(move |s| s.conversation(id))
            .await?
            .ok_or_else(|| format!("conversation {id} not found (see list_conversations)"))
    }

    fn sendable(&self, channel: Channel) -> Result<(), String> {
        if channel == Channel::Cli {
            return Err("the terminal channel (cli) has no one to deliver to".into());
        }
        if !self.parts.settings.channels.contains(&channel) {
            let on: Vec<_> = self
                .parts
                .settings
                .channels
                .iter()
                .map(|c| c.as_str())
                .collect();
            return Err(format!(
                "channel {} is not configured on this convagent (configured: {}); \
                 `convagent mcp` reads the config and environment `serve` reads (give it \
                 the same variables, or `--env-file`), and `convagent doctor` says what a \
                 channel needs",
                channel.as_str(),
                if on.is_empty() {
                    "none".into()
                } else {
                    on.join(", ")
                }
            ));
        }
        Ok(())
    }

    /// One attempt at taking a message.
    async fn take(
        &self,
        consumer: &str,
        channel: Option<Channel>,
        conversation_id: Option<i64>,
    ) -> Result<Option<(StoredMessage, i64)>, String> {
        let now = self.parts.clock.now_ms();
        let until = now + self.parts.settings.take.as_millis() as i64;
        let take = Take {
            consumer: consumer.to_string(),
            channel,
            conversation_id,
            until,
            now,
        };
        let taken = self
            .parts
            .store
            .write(Write::Take(take))
            .await
            .and_then(Written::taken)
            .map_err(store_error)?;
        Ok(taken.map(|m| (m, until)))
    }
}

#[tool_router(router = tool_router)]
impl Relay {
    #[tool(
        description = "Send a text message to a person on WhatsApp, SMS, Telegram or Slack, through \
        convagent's durable outbox (in order per conversation, retried, 429s waited out). Give \
        conversation_id, or channel and recipient. With agent.mode = \"external\" it is the \
        reply to the conversation's waiting messages."
    )]
    async fn send_message(
        &self,
        Parameters(p): Parameters<SendParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<SentView>, String> {
        if p.text.trim().is_empty() {
            return Err("text is empty: there is nothing to send".into());
        }
        let to = match (
            p.conversation_id,
            channel(p.channel.as_deref())?,
            p.recipient,
        ) {
            (Some(id), None, None) => {
                let conversation = self.conversation(id).await?;
                self.sendable(conversation.channel)?;
                Destination::Conversation(id)
            }
            (None, Some(channel), Some(recipient)) if !recipient.trim().is_empty() => {
                self.sendable(channel)?;
                Destination::Key(ConversationKey::new(channel, recipient.trim(), ""))
            }
            _ => {
                return Err(
                    "say where to: conversation_id alone, or channel and recipient together".into(),
                );
            }
        };
        let settings = &self.parts.settings;
        let takes_over = (settings.send_takes_over || operator(&context)) && !settings.external;
        let out = Outgoing {
            to,
            text: p.text,
            provider: PROVIDER.into(),
            sender: consumer(&context),
            correlation_id: CorrelationId::generate().0,
            answers_pending: settings.external || takes_over,
            at: self.parts.clock.now_ms(),
        };
        let sent = self
            .parts
            .store
            .write(Write::Send(out))
            .await
            .and_then(Written::sent)
            .map_err(store_error)?;
        if takes_over {
            self.hand(
                sent.message.conversation_id,
                Mode::Human,
                &consumer(&context),
            )
            .await?;
        }
        (self.parts.settings.after_send)();
        tracing::info!(
            message = sent.message.id,
            conversation = sent.message.conversation_id,
            outbox = ?sent.outbox_id,
            answered = sent.answered.len(),
            "an MCP client sent a message"
        );
        Ok(Json(SentView {
            message_id: sent.message.id,
            conversation_id: sent.message.conversation_id,
            outbox_id: sent.outbox_id,
            correlation_id: sent.message.correlation_id,
            answered: sent.answered,
        }))
    }

    #[tool(
        description = "Say who answers a conversation: mode \"human\" (a person takes it over: \
        the agent is silent there until it is given back or the takeover runs out) or \"agent\"."
    )]
    async fn set_mode(
        &self,
        Parameters(p): Parameters<SetModeParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<Json<ConversationView>, String> {
        let mode = Mode::parse(p.mode.trim())
            .ok_or_else(|| format!("mode `{}`: say \"human\" or \"agent\"", p.mode))?;
        self.conversation(p.conversation_id).await?;
        self.hand(p.conversation_id, mode, &consumer(&context))
            .await?;
        Ok(Json(conversation_view(
            self.conversation(p.conversation_id).await?,
        )))
    }

    #[tool(description = "List conversations, the most recently active first.")]
    async fn list_conversations(
        &self,
        Parameters(p): Parameters<ListParams>,
    ) -> Result<Json<Conversations>, String> {
        let filter = ConversationFilter {
            channel: channel(p.channel.as_deref())?,
            sender: None,
            limit: limit(p.limit, 20, 200),
        };
        let found = self.read(move |s| s.conversations(&filter)).await?;
        Ok(Json(Conversations {
            conversations: found.into_iter().map(conversation_view).collect(),
        }))
    }

    #[tool(
        description = "A conversation and its newest messages, oldest first, with roles and times."
    )]
    async fn get_conversation(
        &self,
        Parameters(p): Parameters<GetParams>,
    ) -> Result<Json<ConversationWithMessages>, String> {
        let keep = limit(p.limit, 50, 500);
        Ok(Json(
            self.conversation_with_messages(p.conversation_id, keep)
                .await?,
        ))
    }

    #[tool(description = "Full-text search over every stored message, best matches first.")]
    async fn search_messages(
        &self,
        Parameters(p): Parameters<SearchParams>,
    ) -> Result<Json<Hits>, String> {
        if crate::core::ports::search_words(&p.query).next().is_none() {
            return Err("the query has no words to search for".into());
        }
        let channel = channel(p.channel.as_deref())?;
        let n = limit(p.limit, 20, 200);
        let hits = self
            .read(move |s| s.search(&p.query, channel, n, SearchOrder::Relevance))
            .await?;
        Ok(Json(Hits {
            hits: hits
                .into_iter()
                .map(|h| Hit {
                    message: message_view(h.message),
                    channel: h.channel.as_str().to_string(),
                    sender: h.sender,
                    snippet: h.snippet,
                })
                .collect(),
        }))
    }

    #[tool(
        description = "Every stage of a message's journey (received, stored, turn, LLM, tools, \
        reply, each send attempt) by its correlation id."
    )]
    async fn get_trace(
        &self,
        Parameters(p): Parameters<TraceParams>,
    ) -> Result<Json<TraceView>, String> {
        let id = p.correlation_id.trim().to_string();
        let wanted = id.clone();
        let events = self.read(move |s| s.trace(&wanted)).await?;
        if events.is_empty() {
            return Err(format!("no trace for correlation id {id:?}"));
        }
        Ok(Json(TraceView {
            correlation_id: id,
            stages: events
                .into_iter()
                .map(|e| StageView {
                    stage: e.label(),
                    outcome: e.outcome.as_str().to_string(),
                    started_at_ms: e.started_at,
                    duration_us: e.duration_us,
                    detail: e.detail,
                })
                .collect(),
        }))
    }

    #[tool(
        description = "Wait for the next inbound message that no other consumer has taken, and take \
        it: it is yours for mcp.take_secs (reply with send_message to its conversation). Only with \
        agent.mode = \"external\", where convagent's own agent does not answer."
    )]
    async fn wait_for_message(
        &self,
        Parameters(p): Parameters<WaitParams>,
        context: RequestContext<RoleServer>,
        cancelled: CancellationToken,
    ) -> Result<Json<Waited>, String> {
        if !self.parts.settings.external {
            return Err("convagent's own agent answers inbound messages here \
                (agent.mode = \"agent\"); set agent.mode = \"external\" in the config to \
                hand them to MCP clients"
                .into());
        }
        let channel = channel(p.channel.as_deref())?;
        let wait = Duration::from_secs(p.timeout_secs.unwrap_or(30).min(MAX_WAIT_SECS));
        let deadline = tokio::time::Instant::now() + wait;
        let consumer = consumer(&context);
        let mut arrivals = self.parts.settings.arrivals.clone();
        // A take is a write: try one when the store changed, or now and
        // then (a take whose time ran out changes nothing).
        let mut seen = None;
        let mut tried = tokio::time::Instant::now() - RETRY_TAKES;
        loop {
            let counter = self.read(|s| s.change_counter()).await.ok();
            if counter.is_none() || counter != seen || tried.elapsed() >= RETRY_TAKES {
                seen = counter;
                tried = tokio::time::Instant::now();
                if let Some((message, until)) =
                    self.take(&consumer, channel, p.conversation_id).await?
                {
                    let conversation = self.conversation(message.conversation_id).await?;
                    return Ok(Json(Waited {
                        message: Some(message_view(message)),
                        conversation: Some(conversation_view(conversation)),
                        take_until_ms: Some(until),
                    }));
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Json(Waited {
                    message: None,
                    conversation: None,
                    take_until_ms: None,
                }));
            }
            tokio::select! {
                _ = cancelled.cancelled() => return Err("cancelled".into()),
                _ = arrived(arrivals.as_mut()) => {}
                _ = tokio::time::sleep((deadline - now).min(LOOK_EVERY)) => {}
            }
        }
    }
}

/// Resolves when this process stored an inbound message; never without word.
async fn arrived(arrivals: Option<&mut watch::Receiver<u64>>) {
    if let Some(a) = arrivals
        && a.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Relay {
    fn get_info(&self) -> ServerConfig {
        let mode = if self.parts.settings.external {
            "Inbound messages wait for you: call wait_for_message, then answer with \
             send_message to the message's conversation_id."
        } else {
            "convagent's own agent answers inbound messages; you can read conversations \
             and send messages of your own."
        };
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("convagent", env!("CARGO_PKG_VERSION")))
        .with_instructions(format!(
            "convagent relays messages on WhatsApp, SMS, Telegram and Slack. {mode}"
        ))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let filter = ConversationFilter {
            channel: None,
            sender: None,
            limit: 20,
        };
        let recent = self
            .read(move |s| s.conversations(&filter))
            .await
            .map_err(|e| ErrorData::internal_error(e, None))?;
        let mut resources = vec![
            Resource::new(HEALTH_URI, "health")
                .with_description("The outbox (queued, dead letters) and the LLM breakers")
                .with_mime_type(RESOURCE_MIME),
        ];
        resources.extend(recent.into_iter().map(|c| {
            let who = c.display_name.clone().unwrap_or_else(|| c.sender.clone());
            Resource::new(
                format!("{CONVERSATION_URI}{}", c.id),
                format!("{} conversation with {who}", c.channel.as_str()),
            )
            .with_mime_type(RESOURCE_MIME)
        }));
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(ListResourceTemplatesResult::with_all_items(vec![
            ResourceTemplate::new(format!("{CONVERSATION_URI}{{id}}"), "conversation")
                .with_description("A conversation and its newest 50 messages")
                .with_mime_type(RESOURCE_MIME),
        ]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let value = if uri == HEALTH_URI {
            self.health().await
        } else if let Some(id) = uri.strip_prefix(CONVERSATION_URI) {
            let id: i64 = id.parse().map_err(|_| {
                ErrorData::invalid_params(format!("{uri}: a conversation id is a number"), None)
            })?;
            self.conversation_with_messages(id, 50)
                .await
                .and_then(|c| serde_json::to_value(c).map_err(|e| e.to_string()))
        } else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri} (see resources/list)"),
                None,
            ));
        };
        let value = value.map_err(|e| ErrorData::resource_not_found(e, None))?;
        let contents = ResourceContents::text(value.to_string(), uri).with_mime_type(RESOURCE_MIME);
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(OFFERED_VERSIONS)
    }

    /// rmcp hands a request of a method it knows but whose params it could
    /// not read here, as a custom one: that is invalid params (-32602), not
    /// an unknown method.
    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        let method = request.method;
        if SERVED_METHODS.contains(&method.as_str()) {
            let what = if request.params.is_some() {
                "malformed"
            } else {
                "missing"
            };
            return Err(ErrorData::invalid_params(
                format!(
                    "{method}: {what} params; see the method's schema in the MCP specification"
                ),
                None,
            ));
        }
        Err(ErrorData::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("no method {method} here"),
            None,
        ))
    }
}
