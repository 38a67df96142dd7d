//! The agent: stores, builds context, calls the LLM once per message, and
//! answers a redelivered message from the store.

use convagent::core::ports::all::*;
use std::sync::Arc;

use convagent::adapters::channels::cli;
use convagent::adapters::store::SqliteStore;
use convagent::core::{
    Agent, AgentSettings, Channel, ConversationKey, Guardrails, LlmProvider, Role, StreamEvent,
    estimate_tokens,
};

use crate::support::{FakeClock, FakeLlm};

pub fn agent_over(
    store: Arc<SqliteStore>,
    llm: Arc<dyn LlmProvider>,
    settings: AgentSettings,
) -> Agent {
    Agent::new(
        store,
        llm,
        Arc::new(FakeClock::at(1_700_000_000_000)),
        Guardrails::new(&[]).unwrap(),
        settings,
    )
}

fn agent_with(llm: Arc<FakeLlm>, settings: AgentSettings) -> (Agent, Arc<SqliteStore>) {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    (agent_over(store.clone(), llm, settings), store)
}

pub fn key() -> ConversationKey {
    ConversationKey::new(Channel::Telegram, "42", "")
}

#[tokio::test]
async fn replies_once_and_answers_redeliveries_from_the_store() {
    let llm = Arc::new(FakeLlm::replying("Hello there, friend"));
    let (agent, store) = agent_with(llm.clone(), AgentSettings::default());
    let message = cli::inbound(&key(), "hi", 1_000);

    let mut streamed = String::new();
    let first = agent
        .handle(&message, &mut |e| {
            if let StreamEvent::Token(t) = e {
                streamed.push_str(t)
            }
        })
        .await
        .unwrap();
    assert_eq!(streamed, "Hello there, friend");
    assert!(!first.from_store);
    assert_eq!(first.reply.text, "Hello there, friend");
    assert_eq!(first.reply.prompt_version, Some(1));
    assert_eq!(first.reply.model.as_deref(), Some("fake-model"));
    assert_eq!(first.reply.completion_tokens, Some(3));
    assert!(first.reply.latency_ms.is_some());
    assert_eq!(
        first.reply.correlation_id.as_deref(),
        Some(message.correlation_id.0.as_str())
    );

    // The provider redelivers the same message: same reply, no LLM call.
    let mut again = String::new();
    let second = agent
        .handle(&message, &mut |e| {
            if let StreamEvent::Token(t) = e {
                again.push_str(t)
            }
        })
        .await
        .unwrap();
    assert!(second.from_store);
    assert_eq!(second.reply.id, first.reply.id);
    assert_eq!(again, "Hello there, friend");
    assert_eq!(llm.calls(), 1);
    assert_eq!(store.messages(first.conversation_id).unwrap().len(), 2);
}

