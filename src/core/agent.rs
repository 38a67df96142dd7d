//! The agent orchestrator (SPEC.md pipeline steps 4–7): refuse what the
//! guardrails refuse, build the context (with a summary of older turns once
//! a conversation grows long), ask the LLM chain, store the reply, all
//! writes through the store's writer. The daemon hands it stored messages
//! (`answer`); `chat` and tests have it store them first (`handle_turn`),
//! and a message answered before gets its stored reply back without an LLM
//! call. When every provider fails the user gets the canned fallback and
//! the message stays pending until a provider recovers.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use tracing::{Instrument, info, info_span, warn};

mod retrieve;

use super::approvals::{ApprovalState, Ask, OperatorEvent, Operators};
use super::context::{self, ContextWindow};
use super::embeddings::Embedder;
use super::guardrails::{Guardrails, SecretFilter, Violation};
use super::handoff::{self, Command, Handoff, HandoffConfig, Mode};
use super::knowledge::{KnowledgeConfig, MemoryConfig, Passage};
use super::limits::{self, Limits, Rule, Verdict};
use super::llm::{
    ChatMessage, Image, LlmError, LlmOutput, LlmProvider, LlmRequest, OnEvent, StreamEvent,
};
use super::media::{self, MediaConfig, MediaFiles};
use super::message::{InboundMessage, Role, Turn};
use super::people;
use super::ports::{
    Clock, Held, NewReply, Pending, PromptVersion, ReplyKind, SenderRef, StageSink, Store,
    StoreError, StoredMessage, Summary, TraceEvent, TurnRecord, Write, Written,
};
use super::tools::{ApprovalRule, ToolCall, ToolExchange, ToolResult, Tools};
use super::trace::{Outcome, Stage};

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// The system prompt stored as version 1 when the store has none.
    pub default_system_prompt: String,
    /// The model's context window, in tokens.
    pub context_budget: usize,
    /// Tokens of the window kept free for the reply.
    pub reply_reserve: usize,
    /// Sent when every LLM provider failed.
    pub fallback_reply: String,
    /// Summarise only conversations with more stored turns than this...
    pub summary_min_turns: u64,
    /// ...whose window is at least this full (fraction of the budget)...
    pub summary_threshold: f32,
    /// ...once at least this many turns fell out of it since the last summary.
    pub summary_batch: usize,
    /// Configured secrets: never echoed in a reply.
    pub secrets: Vec<String>,
    /// Characters of one message the model sees at most (the stored
    /// message keeps all of it).
    pub max_input_chars: usize,
    /// Checked before the LLM is called.
    pub limits: Limits,
    /// Tool calls one turn may make (`mcp.max_calls_per_turn`).
    pub max_tool_calls: usize,
    /// What a person is told for media the agent cannot take in (`[media]`).
    pub media: MediaConfig,
    /// When a person asks for a person, and how long a takeover lasts.
    pub handoff: HandoffConfig,
    /// How long a tool call marked `approve` waits for an answer
    /// (`mcp.approve_timeout_secs`).
    pub approve_timeout_ms: i64,
    /// What a turn takes from the documents (`[knowledge]`).
    pub knowledge: KnowledgeConfig,
    /// What a turn takes from the person's other conversations (`[memory]`).
    pub memory: MemoryConfig,
}

/// How a conversation's worker answers messages that queued up while its
/// previous turn ran (`agent.burst`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Burst {
    /// One turn for all of them: one answer that sees every message.
    #[default]
    Collect,
    /// One turn, and one reply, per message.
    Each,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            default_system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
            context_budget: 4096,
            reply_reserve: 512,
            fallback_reply: DEFAULT_FALLBACK_REPLY.to_string(),
            summary_min_turns: 50,
            summary_threshold: 0.8,
            summary_batch: 10,
            secrets: Vec::new(),
            max_input_chars: DEFAULT_MAX_INPUT_CHARS,
            limits: Limits::default(),
            max_tool_calls: 4,
            media: MediaConfig::default(),
            handoff: HandoffConfig::default(),
            approve_timeout_ms: 300_000,
            knowledge: KnowledgeConfig::default(),
            memory: MemoryConfig::default(),
        }
    }
}

pub const DEFAULT_MAX_INPUT_CHARS: usize = 4000;

pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful, concise assistant. Answer in plain text, in the user's language.";

pub const DEFAULT_FALLBACK_REPLY: &str = "Sorry, I can't answer right now. \
     I'll reply to this message as soon as I can.";

const SUMMARIZER_PROMPT: &str = "You summarise conversations. Write a concise summary \
     (under 150 words) of the conversation below, keeping names, facts, decisions and open \
     questions. Reply with the summary only.";

/// Whether an approved call may run.
enum Gate {
    /// Approved and claimed by this turn: run approval `id`.
    Run(i64),
    /// It ran before (this turn, asked again after a restart): its result.
    Ran(String),
    /// Not to run: why.
    No(String),
}

/// Characters of a tool's result the model is given at most.
const MAX_TOOL_RESULT_CHARS: usize = 16_000;
/// Characters of a tool call kept in its trace (name, arguments, result).
const MAX_TOOL_DETAIL_CHARS: usize = 2_000;

/// `text` cut to `max` characters, saying so.
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}… (cut)", &text[..cut]),
        None => text.to_string(),
    }
}

/// Token counts of several calls added up (none if none reported any).
fn add(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    }
}

/// Turns read at most when folding older turns into a summary.
const SUMMARY_READ_LIMIT: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Llm(#[from] LlmError),
}

/// The answer to one turn: one message, or a burst of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The (last) message answered.
    pub message_id: i64,
    /// Earlier messages of the burst the reply answers too.
    pub covers: Vec<i64>,
    pub conversation_id: i64,
    pub reply: StoredMessage,
    /// The reply was stored before (a redelivered message); no LLM call.
    pub from_store: bool,
    /// Turns of the conversation the model did not see (beyond the summary).
    pub dropped_turns: usize,
    /// For a fallback: why every provider failed.
    pub llm_error: Option<String>,
    /// A fallback or limit notice that was not sent again: the
    /// conversation already got one (since its last answer; in the limit's
    /// window).
    pub suppressed: bool,
    /// The messages were held back by this limit; the reply is its notice.
    pub limited: Option<Rule>,
    /// What the turn retrieved and gave the model (`retrieve`), in the
    /// order the model saw it: `[1]` is the first.
    pub sources: Vec<Passage>,
}