#[tokio::test]
async fn context_is_system_prompt_plus_history_in_order() {
    let llm = Arc::new(FakeLlm::replying("ok"));
    let settings = AgentSettings {
        default_system_prompt: "You are a test.".into(),
        ..AgentSettings::default()
    };
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let clock = Arc::new(FakeClock::at(1_700_000_000_000));
    let agent = Agent::new(
        store.clone(),
        llm.clone(),
        clock.clone(),
        Guardrails::new(&[]).unwrap(),
        settings,
    );
    for text in ["one", "two", "three"] {
        agent
            .handle(&cli::inbound(&key(), text, 1), &mut |_| {})
            .await
            .unwrap();
    }
    let request = llm.last_request();
    let shape: Vec<(Role, &str)> = request
        .messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (Role::System, "You are a test."),
            (Role::User, "one"),
            (Role::Assistant, "ok"),
            (Role::User, "two"),
            (Role::Assistant, "ok"),
            (Role::User, "three"),
        ]
    );
    assert_eq!(request.max_tokens, 512);

    // A new prompt version applies from the next message and is recorded:
    // at once when set through the agent (`/prompt set` in chat)...
    agent.set_prompt("You are terse.").unwrap();
    let r = agent
        .handle(&cli::inbound(&key(), "four", 1), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(r.reply.prompt_version, Some(2));
    assert_eq!(llm.last_request().messages[0].content, "You are terse.");

    // ...and once the cached one is older than the refresh interval when
    // another process stored it.
    store.set_prompt("You are a pirate.", 3).unwrap();
    clock.advance(convagent::core::agent::PROMPT_REFRESH_MS - 1);
    agent
        .handle(&cli::inbound(&key(), "five", 1), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(llm.last_request().messages[0].content, "You are terse.");
    clock.advance(1);
    let r = agent
        .handle(&cli::inbound(&key(), "six", 1), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(r.reply.prompt_version, Some(3));
    assert_eq!(llm.last_request().messages[0].content, "You are a pirate.");
}

#[tokio::test]
async fn long_conversations_are_cut_to_the_budget_oldest_first() {
    let llm = Arc::new(FakeLlm::replying(&"reply words ".repeat(20)));
    let settings = AgentSettings {
        context_budget: 1024,
        reply_reserve: 256,
        summary_min_turns: u64::MAX,
        // A long conversation typed within a second.
        limits: convagent::core::Limits::none(),
        ..AgentSettings::default()
    };
    let (agent, _store) = agent_with(llm.clone(), settings);
    let mut last = None;
    for i in 0..60 {
        let text = format!("question {i} {}", "padding ".repeat(15));
        last = Some(
            agent
                .handle(&cli::inbound(&key(), &text, 1), &mut |_| {})
                .await
                .unwrap(),
        );
    }
    let request = llm.last_request();
    let used: usize = request
        .messages
        .iter()
        .map(|m| estimate_tokens(&m.content))
        .sum();
    assert!(
        used <= 1024 - 256,
        "context of {used} tokens exceeds the budget"
    );
    assert!(last.unwrap().dropped_turns > 0);
    assert!(
        request
            .messages
            .last()
            .unwrap()
            .content
            .starts_with("question 59 ")
    );
    assert!(
        !request
            .messages
            .iter()
            .any(|m| m.content.starts_with("question 0 "))
    );
    assert_eq!(request.max_tokens, 256);
}

#[tokio::test]
async fn the_model_sees_a_capped_message_and_the_store_keeps_all_of_it() {
    let llm = Arc::new(FakeLlm::replying("Got it."));
    let (agent, store) = agent_with(
        llm.clone(),
        AgentSettings {
            max_input_chars: 100,
            ..AgentSettings::default()
        },
    );
    let long = "é".repeat(250);
    let reply = agent
        .handle(&cli::inbound(&key(), &long, 1_000), &mut |_| {})
        .await
        .unwrap();
    let seen = llm.last_request().messages.last().unwrap().content.clone();
    assert!(seen.starts_with(&"é".repeat(100)), "{seen}");
    assert!(!seen.starts_with(&"é".repeat(101)), "cut at 100 characters");
    assert!(seen.ends_with("[…cut at 100 characters]"), "{seen}");
    let stored = store.messages(reply.conversation_id).unwrap();
    assert_eq!(stored[0].text, long, "the whole text is kept");
}

/// A turn that crosses the message rate is answered up to the limit: the
/// reply answers the last message under it, the model sees nothing after
/// it, and the next turn (what was left) gets the limit's notice.
#[tokio::test]
async fn a_turn_cut_by_a_limit_is_answered_as_the_messages_under_it() {
    let llm = Arc::new(FakeLlm::replying("answered"));
    let settings = AgentSettings {
        limits: convagent::core::Limits {
            messages_per_minute: 2,
            ..Default::default()
        },
        ..AgentSettings::default()
    };
    let (agent, store) = agent_with(llm.clone(), settings.clone());
    for (i, text) in ["m1", "m2", "m3", "m4"].iter().enumerate() {
        store
            .write(convagent::core::Write::Accept(cli::inbound(
                &key(),
                text,
                1_000 + i as i64,
            )))
            .await
            .unwrap();
    }
    let conversation = store.open_conversation(&key()).unwrap().unwrap();
    let turn = store.pending(conversation, 10).unwrap();
    let reply = agent.answer(&turn, &mut |_| {}).await.unwrap();
    assert_eq!(
        reply.message_id, turn[1].message_id,
        "m2 is the last answered"
    );
    assert_eq!(reply.covers, [turn[0].message_id]);
    assert_eq!(reply.limited, None);
    let requests = llm.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 1);
    let seen: Vec<&str> = requests[0]
        .messages
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .collect();
    assert_eq!(seen, ["m1", "m2"]);

    let rest = store.pending(conversation, 10).unwrap();
    assert_eq!(rest.len(), 2);
    let held = agent.answer(&rest, &mut |_| {}).await.unwrap();
    assert_eq!(
        held.limited,
        Some(convagent::core::limits::Rule::MessagesPerMinute)
    );
    assert_eq!(held.reply.text, settings.limits.notice);
    assert_eq!(llm.requests.lock().unwrap().len(), 1, "no second LLM call");
    assert!(store.pending(conversation, 10).unwrap().is_empty());
}

/// A model that asks for a tool on every call while tools are offered, and
/// answers with what it was told once they are not; every request kept.
struct ToolHungryLlm {
    requests: std::sync::Mutex<Vec<convagent::core::LlmRequest>>,
}

impl LlmProvider for ToolHungryLlm {
    fn name(&self) -> &str {
        "fake"
    }
    fn model(&self) -> &str {
        "fake-model"
    }
    fn generate<'a>(
        &'a self,
        request: &'a convagent::core::LlmRequest,
        _on_event: &'a mut convagent::core::llm::OnEvent<'_>,
    ) -> convagent::core::llm::BoxFuture<
        'a,
        Result<convagent::core::LlmOutput, convagent::core::LlmError>,
    > {
        self.requests.lock().unwrap().push(request.clone());
        let tool_calls = if request.tools.is_empty() {
            Vec::new()
        } else {
            vec![convagent::core::tools::ToolCall {
                id: None,
                name: "lookup".into(),
                arguments: serde_json::json!({ "key": "hunter2-secret", "n": request.exchanges.len() }),
            }]
        };
        let said: Vec<String> = request
            .exchanges
            .iter()
            .flat_map(|e| e.results.iter().map(|r| r.text.clone()))
            .collect();
        Box::pin(async move {
            Ok(convagent::core::LlmOutput {
                text: if tool_calls.is_empty() {
                    said.join(" | ")
                } else {
                    String::new()
                },
                provider: "fake".into(),
                model: "fake-model".into(),
                prompt_tokens: Some(10),
                completion_tokens: Some(1),
                tool_calls,
            })
        })
    }
}

/// A tool that echoes its arguments back with a configured secret in them.
struct EchoTool {
    calls: std::sync::Mutex<Vec<serde_json::Value>>,
}

impl convagent::core::tools::Tools for EchoTool {
    fn specs(&self) -> Vec<convagent::core::tools::ToolSpec> {
        vec![convagent::core::tools::ToolSpec {
            name: "lookup".into(),
            description: "Look a key up".into(),
            parameters: serde_json::json!({ "type": "object" }),
        }]
    }
    fn call<'a>(
        &'a self,
        call: &'a convagent::core::tools::ToolCall,
    ) -> convagent::core::llm::BoxFuture<'a, Result<String, String>> {
        self.calls.lock().unwrap().push(call.arguments.clone());
        Box::pin(async move { Ok(format!("found hunter2-secret for {}", call.arguments["n"])) })
    }
}

#[tokio::test]
async fn tool_calls_stop_at_the_turns_limit_and_secrets_stay_out_of_them() {
    let llm = Arc::new(ToolHungryLlm {
        requests: Default::default(),
    });
    let tool = Arc::new(EchoTool {
        calls: Default::default(),
    });
    let settings = AgentSettings {
        max_tool_calls: 2,
        secrets: vec!["hunter2-secret".into()],
        ..AgentSettings::default()
    };
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let agent = agent_over(store, llm.clone(), settings).with_tools(tool.clone());
    let reply = agent
        .handle(&cli::inbound(&key(), "look it up", 1_000), &mut |_| {})
        .await
        .unwrap();

    // Two calls ran, then the model was asked without tools and answered.
    let calls = tool.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2);
    let requests = llm.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert!(!requests[1].tools.is_empty() && requests[2].tools.is_empty());
    assert_eq!(requests[2].exchanges.len(), 2);
    // The secret never reached the tool, nor came back to the model.
    for args in &calls {
        assert!(!args.to_string().contains("hunter2-secret"), "{args}");
    }
    assert!(
        !reply.reply.text.contains("hunter2-secret"),
        "{}",
        reply.reply.text
    );
    assert!(
        reply.reply.text.contains("found [redacted] for 0"),
        "{}",
        reply.reply.text
    );
    // Tokens of all three calls are counted.
    assert_eq!(reply.reply.prompt_tokens, Some(30));
}