impl Reply {
    pub fn kind(&self) -> ReplyKind {
        self.reply.kind.unwrap_or(ReplyKind::Answer)
    }
}

/// The span every event of a turn is logged in: its correlation id (the
/// last message's), channel and size.
fn span(last: &InboundMessage, burst: usize) -> tracing::Span {
    info_span!(
        "message",
        correlation_id = %last.correlation_id,
        channel = %last.key.channel,
        burst,
    )
}

fn no_message() -> AgentError {
    AgentError::Store(StoreError::Invalid(
        "a turn needs at least one message".into(),
    ))
}

/// How often a cached prompt is read again, for a prompt another process
/// set.
pub const PROMPT_REFRESH_MS: i64 = 1_000;

/// The LLM's answer or why every provider failed, and how long it took.
struct Generated {
    result: Result<LlmOutput, LlmError>,
    latency_ms: u64,
}

/// A reply about to be stored.
struct Recorded<'a> {
    kind: ReplyKind,
    text: String,
    provider: &'a str,
    model: String,
    prompt_version: i64,
    tokens: (Option<u32>, Option<u32>),
    latency_ms: u64,
}

pub struct Agent {
    store: Arc<dyn Store>,
    llm: Arc<dyn LlmProvider>,
    clock: Arc<dyn Clock>,
    guardrails: Guardrails,
    settings: AgentSettings,
    stages: Option<Arc<dyn StageSink>>,
    /// The current prompt and when it was read.
    prompt: std::sync::Mutex<Option<(i64, PromptVersion)>>,
    /// The newest turns of conversations answered lately.
    turns: context::TurnCache,
    /// Tools the model may call (`[[mcp.servers]]`).
    tools: Option<Arc<dyn Tools>>,
    /// The fetched files of attachments, for a model that sees.
    files: Option<Arc<dyn MediaFiles>>,
    /// Who answers approvals (and is told of them and of people waiting).
    operators: Option<Arc<dyn Operators>>,
    /// What retrieval reads seldom (`retrieve.rs`).
    retrieval: std::sync::Mutex<retrieve::RetrievalCache>,
    /// Vectors for ranking `[knowledge]` (`[knowledge.embeddings]`).
    embedder: Option<Arc<dyn Embedder>>,
}

impl Agent {
    pub fn new(
        store: Arc<dyn Store>,
        llm: Arc<dyn LlmProvider>,
        clock: Arc<dyn Clock>,
        guardrails: Guardrails,
        settings: AgentSettings,
    ) -> Self {
        Agent {
            store,
            llm,
            clock,
            guardrails,
            settings,
            stages: None,
            prompt: std::sync::Mutex::new(None),
            turns: context::TurnCache::default(),
            tools: None,
            files: None,
            operators: None,
            retrieval: Default::default(),
            embedder: None,
        }
    }

    /// Tells `operators` what they should know (a person waits, a call
    /// asks for approval) and waits for their answers to approvals.
    /// Without them a call marked `approve` is refused.
    pub fn with_operators(mut self, operators: Arc<dyn Operators>) -> Self {
        self.operators = Some(operators);
        self
    }

    /// Gives the model that sees the images kept in `files`.
    pub fn with_files(mut self, files: Arc<dyn MediaFiles>) -> Self {
        self.files = Some(files);
        self
    }

    /// `[handoff]`: the daemon's workers hold a conversation a person took
    /// over until it runs out.
    pub fn handoff(&self) -> &HandoffConfig {
        &self.settings.handoff
    }

    /// Whether the images of a turn reach the model: the chain sees, and
    /// the fetched files are at hand.
    async fn sees(&self) -> bool {
        self.files.is_some() && self.llm.sees().await
    }

    /// Offers `tools` to the model on every turn.
    pub fn with_tools(mut self, tools: Arc<dyn Tools>) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Reports every stage of every message to `sink` as well.
    pub fn with_stages(mut self, sink: Arc<dyn StageSink>) -> Self {
        self.stages = Some(sink);
        self
    }

    fn stage(
        &self,
        message: &InboundMessage,
        stage: Stage,
        began: (i64, Instant),
        outcome: Outcome,
        detail: Option<String>,
    ) {
        if let Some(sink) = &self.stages {
            sink.record(TraceEvent {
                correlation_id: message.correlation_id.0.clone(),
                stage,
                attempt: None,
                started_at: began.0,
                duration_us: began.1.elapsed().as_micros() as u64,
                outcome,
                detail,
            });
        }
    }

    fn now(&self) -> (i64, Instant) {
        (self.clock.now_ms(), Instant::now())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn llm(&self) -> &Arc<dyn LlmProvider> {
        &self.llm
    }

    /// The current system prompt: read once, then again at most every
    /// [`PROMPT_REFRESH_MS`] (another process, `convagent chat`, may set
    /// one); a prompt set through [`Agent::set_prompt`] is current at once.
    fn prompt(&self) -> Result<PromptVersion, StoreError> {
        let now = self.clock.now_ms();
        let mut cached = self.prompt.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((read_at, prompt)) if now.saturating_sub(*read_at) < PROMPT_REFRESH_MS => {
                Ok(prompt.clone())
            }
            _ => {
                let prompt = self
                    .store
                    .ensure_prompt(&self.settings.default_system_prompt, now)?;
                *cached = Some((now, prompt.clone()));
                Ok(prompt)
            }
        }
    }

    /// Stores `text` as a new prompt version set by a person (`/prompt
    /// set`) and makes it current for the next turn.
    pub fn set_prompt(&self, text: &str) -> Result<PromptVersion, StoreError> {
        let now = self.clock.now_ms();
        let prompt = self.store.set_prompt(text, now)?;
        *self.prompt.lock().unwrap_or_else(|p| p.into_inner()) = Some((now, prompt.clone()));
        Ok(prompt)
    }

    /// Handles one inbound message, streaming the reply to `on_event` as it
    /// is generated (a stored, refused or fallback reply comes as one token).
    pub async fn handle(
        &self,
        message: &InboundMessage,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        self.handle_turn(std::slice::from_ref(message), on_event)
            .await
    }

    /// Stores `messages` (a conversation's new messages in arrival order:
    /// one, or a burst) and answers them in one turn. A redelivered message
    /// that has its answer gets the stored answer back, without an LLM call.
    pub async fn handle_turn(
        &self,
        messages: &[InboundMessage],
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let Some(last) = messages.last() else {
            return Err(no_message());
        };
        async {
            let mut turn = Vec::with_capacity(messages.len());
            let mut last_duplicate = false;
            for message in messages {
                tracing::debug!(text = %message.text, "inbound message");
                let accepted = self
                    .store
                    .write(Write::Accept(message.clone()))
                    .await?
                    .accepted()?;
                info!(
                    message_id = accepted.message_id,
                    conversation_id = accepted.conversation_id,
                    duplicate = accepted.duplicate,
                    "message stored"
                );
                last_duplicate = accepted.duplicate;
                turn.push(Pending {
                    message_id: accepted.message_id,
                    conversation_id: accepted.conversation_id,
                    message: message.clone(),
                    human_since: None,
                });
            }
            if let Some(last) = turn.last().filter(|_| last_duplicate)
                && let Some(reply) = self.store.reply_to(last.message_id)?
            {
                info!(
                    reply_id = reply.id,
                    "already answered; returning the stored reply"
                );
                on_event(StreamEvent::Token(&reply.text));
                return Ok(self.reply(&turn, reply, true, 0, None));
            }
            self.answer_turn(&turn, on_event).await
        }
        .instrument(span(last, messages.len()))
        .await
    }

    /// Answers a turn of stored messages (a conversation's pending ones, in
    /// arrival order) with one reply that sees all of them, linked to the
    /// last and recorded as covering the rest. The daemon's workers call
    /// this with what they took from the work queue: nothing is stored again.
    pub async fn answer(
        &self,
        turn: &[Pending],
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let Some(last) = turn.last() else {
            return Err(no_message());
        };
        self.answer_turn(turn, on_event)
            .instrument(span(&last.message, turn.len()))
            .await
    }

    /// guard → context → generate → persist.
    async fn answer_turn(
        &self,
        turn: &[Pending],
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let prompt = self.prompt()?;
        if let Some(answered) = self.command(turn, &prompt, on_event).await? {
            return Ok(answered);
        }
        let turn = match self.limit(turn, &prompt, on_event).await? {
            Ok(answerable) => &turn[..answerable],
            Err(held) => return Ok(held),
        };
        let last = &turn[turn.len() - 1];
        info!(
            message_id = last.message_id,
            conversation_id = last.conversation_id,
            burst = turn.len(),
            "answering"
        );
        if let Some(notice) = self.media_notice(turn, &prompt, on_event).await? {
            return Ok(notice);
        }
        if let Some(refusal) = self.guard(turn, &prompt, on_event).await? {
            return Ok(refusal);
        }
        let mut window = self.context(last, &prompt).await?;
        let sources = self.retrieve(turn, &mut window).await;
        let generated = self.generate(last, &window, on_event).await;
        let mut reply = self
            .persist(turn, &prompt, &window, generated, on_event)
            .await?;
        reply.sources = sources;
        Ok(reply)
    }

    /// Each earlier message of a burst is traced as answered with the last
    /// (once it is: a fallback leaves them pending, to be tried again).
    fn trace_grouped(&self, turn: &[Pending]) {
        let Some((last, earlier)) = turn.split_last() else {
            return;
        };
        let began = self.now();
        for p in earlier {
            self.stage(
                &p.message,
                Stage::Grouped,
                began,
                Outcome::Ok,
                Some(format!("answered with {}", last.message.correlation_id)),
            );
        }
    }

    /// Step 4a: the limits. `Ok(n)`: answer the turn's first `n` messages
    /// (the rest wait for the next round); `Err`: the first messages were
    /// over a limit and are answered by its notice, sent now or, once per
    /// window, earlier.
    async fn limit(
        &self,
        turn: &[Pending],
        prompt: &PromptVersion,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Result<usize, Reply>, AgentError> {
        let limits = &self.settings.limits;
        let Some(query) = limits.query(turn) else {
            return Ok(Ok(turn.len()));
        };
        let began = self.now();
        let usage = self.store.usage(&query)?;
        let (count, rule, notice) = match limits.verdict(query.channel, turn.len(), &usage, began.0)
        {
            Verdict::Answer(n) => return Ok(Ok(n)),
            Verdict::Hold {
                count,
                rule,
                notice,
            } => (count, rule, notice),
        };
        let held = &turn[..count];
        let last = &held[count - 1];
        for p in held {
            self.stage(
                &p.message,
                Stage::Guarded,
                began,
                Outcome::Limited,
                Some(rule.to_string()),
            );
        }
        info!(rule = %rule, held = count, notice_sent_before = notice.is_some(), "over a limit");
        let reply = match notice {
            Some(notice) => self
                .store
                .write(Write::Hold(Held {
                    conversation_id: last.conversation_id,
                    messages: held.iter().map(|p| p.message_id).collect(),
                    notice,
                    rule: rule.to_string(),
                    at: self.clock.now_ms(),
                }))
                .await?
                .reply()?,
            None => {
                let reply = self
                    .record(
                        held,
                        Recorded {
                            kind: ReplyKind::Refusal,
                            text: limits.notice(rule).to_string(),
                            provider: limits::NOTICE_PROVIDER,
                            model: rule.to_string(),
                            prompt_version: prompt.version,
                            tokens: (None, None),
                            latency_ms: 0,
                        },
                        held.iter()
                            .map(|p| (p.message_id, rule.to_string()))
                            .collect(),
                    )
                    .await?;
                on_event(StreamEvent::Token(&reply.text));
                reply
            }
        };
        self.stage(
            &last.message,
            Stage::ReplyStored,
            began,
            if notice.is_some() {
                Outcome::Held
            } else {
                Outcome::Refusal
            },
            Some(format!("notice {}", reply.id)),
        );
        Ok(Err(Reply {
            suppressed: notice.is_some(),
            limited: Some(rule),
            ..self.reply(held, reply, false, 0, None)
        }))
    }

    /// Before all else, what a person asks of convagent itself, with the
    /// turn's last command answered (by its `[handoff]` notice, a `refusal`
    /// reply): `/human` or a trigger phrase hands the conversation to a
    /// person (`human` mode, in the store, so every daemon holds it);
    /// `/reset` closes the conversation (the next message starts a new
    /// one); `/stop` records that nothing more is to be sent to them (the
    /// outbox withholds what comes after this answer) until `/start`;
    /// `/help` says what they can ask.
    async fn command(
        &self,
        turn: &[Pending],
        prompt: &PromptVersion,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Option<Reply>, AgentError> {
        let config = &self.settings.handoff;
        let Some((mut command, keyword, said)) = turn.iter().rev().find_map(|p| {
            config
                .command(&p.message.text)
                .map(|c| (c, false, &p.message.text))
                .or_else(|| {
                    handoff::provider_keyword(&p.message).map(|c| (c, true, &p.message.text))
                })
        }) else {
            return Ok(None);
        };
        let last = &turn[turn.len() - 1];
        let key = &last.message.key;
        // "YES" opts back in only whom Twilio blocked; otherwise it is
        // just a word for the model.
        if keyword
            && command == Command::Start
            && self.store.opted_out(key.channel, &key.sender)?.is_none()
        {
            return Ok(None);
        }
        let began = self.now();
        // Twilio answers its own STOP keywords: the opt-out counts from
        // before our answer, which the outbox then withholds.
        if keyword && command == Command::Stop {
            self.store
                .write(Write::OptOut {
                    channel: key.channel,
                    sender: key.sender.clone(),
                    out: true,
                    at: began.0 - 1,
                })
                .await?;
        }
        let (provider, model) = match command {
            Command::Human => {
                self.store
                    .write(Write::Handoff(Handoff {
                        conversation_id: last.conversation_id,
                        mode: Mode::Human,
                        by: handoff::ASKED_BY_PERSON.into(),
                        at: began.0,
                    }))
                    .await?;
                self.stage(
                    &last.message,
                    Stage::Handoff,
                    began,
                    Outcome::Ok,
                    Some(format!("human, asked by {}", handoff::ASKED_BY_PERSON)),
                );
                if let Some(operators) = &self.operators {
                    operators
                        .tell(OperatorEvent::WaitingForPerson {
                            conversation_id: last.conversation_id,
                            key: key.clone(),
                            at: began.0,
                        })
                        .await;
                }
                (handoff::NOTICE_PROVIDER, Mode::Human.as_str())
            }
            // Opted in before the answer, which must not be withheld.
            Command::Start => {
                let was_out = self.store.opted_out(key.channel, &key.sender)?.is_some();
                self.store
                    .write(Write::OptOut {
                        channel: key.channel,
                        sender: key.sender.clone(),
                        out: false,
                        at: began.0,
                    })
                    .await?;
                // Telegram sends /start when someone first opens the chat:
                // for them, what they can ask.
                if !was_out {
                    command = Command::Help;
                }
                (handoff::COMMAND_PROVIDER, "start")
            }
            Command::Stop | Command::Link => (handoff::COMMAND_PROVIDER, command.as_str()),
            Command::Reset | Command::Help => (handoff::COMMAND_PROVIDER, command.as_str()),
        };
        info!(command = command.as_str(), "a chat command");
        let text = match command {
            Command::Link => self.link(key, said, began.0).await?,
            _ => config.answer(command).to_string(),
        };
        let answer = (text, provider, model.to_string());
        let what = format!("/{} answer", command.as_str());
        let reply = self
            .refuse(turn, prompt, began, answer, Vec::new(), &what, on_event)
            .await?;
        match command {
            Command::Reset => {
                self.store.close_conversation(key, began.0)?;
            }
            // Opted out after the answer: it is the last thing they get
            // (the outbox withholds what was stored after this moment).
            Command::Stop if !keyword => {
                self.store
                    .write(Write::OptOut {
                        channel: key.channel,
                        sender: key.sender.clone(),
                        out: true,
                        at: self.clock.now_ms().max(reply.reply.created_at),
                    })
                    .await?;
            }
            _ => {}
        }
        Ok(Some(reply))
    }

    /// `/link`: a code for this chat's person, to send from another chat;
    /// `/link CODE`: this chat joins the person the code was made for. The
    /// answer says what happened (or why not).
    async fn link(
        &self,
        key: &super::message::ConversationKey,
        said: &str,
        at: i64,
    ) -> Result<String, AgentError> {
        let sender = SenderRef {
            channel: key.channel,
            id: key.sender.clone(),
        };
        let argument = said.trim().split_once(char::is_whitespace).map(|(_, a)| a);
        let Some(argument) = argument.filter(|a| !a.trim().is_empty()) else {
            let code = people::new_code();
            let made = self
                .store
                .write(Write::LinkCode {
                    sender,
                    code: code.clone(),
                    at,
                })
                .await;
            return Ok(match made {
                Ok(_) => format!(
                    "Your link code is {code}. Within 10 minutes, send \"/link {code}\" from \
                     your other chat (WhatsApp, SMS, Telegram or Slack): both will be you."
                ),
                Err(StoreError::Invalid(why)) => format!("No code: {why}."),
                Err(e) => return Err(e.into()),
            });
        };
        let Some(code) = people::parse_code(argument) else {
            return Ok(format!(
                "A link code is {} digits, like \"/link 482913\". Send /link alone for one.",
                people::CODE_DIGITS
            ));
        };
        let redeemed = self
            .store
            .write(Write::Redeem { sender, code, at })
            .await
            .and_then(Written::redeemed)?;
        Ok(match redeemed {
            Ok(person) => {
                info!(person = person.id, "identities linked by code");
                // Their other conversations are read afresh from now on.
                self.forget_people();
                let channels: Vec<&str> = person.channels().iter().map(|c| c.as_str()).collect();
                format!(
                    "Linked: your {} chats are one person to me now.",
                    channels.join(" and ")
                )
            }
            Err(why) => format!("Not linked: {why}."),
        })
    }

    /// Step 4b: a turn that is nothing but media the agent cannot take in
    /// (a voice note with no speech-to-text) gets its sense's notice, once
    /// per conversation, sense and hour; after that the model answers such
    /// a turn from its stand-ins. Never silence, never a guess at what a
    /// voice note said.
    async fn media_notice(
        &self,
        turn: &[Pending],
        prompt: &PromptVersion,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Option<Reply>, AgentError> {
        let messages = || turn.iter().map(|p| &p.message);
        let Some(sense) = media::unmet(messages(), false) else {
            return Ok(None);
        };
        // Whether the model sees is asked only when it decides: a turn whose
        // fetched images a model that sees would take in.
        if media::unmet(messages(), true).is_none() && self.sees().await {
            return Ok(None);
        }
        let last = &turn[turn.len() - 1];
        let began = self.now();
        let told = self.store.last_reply_by(
            last.conversation_id,
            media::NOTICE_PROVIDER,
            sense.as_str(),
        )?;
        if told.is_some_and(|at| began.0 - at < media::NOTICE_EVERY_MS) {
            return Ok(None);
        }
        info!(
            sense = sense.as_str(),
            "media the agent cannot take in: notice"
        );
        let notice = (
            self.settings.media.notice(sense).to_string(),
            media::NOTICE_PROVIDER,
            sense.as_str().to_string(),
        );
        let what = format!("{} notice", sense.as_str());
        self.refuse(turn, prompt, began, notice, Vec::new(), &what, on_event)
            .await
            .map(Some)
    }

    /// Step 4: every message of the turn through the guardrails. A refusal
    /// is stored (with each violation) and returned; `None` lets it pass.
    async fn guard(
        &self,
        turn: &[Pending],
        prompt: &PromptVersion,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Option<Reply>, AgentError> {
        let last = &turn[turn.len() - 1];
        let began = self.now();
        let violations: Vec<(i64, Violation)> = turn
            .iter()
            .filter_map(|p| Some((p.message_id, self.guardrails.check(&p.message.text)?)))
            .collect();
        let Some((_, first)) = violations.first() else {
            self.stage(&last.message, Stage::Guarded, began, Outcome::Pass, None);
            return Ok(None);
        };
        self.stage(
            &last.message,
            Stage::Guarded,
            began,
            Outcome::Refused,
            Some(first.rule.clone()),
        );
        info!(rule = %first.rule, "guardrail refused the message");
        let violations = violations
            .iter()
            .map(|(id, v)| (*id, v.rule.clone()))
            .collect();
        let refusal = (first.refusal.clone(), "guardrail", first.rule.clone());
        self.refuse(turn, prompt, began, refusal, violations, "reply", on_event)
            .await
            .map(Some)
    }

    /// A canned refusal (a guardrail's, a media notice): `(text, provider,
    /// model)` recorded as the turn's reply with its `violations`, streamed,
    /// and traced as stored (`what` and the reply's id).
    #[allow(clippy::too_many_arguments)]
    async fn refuse(
        &self,
        turn: &[Pending],
        prompt: &PromptVersion,
        began: (i64, Instant),
        (text, provider, model): (String, &str, String),
        violations: Vec<(i64, String)>,
        what: &str,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let reply = self
            .record(
                turn,
                Recorded {
                    kind: ReplyKind::Refusal,
                    text,
                    provider,
                    model,
                    prompt_version: prompt.version,
                    tokens: (None, None),
                    latency_ms: 0,
                },
                violations,
            )
            .await?;
        on_event(StreamEvent::Token(&reply.text));
        self.stage(
            &turn[turn.len() - 1].message,
            Stage::ReplyStored,
            began,
            Outcome::Refusal,
            Some(format!("{what} {}", reply.id)),
        );
        Ok(self.reply(turn, reply, false, 0, None))
    }

    /// Step 6: the LLM chain, streamed through the secret filter; the tools
    /// it asks for are called (up to `max_tool_calls`) and it is asked again
    /// with their results.
    async fn generate(
        &self,
        last: &Pending,
        window: &ContextWindow,
        on_event: &mut OnEvent<'_>,
    ) -> Generated {
        let mut request =
            LlmRequest::new(window.messages.clone(), self.settings.reply_reserve as u32);
        if let Some(tools) = &self.tools
            && self.settings.max_tool_calls > 0
        {
            request.tools = tools.specs();
        }
        let began = self.now();
        let mut filter = SecretFilter::new(&self.settings.secrets);
        let mut calls_made = 0;
        let mut tokens = (None, None);
        let result = loop {
            let result = self
                .llm
                .generate(&request, &mut |event| match event {
                    StreamEvent::Token(t) => {
                        let safe = filter.push(t);
                        if !safe.is_empty() {
                            on_event(StreamEvent::Token(&safe));
                        }
                    }
                    StreamEvent::Restart { .. } => {
                        filter = SecretFilter::new(&self.settings.secrets);
                        on_event(event);
                    }
                })
                .await;
            if let Ok(output) = &result {
                tokens = (
                    add(tokens.0, output.prompt_tokens),
                    add(tokens.1, output.completion_tokens),
                );
            }
            match (result, &self.tools) {
                // Each round makes a call at least: the rounds are bounded
                // even by a model that asks for tools it was not offered.
                (Ok(output), Some(tools))
                    if !output.tool_calls.is_empty()
                        && !request.tools.is_empty()
                        && request.exchanges.len() < self.settings.max_tool_calls =>
                {
                    let mut results = Vec::new();
                    for call in &output.tool_calls {
                        let result = self
                            .call_tool(tools.as_ref(), call, last, &mut calls_made)
                            .await;
                        results.push(result);
                    }
                    request.exchanges.push(ToolExchange {
                        text: output.text,
                        calls: output.tool_calls,
                        results,
                    });
                    if calls_made >= self.settings.max_tool_calls {
                        // No more calls: the next answer is the reply.
                        request.tools.clear();
                    }
                }
                (result, _) => break result,
            }
        };
        let latency_ms = began.1.elapsed().as_millis() as u64;
        let (outcome, detail) = match &result {
            Ok(o) => (Outcome::Ok, format!("{}/{}", o.provider, o.model)),
            Err(e) => (Outcome::Failed, e.to_string()),
        };
        self.stage(&last.message, Stage::LlmCall, began, outcome, Some(detail));
        let result = result.map(|mut output| {
            let tail = filter.finish();
            if !tail.is_empty() {
                on_event(StreamEvent::Token(&tail));
            }
            // What was said along with tool calls was streamed too: the
            // stored reply is everything the person saw.
            let said: String = request.exchanges.iter().map(|e| e.text.as_str()).collect();
            output.text = filter.redact(&(said + &output.text));
            (output.prompt_tokens, output.completion_tokens) = tokens;
            output
        });
        Generated { result, latency_ms }
    }

    /// One tool call the model asked for, within the turn's limit. Configured
    /// secrets are taken out of its arguments (nothing leaves through a
    /// tool) and of its result (nothing comes back into the reply); a
    /// failure becomes a result that tells the model to answer without it.
    async fn call_tool(
        &self,
        tools: &dyn Tools,
        call: &ToolCall,
        last: &Pending,
        calls_made: &mut usize,
    ) -> ToolResult {
        let message = &last.message;
        let began = self.now();
        let filter = SecretFilter::new(&self.settings.secrets);
        let arguments = filter.redact(&call.arguments.to_string());
        if *calls_made >= self.settings.max_tool_calls {
            let why = format!(
                "not run: this turn's limit of {} tool calls was reached",
                self.settings.max_tool_calls
            );
            self.stage(
                message,
                Stage::ToolCall,
                began,
                Outcome::Limited,
                Some(format!("{} {arguments}: {why}", call.name)),
            );
            return ToolResult {
                text: format!("The tool was {why}. Answer without it."),
                failed: true,
            };
        }
        *calls_made += 1;
        let safe_call = ToolCall {
            arguments: serde_json::from_str(&arguments)
                .unwrap_or(serde_json::Value::String(arguments.clone())),
            ..call.clone()
        };
        let mut approval = None;
        if let Some(rule) = tools.needs_approval(&call.name) {
            match self.approved(last, &call.name, &arguments, rule).await {
                Gate::Run(id) => approval = Some(id),
                Gate::Ran(text) => {
                    return ToolResult {
                        text,
                        failed: false,
                    };
                }
                Gate::No(why) => {
                    info!(tool = %call.name, %why, "tool call not approved");
                    return ToolResult {
                        text: format!("The call was not approved: {why}. Answer without it."),
                        failed: true,
                    };
                }
            }
        }
        let result = tools.call(&safe_call).await;
        if let Some(id) = approval {
            // Kept for the same turn asked again after a restart.
            let kept = match &result {
                Ok(text) => clip(&filter.redact(text), MAX_TOOL_RESULT_CHARS),
                Err(why) => format!("The tool failed: {}.", filter.redact(why)),
            };
            if let Err(e) = self
                .store
                .write(Write::ApprovalResult { id, result: kept })
                .await
            {
                warn!(error = %e, approval = id, "cannot keep an approved call's result");
            }
        }
        let (outcome, result) = match result {
            Ok(text) => (
                Outcome::Ok,
                ToolResult {
                    text: clip(&filter.redact(&text), MAX_TOOL_RESULT_CHARS),
                    failed: false,
                },
            ),
            Err(why) => (
                Outcome::Failed,
                ToolResult {
                    text: format!(
                        "The tool failed: {}. Answer without it.",
                        filter.redact(&why)
                    ),
                    failed: true,
                },
            ),
        };
        info!(tool = %call.name, failed = result.failed, "tool called");
        self.stage(
            message,
            Stage::ToolCall,
            began,
            outcome,
            Some(clip(
                &format!("{} {arguments} → {}", call.name, result.text),
                MAX_TOOL_DETAIL_CHARS,
            )),
        );
        result
    }

    /// A call marked `approve`: asked in the store (or found asked by this
    /// turn before a restart), told to the operators, and waited for.
    /// Approved, it is claimed so that it runs once.
    async fn approved(
        &self,
        last: &Pending,
        tool: &str,
        arguments: &str,
        rule: ApprovalRule,
    ) -> Gate {
        let Some(operators) = &self.operators else {
            return Gate::No(
                "nobody can approve calls here (`convagent serve` asks operators)".into(),
            );
        };
        let at = self.clock.now_ms();
        let ask = Ask {
            conversation_id: last.conversation_id,
            message_id: last.message_id,
            correlation_id: last.message.correlation_id.0.clone(),
            tool: tool.to_string(),
            arguments: arguments.to_string(),
            at,
            deadline_at: at + self.settings.approve_timeout_ms,
        };
        let asked = self
            .store
            .write(Write::Ask(ask))
            .await
            .and_then(Written::approval);
        let (mut approval, new) = match asked {
            Ok(asked) => asked,
            Err(e) => return Gate::No(format!("it could not be asked for ({e})")),
        };
        if new {
            info!(
                tool,
                approval = approval.id,
                "a tool call waits for approval"
            );
            if let Some(sink) = &self.stages {
                sink.record(approval.trace(at));
            }
            operators
                .tell(OperatorEvent::ApprovalAsked {
                    approval: approval.clone(),
                    key: last.message.key.clone(),
                    in_chat: rule.in_chat,
                })
                .await;
        }
        if approval.state == ApprovalState::Pending {
            approval = match operators.await_answer(&approval).await {
                Ok(answered) => answered,
                Err(e) => return Gate::No(format!("its answer could not be read ({e})")),
            };
        }
        match approval.state {
            ApprovalState::Approved => match (approval.ran_at, approval.result) {
                (None, _) => {
                    let claimed = self
                        .store
                        .write(Write::RunApproved {
                            id: approval.id,
                            at: self.clock.now_ms(),
                        })
                        .await
                        .and_then(Written::claimed);
                    match claimed {
                        Ok(true) => Gate::Run(approval.id),
                        Ok(false) => Gate::No("another turn runs it".into()),
                        Err(e) => Gate::No(format!("its run could not be recorded ({e})")),
                    }
                }
                (Some(_), Some(result)) => Gate::Ran(result),
                (Some(_), None) => {
                    Gate::No("it was started before a restart and what it did is not known".into())
                }
            },
            ApprovalState::Denied => Gate::No(format!(
                "{} said no",
                approval.decided_by.as_deref().unwrap_or("an operator")
            )),
            ApprovalState::Expired | ApprovalState::Pending => {
                Gate::No("nobody answered in time".into())
            }
        }
    }

    /// Step 7: the answer, or in an outage the fallback (once per
    /// conversation until it is answered again), stored with the turn.
    async fn persist(
        &self,
        turn: &[Pending],
        prompt: &PromptVersion,
        window: &ContextWindow,
        generated: Generated,
        on_event: &mut OnEvent<'_>,
    ) -> Result<Reply, AgentError> {
        let last = &turn[turn.len() - 1];
        let began = self.now();
        let latency_ms = generated.latency_ms;
        let error = match generated.result {
            Ok(output) => {
                info!(
                    provider = %output.provider,
                    model = %output.model,
                    latency_ms,
                    completion_tokens = output.completion_tokens,
                    "LLM replied"
                );
                let reply = self
                    .record(
                        turn,
                        Recorded {
                            kind: ReplyKind::Answer,
                            text: output.text,
                            provider: &output.provider,
                            model: output.model.clone(),
                            prompt_version: prompt.version,
                            tokens: (output.prompt_tokens, output.completion_tokens),
                            latency_ms,
                        },
                        Vec::new(),
                    )
                    .await?;
                info!(reply_id = reply.id, "reply stored");
                self.stage(
                    &last.message,
                    Stage::ReplyStored,
                    began,
                    Outcome::Answer,
                    Some(format!("reply {}", reply.id)),
                );
                return Ok(self.reply(turn, reply, false, window.dropped_turns, None));
            }
            Err(error) => error.to_string(),
        };
        // One fallback per conversation until it is answered again: in an
        // outage, each new message does not get another.
        let previous = self
            .store
            .latest_reply(last.conversation_id)?
            .filter(|r| r.kind == Some(ReplyKind::Fallback));
        let suppressed = previous.is_some();
        let reply = match previous {
            Some(previous) => {
                info!(
                    error = %error,
                    fallback_id = previous.id,
                    "every LLM provider failed; the conversation already has a fallback reply"
                );
                previous
            }
            None => {
                warn!(error = %error, "every LLM provider failed; sending the fallback reply");
                self.record(
                    turn,
                    Recorded {
                        kind: ReplyKind::Fallback,
                        text: self.settings.fallback_reply.clone(),
                        provider: "fallback",
                        model: String::new(),
                        prompt_version: prompt.version,
                        tokens: (None, None),
                        latency_ms,
                    },
                    Vec::new(),
                )
                .await?
            }
        };
        on_event(StreamEvent::Token(&reply.text));
        self.stage(
            &last.message,
            Stage::ReplyStored,
            began,
            if suppressed {
                Outcome::FallbackAlreadySent
            } else {
                Outcome::Fallback
            },
            Some(format!("reply {}; the message stays pending", reply.id)),
        );
        Ok(Reply {
            suppressed,
            ..self.reply(turn, reply, suppressed, window.dropped_turns, Some(error))
        })
    }

    /// Stores the turn's reply (and its violations) through the store's
    /// writer, in one transaction.
    async fn record(
        &self,
        turn: &[Pending],
        reply: Recorded<'_>,
        violations: Vec<(i64, String)>,
    ) -> Result<StoredMessage, StoreError> {
        let (last, earlier) = turn.split_last().expect("a turn has a message");
        let record = TurnRecord {
            message_id: last.message_id,
            covers: earlier.iter().map(|p| p.message_id).collect(),
            violations,
            reply: NewReply {
                kind: reply.kind,
                text: reply.text,
                provider: reply.provider.to_string(),
                model: reply.model,
                prompt_version: reply.prompt_version,
                prompt_tokens: reply.tokens.0,
                completion_tokens: reply.tokens.1,
                latency_ms: reply.latency_ms,
                created_at: self.clock.now_ms(),
            },
        };
        let kind = reply.kind;
        let stored = self.store.write(Write::Turn(record)).await?.reply()?;
        if kind != ReplyKind::Fallback {
            self.trace_grouped(turn);
        }
        Ok(stored)
    }

    fn reply(
        &self,
        turn: &[Pending],
        reply: StoredMessage,
        from_store: bool,
        dropped_turns: usize,
        llm_error: Option<String>,
    ) -> Reply {
        let (last, earlier) = turn.split_last().expect("a turn has a message");
        Reply {
            message_id: last.message_id,
            covers: earlier.iter().map(|p| p.message_id).collect(),
            conversation_id: last.conversation_id,
            reply,
            from_store,
            dropped_turns,
            llm_error,
            suppressed: false,
            limited: None,
            sources: Vec::new(),
        }
    }

    /// The model's view: prompt + latest summary + the newest turns after
    /// it that fit. Summarises first when the conversation has outgrown
    /// the window (see [`AgentSettings`]).
    async fn context(
        &self,
        last: &Pending,
        prompt: &PromptVersion,
    ) -> Result<ContextWindow, StoreError> {
        let began = self.now();
        let window = self.window(last, prompt).await?;
        self.stage(
            &last.message,
            Stage::ContextBuilt,
            began,
            Outcome::Ok,
            Some(format!(
                "{} messages, ~{} tokens, {} turns dropped",
                window.messages.len(),
                window.estimated_tokens,
                window.dropped_turns
            )),
        );
        info!(
            prompt_version = prompt.version,
            messages = window.messages.len(),
            dropped_turns = window.dropped_turns,
            estimated_tokens = window.estimated_tokens,
            "context built"
        );
        Ok(window)
    }

    async fn window(
        &self,
        accepted: &Pending,
        prompt: &PromptVersion,
    ) -> Result<ContextWindow, StoreError> {
        let (budget, reserve) = (self.settings.context_budget, self.settings.reply_reserve);
        let conversation = accepted.conversation_id;
        let mut summary = self.store.latest_summary(conversation)?;
        let mut turns = self.turns.gather(
            self.store.as_ref(),
            conversation,
            accepted.message_id,
            budget,
        )?;
        for turn in turns.iter_mut().filter(|t| t.role == Role::User) {
            context::cap_chars(&mut turn.text, self.settings.max_input_chars);
        }
        let after = |s: &Option<Summary>| {
            let covered = s.as_ref().map_or(0, |s| s.to_message_id);
            turns
                .iter()
                .filter(|t| t.message_id > covered)
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut recent = after(&summary);
        let mut window = context::build(
            &prompt.text,
            summary.as_ref().map(|s| s.text.as_str()),
            &recent,
            budget,
            reserve,
        );

        // When the turns read reach back past the summary, the turns it does
        // not cover before the window are the dropped ones: too few to fold
        // is known without reading them again.
        let covered = summary.as_ref().map_or(0, |s| s.to_message_id);
        let too_few = turns.first().is_some_and(|t| t.message_id <= covered)
            && window.dropped_turns < self.settings.summary_batch;
        if !too_few && self.should_summarize(conversation, &window)? {
            let first_kept = recent[window.dropped_turns].message_id;
            if let Some(new) = self
                .summarize(conversation, summary.as_ref(), first_kept)
                .await?
            {
                summary = Some(new);
                recent = after(&summary);
                window = context::build(
                    &prompt.text,
                    summary.as_ref().map(|s| s.text.as_str()),
                    &recent,
                    budget,
                    reserve,
                );
            }
        }
        self.show_images(&mut window, &recent).await;
        Ok(window)
    }

    /// Puts the newest images of the turns in the window on their messages,
    /// for a model that sees: at most `[media] max_images`; a file no longer
    /// kept here is read by its stand-in only (the text has it anyway).
    async fn show_images(&self, window: &mut ContextWindow, recent: &[Turn]) {
        let Some(files) = &self.files else { return };
        let kept = &recent[window.dropped_turns.min(recent.len())..];
        if kept.iter().all(|t| t.images.is_empty()) || !self.llm.sees().await {
            return;
        }
        let first = window.messages.len() - kept.len();
        let mut left = self.settings.media.max_images;
        for (message, turn) in window.messages[first..].iter_mut().zip(kept).rev() {
            for image in turn.images.iter().rev() {
                if left == 0 {
                    return;
                }
                if let Some(bytes) = files.get(&image.file) {
                    message.images.insert(
                        0,
                        Image {
                            mime: image.mime.clone(),
                            bytes: bytes.into(),
                        },
                    );
                    left -= 1;
                }
            }
        }
    }

    fn should_summarize(
        &self,
        conversation: i64,
        window: &ContextWindow,
    ) -> Result<bool, StoreError> {
        if window.dropped_turns == 0 {
            return Ok(false);
        }
        let available = self
            .settings
            .context_budget
            .saturating_sub(self.settings.reply_reserve);
        if (window.estimated_tokens as f32) < self.settings.summary_threshold * available as f32 {
            return Ok(false);
        }
        let turns = self
            .store
            .conversation(conversation)?
            .map_or(0, |c| c.message_count);
        Ok(turns > self.settings.summary_min_turns)
    }

    /// Folds the turns before `first_kept` that the previous summary does
    /// not cover into a new summary, once there are enough of them. Each
    /// range is summarised once; a failed summary leaves the context as is.
    async fn summarize(
        &self,
        conversation: i64,
        previous: Option<&Summary>,
        first_kept: i64,
    ) -> Result<Option<Summary>, StoreError> {
        let covered = previous.map_or(0, |s| s.to_message_id);
        let mut fold: Vec<Turn> = self
            .store
            .recent_turns(conversation, first_kept - 1, SUMMARY_READ_LIMIT)?
            .into_iter()
            .filter(|t| t.message_id > covered)
            .collect();
        if fold.len() < self.settings.summary_batch {
            return Ok(None);
        }
        // The summariser's own input must fit its window too.
        let room = self.settings.context_budget / 2;
        while fold
            .iter()
            .map(|t| context::estimate_tokens(&t.text))
            .sum::<usize>()
            > room
            && fold.len() > 1
        {
            fold.remove(0);
        }
        let (Some(first), Some(last)) = (fold.first(), fold.last()) else {
            return Ok(None);
        };
        let (from, to) = (
            previous.map_or(first.message_id, |s| s.from_message_id),
            last.message_id,
        );

        let mut transcript = String::new();
        if let Some(p) = previous {
            transcript.push_str(&format!("Summary so far: {}\n\n", p.text));
        }
        transcript.push_str("Conversation:\n");
        for t in &fold {
            let who = if t.role == Role::User {
                "user"
            } else {
                "assistant"
            };
            transcript.push_str(&format!("{who}: {}\n", t.text));
        }
        let request = LlmRequest::new(
            vec![
                ChatMessage::new(Role::System, SUMMARIZER_PROMPT),
                ChatMessage::new(Role::User, transcript),
            ],
            self.settings.reply_reserve.min(256) as u32,
        );
        let output = match self.llm.generate(&request, &mut |_| {}).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %e, "summarising older turns failed; continuing without");
                return Ok(None);
            }
        };
        let filter = SecretFilter::new(&self.settings.secrets);
        let summary = self
            .store
            .write(Write::Summary(Summary {
                conversation_id: conversation,
                from_message_id: from,
                to_message_id: to,
                text: filter.redact(output.text.trim()),
                provider: output.provider,
                model: output.model,
                created_at: self.clock.now_ms(),
            }))
            .await?
            .summary()?;
        info!(from, to, turns = fold.len(), "older turns summarised");
        Ok(Some(summary))
    }
}
