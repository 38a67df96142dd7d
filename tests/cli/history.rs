//! `convagent history` over a store filled through the engine.

use convagent::core::ports::all::*;
use std::collections::BTreeMap;

use convagent::adapters::store::SqliteStore;
use convagent::core::{
    Channel, ConversationKey, CorrelationId, InboundMessage, NewReply, ReplyKind,
};

use crate::{Env, stderr_of, stdout_of};

pub(crate) fn fill(env: &Env) {
    let store = SqliteStore::open(&env.store()).unwrap();
    let prompt = store.ensure_prompt("be nice", 1_000).unwrap();
    let add = |channel, sender: &str, id: &str, text: &str, reply: &str, at: i64| {
        let message = InboundMessage {
            key: ConversationKey::new(channel, sender, ""),
            text: text.into(),
            provider_message_id: id.into(),
            provider_ts: None,
            received_at: at,
            attachments: vec![],
            metadata: BTreeMap::new(),
            correlation_id: CorrelationId::generate(),
        };
        let a = store.accept(&message).unwrap();
        store
            .record_reply(
                a.message_id,
                &NewReply {
                    kind: ReplyKind::Answer,
                    text: reply.into(),
                    provider: "ollama".into(),
                    model: "mistral:7b".into(),
                    prompt_version: prompt.version,
                    prompt_tokens: Some(30),
                    completion_tokens: Some(7),
                    latency_ms: 850,
                    created_at: at + 900,
                },
            )
            .unwrap();
    };
    add(
        Channel::Telegram,
        "alice",
        "1",
        "Where is my parcel?",
        "It ships tomorrow.",
        1_700_000_000_000,
    );
    add(
        Channel::Whatsapp,
        "whatsapp:+15551234567",
        "SM1",
        "Opening hours?",
        "9 to 5.",
        1_700_000_100_000,
    );
    add(
        Channel::Telegram,
        "alice",
        "2",
        "And the invoice?",
        "Sent by mail.",
        1_700_000_200_000,
    );
}

#[test]
fn an_empty_store_says_how_to_start() {
    let env = Env::new();
    let out = env.cmd(&["history"]).output().unwrap();
    assert!(out.status.success());
    assert!(stdout_of(&out).contains("convagent chat"));
    assert!(!env.store().exists(), "reading history creates no store");
    let out = env.cmd(&["history", "--json"]).output().unwrap();
    assert_eq!(stdout_of(&out).trim(), "[]");
}

#[test]
fn lists_most_recent_first_and_filters_by_channel() {
    let env = Env::new();
    fill(&env);
    let out = env.cmd(&["history"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains("CHANNEL") && lines[0].contains("SENDER") && lines[0].contains("PERSON"),
        "{text}"
    );
    assert!(
        lines[1].contains("telegram") && lines[1].contains("alice") && lines[1].contains(" 4 "),
        "{text}"
    );
    assert!(lines[2].contains("whatsapp:+15551234567"), "{text}");

    let out = env
        .cmd(&["history", "--channel", "whatsapp", "--json"])
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["channel"], "whatsapp");
    assert_eq!(list[0]["message_count"], 2);
    assert!(
        list[0]["person"].is_i64(),
        "each sender is a person: {list}"
    );

    let out = env
        .cmd(&["history", "--channel", "discord"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("unknown channel `discord`"));
}

#[test]
fn shows_a_conversation_with_model_prompt_tokens_and_latency() {
    let env = Env::new();
    fill(&env);
    let out = env.cmd(&["history", "show", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(text.contains("Where is my parcel?"), "{text}");
    assert!(text.contains("It ships tomorrow."), "{text}");
    assert!(
        text.contains("ollama/mistral:7b · prompt v1 · 30+7 tokens · 850 ms"),
        "{text}"
    );
    assert!(text.contains("2023-11-14 22:13:20 UTC"), "{text}");

    let out = env
        .cmd(&["history", "show", "1", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["conversation"]["sender"], "alice");
    assert_eq!(v["messages"].as_array().unwrap().len(), 4);
    assert_eq!(v["messages"][1]["prompt_version"], 1);

    let out = env.cmd(&["history", "show", "99"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = stderr_of(&out);
    assert!(
        stderr.contains("no conversation with id 99") && stderr.contains("hint:"),
        "{stderr}"
    );
}

#[test]
fn searches_text_across_channels() {
    let env = Env::new();
    fill(&env);
    let out = env.cmd(&["history", "search", "invoice"]).output().unwrap();
    let text = stdout_of(&out);
    assert!(
        text.contains("[invoice]") && text.contains("alice"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");

    let out = env
        .cmd(&[
            "history",
            "search",
            "invoice",
            "--channel",
            "whatsapp",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    let out = env.cmd(&["history", "search", "***"]).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("no words"), "{}", stderr_of(&out));
}

#[test]
fn show_names_the_sender_and_marks_a_burst_answered_together() {
    let env = Env::new();
    let store = SqliteStore::open(&env.store()).unwrap();
    let prompt = store.ensure_prompt("be nice", 1_000).unwrap();
    let key = ConversationKey::new(Channel::Telegram, "111222333", "111222333");
    let ids: Vec<i64> = ["hi", "I need help", "with my order"]
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let mut metadata = BTreeMap::new();
            metadata.insert(
                convagent::core::message::SENDER_NAME.to_string(),
                "Ada".to_string(),
            );
            store
                .accept(&InboundMessage {
                    key: key.clone(),
                    text: text.to_string(),
                    provider_message_id: format!("111222333:{i}"),
                    provider_ts: None,
                    received_at: 1_700_000_000_000 + i as i64,
                    attachments: vec![],
                    metadata,
                    correlation_id: CorrelationId::generate(),
                })
                .unwrap()
                .message_id
        })
        .collect();
    let reply = store
        .record_turn_reply(
            ids[2],
            &ids[..2],
            &NewReply {
                kind: ReplyKind::Answer,
                text: "Happy to help with your order.".into(),
                provider: "embedded".into(),
                model: "smollm2".into(),
                prompt_version: prompt.version,
                prompt_tokens: None,
                completion_tokens: None,
                latency_ms: 10,
                created_at: 1_700_000_001_000,
            },
        )
        .unwrap();
    drop(store);

    let list = stdout_of(&env.cmd(&["history"]).output().unwrap());
    assert!(list.contains("Ada (111222333)"), "{list}");
    let out = env.cmd(&["history", "show", "1"]).output().unwrap();
    let text = stdout_of(&out);
    assert!(text.contains("· Ada (111222333) ·"), "{text}");
    assert_eq!(
        text.matches(&format!(
            "answered together with the next (reply #{})",
            reply.id
        ))
        .count(),
        2,
        "{text}"
    );
    assert!(text.contains("answers 3 messages"), "{text}");
}

/// Runs `args` with stdout a pipe whose reader is already gone.
fn with_closed_stdout(env: &Env, args: &[&str]) -> std::process::Output {
    let mut child = env
        .std_cmd(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    child.wait_with_output().unwrap()
}

#[test]
fn read_commands_end_quietly_when_their_reader_goes_away() {
    let env = Env::new();
    fill(&env);
    for args in [
        &["history"][..],
        &["history", "--json"],
        &["history", "show", "1"],
        &["history", "search", "invoice"],
        &["completions", "bash"],
        &["doctor"],
    ] {
        let out = with_closed_stdout(&env, args);
        let stderr = stderr_of(&out);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
        // doctor's own verdict (a warning is not a failure) is its exit code.
        if args[0] != "doctor" {
            assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        }
    }
}

/// A person's data: export shows all of it, delete removes all of it (the
/// full-text index too) and keeps only a count, others are untouched.
#[test]
fn export_then_delete_a_person_leaves_nothing_of_them() {
    use convagent::core::{Outcome, Stage, TraceEvent};
    let env = Env::new();
    fill(&env);
    {
        let store = SqliteStore::open(&env.store()).unwrap();
        let alice = store.conversations(&Default::default()).unwrap();
        let alice = alice.iter().find(|c| c.sender == "alice").unwrap();
        let first = &store.messages(alice.id).unwrap()[0];
        let correlation = first.correlation_id.clone().unwrap();
        store
            .record_traces(&[TraceEvent {
                correlation_id: correlation,
                stage: Stage::Received,
                attempt: None,
                started_at: 1,
                duration_us: 5,
                outcome: Outcome::Ok,
                detail: None,
            }])
            .unwrap();
        store.record_violation(first.id, "secret", 2).unwrap();
        // The tokens their replies used today (what the trigger keeps).
        rusqlite::Connection::open(env.store())
            .unwrap()
            .execute(
                "INSERT INTO token_usage (day, conversation_id, tokens) VALUES (20000, ?1, 42)",
                [alice.id],
            )
            .unwrap();
    }
    let out = env
        .cmd(&["history", "export", "--sender", "telegram:alice"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let data: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(data["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(data["messages"].as_array().unwrap().len(), 4);
    assert_eq!(data["traces"].as_array().unwrap().len(), 1);
    assert_eq!(data["outbox"].as_array().unwrap().len(), 2);
    assert_eq!(data["violations"][0]["rule"], "secret");
    let text = data.to_string();
    assert!(text.contains("Where is my parcel?") && text.contains("Sent by mail."));
    assert!(!text.contains("Opening hours?"), "only alice's");

    let out = env
        .cmd(&["history", "export", "--sender", "telegram:alice", "--jsonl"])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = stdout_of(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1 + 4 + 1 + 2 + 1, "one line per item");
    assert_eq!(lines[0]["kind"], "conversation");
    assert_eq!(lines.last().unwrap()["kind"], "violation");

    // Without a terminal and without --yes: refused, nothing deleted.
    let out = env
        .cmd(&["history", "delete", "--sender", "telegram:alice"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("--yes"), "{}", stderr_of(&out));
    let out = env
        .cmd(&["history", "search", "parcel", "--json"])
        .output()
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let out = env
        .cmd(&["history", "delete", "--sender", "telegram:alice", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let said = stdout_of(&out);
    assert!(
        said.contains("1 conversations, 4 messages") && said.contains("1 trace events"),
        "{said}"
    );
    let out = env
        .cmd(&["history", "export", "--sender", "telegram:alice"])
        .output()
        .unwrap();
    let data: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for kind in [
        "conversations",
        "messages",
        "summaries",
        "traces",
        "outbox",
        "violations",
    ] {
        assert_eq!(data[kind], serde_json::json!([]), "{kind}");
    }
    for word in ["parcel", "invoice", "mail"] {
        let out = env
            .cmd(&["history", "search", word, "--json"])
            .output()
            .unwrap();
        assert_eq!(stdout_of(&out).trim(), "[]", "search for {word}");
    }
    let out = env
        .cmd(&["history", "search", "hours", "--json"])
        .output()
        .unwrap();
    assert_ne!(
        stdout_of(&out).trim(),
        "[]",
        "the other person is untouched"
    );

    assert_eq!(
        crate::support::pairs(
            &env.store(),
            "SELECT day, tokens FROM token_usage WHERE day = 20000"
        ),
        Vec::<(i64, i64)>::new(),
        "their token counts go too"
    );

    // What is kept: that it happened, when, on which channel, how many.
    let audit: Vec<(String, String)> =
        crate::support::pairs(&env.store(), "SELECT channel, counts FROM erasures");
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].0, "telegram");
    assert!(audit[0].1.contains("\"messages\":4"), "{audit:?}");
    assert!(!audit[0].1.contains("alice"), "never who");
}

#[test]
fn a_whatsapp_sender_is_named_as_listed_and_bad_names_are_explained() {
    let env = Env::new();
    fill(&env);
    let out = env
        .cmd(&["history", "export", "--sender", "whatsapp:+15551234567"])
        .output()
        .unwrap();
    let data: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(data["messages"].as_array().unwrap().len(), 2);
    for bad in ["alice", "discord:1", "telegram:"] {
        let out = env
            .cmd(&["history", "export", "--sender", bad])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}");
        assert!(stderr_of(&out).contains("--sender"), "{}", stderr_of(&out));
    }
    let out = env
        .cmd(&["history", "delete", "--sender", "telegram:nobody", "--yes"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(stdout_of(&out).contains("Nothing is held about telegram:nobody"));
}

/// Retention: conversations idle past `retention.messages` go whole, never
/// one still waiting for an answer or with a reply still to send; traces
/// past `retention.traces` go; a dry run says the same and keeps it all.
#[test]
fn prune_removes_what_retention_allows_and_nothing_still_owed() {
    use convagent::core::{Outcome, Stage, TraceEvent};
    let env = Env::new();
    env.write_config("[retention]\nmessages = \"30d\"\ntraces = \"7d\"\n");
    let day = 86_400_000i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    {
        let store = SqliteStore::open(&env.store()).unwrap();
        let prompt = store.ensure_prompt("be nice", 1).unwrap();
        let message = |sender: &str, id: &str, at: i64| {
            crate::support::inbound(
                Channel::Telegram,
                sender,
                id,
                &format!("{sender} wrote this"),
                at,
            )
        };
        let reply = |at: i64| crate::support::answer("noted", prompt.version, at);
        // Old and settled: answered, reply sent.
        let old = store.accept(&message("old", "o1", now - 60 * day)).unwrap();
        store
            .record_reply(old.message_id, &reply(now - 60 * day))
            .unwrap();
        let sent = store
            .outbox_entries(convagent::core::OutboxView::Queued, 10)
            .unwrap();
        store
            .write_now(convagent::core::Write::Outbox {
                id: sent[0].id,
                update: convagent::core::OutboxUpdate::Sent {
                    provider_message_id: None,
                    dry_run: false,
                },
                at: now - 60 * day,
            })
            .unwrap();
        // Old but still owed: never answered; answered with the reply queued.
        store
            .accept(&message("waiting", "w1", now - 60 * day))
            .unwrap();
        let queued = store
            .accept(&message("queued", "q1", now - 60 * day))
            .unwrap();
        store
            .record_reply(queued.message_id, &reply(now - 60 * day))
            .unwrap();
        // Recent.
        store.accept(&message("recent", "r1", now - day)).unwrap();
        let trace = |at: i64| TraceEvent {
            correlation_id: "c".into(),
            stage: Stage::Received,
            attempt: None,
            started_at: at,
            duration_us: 1,
            outcome: Outcome::Ok,
            detail: None,
        };
        store
            .record_traces(&[
                trace(now - 10 * day),
                trace(now - 9 * day),
                trace(now - day),
            ])
            .unwrap();
    }
    let senders = || -> Vec<String> {
        let out = env.cmd(&["history", "--json"]).output().unwrap();
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut s: Vec<String> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["sender"].as_str().unwrap().to_string())
            .collect();
        s.sort();
        s
    };
    assert_eq!(senders(), ["old", "queued", "recent", "waiting"]);

    let out = env
        .cmd(&["history", "prune", "--dry-run"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("Would remove 1 conversations (2 messages) and 2 trace events"),
        "{}",
        stdout_of(&out)
    );
    assert_eq!(senders(), ["old", "queued", "recent", "waiting"], "kept");

    let out = env.cmd(&["history", "prune"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("Removed 1 conversations (2 messages) and 2 trace events"),
        "{}",
        stdout_of(&out)
    );
    assert_eq!(senders(), ["queued", "recent", "waiting"]);
    let left: Vec<(i64, i64)> =
        crate::support::pairs(&env.store(), "SELECT count(*), min(started_at) FROM traces");
    assert_eq!(left[0].0, 1);
    let out = env
        .cmd(&["history", "search", "old", "--json"])
        .output()
        .unwrap();
    assert_eq!(stdout_of(&out).trim(), "[]", "the index forgot it too");

    let out = env.cmd(&["history", "prune"]).output().unwrap();
    assert!(stdout_of(&out).contains("Removed 0 conversations"));
}

#[test]
fn a_retention_that_is_not_a_duration_is_explained() {
    let env = Env::new();
    env.write_config("[retention]\nmessages = \"ninety days\"\n");
    let out = env.cmd(&["history", "prune"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains("retention.messages") && err.contains("90d"),
        "{err}"
    );
}

/// A voice note and a shared place are shown with the message, as the
/// model reads them, in `history show` and in the export.
#[test]
fn history_shows_and_exports_what_came_with_a_message() {
    use convagent::core::{Attachment, AttachmentKind, Channel};
    let env = Env::new();
    {
        let store = SqliteStore::open(&env.store()).unwrap();
        let voice = Attachment {
            content_type: Some("audio/ogg".into()),
            duration_secs: Some(4),
            file_id: Some("AwACAgIAAxkBvoice".into()),
            ..Attachment::new(AttachmentKind::Voice)
        };
        let place = Attachment {
            latitude: Some(52.52),
            longitude: Some(13.405),
            name: Some("Office".into()),
            ..Attachment::new(AttachmentKind::Location)
        };
        let mut message = crate::support::inbound(Channel::Telegram, "777", "v-1", "", 1_000);
        message.attachments = vec![voice];
        let accepted = store.accept(&message).unwrap();
        let prompt = store.ensure_prompt("be nice", 1_000).unwrap();
        let notice = convagent::core::NewReply {
            kind: convagent::core::ReplyKind::Refusal,
            provider: "media".into(),
            model: "voice".into(),
            ..crate::support::answer(
                "I can't listen to voice notes here yet.",
                prompt.version,
                1_100,
            )
        };
        store.record_reply(accepted.message_id, &notice).unwrap();
        let mut message =
            crate::support::inbound(Channel::Telegram, "777", "v-2", "meet here?", 2_000);
        message.attachments = vec![place];
        store.accept(&message).unwrap();
    }
    let out = env.cmd(&["history", "show", "1"]).output().unwrap();
    let text = stdout_of(&out);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(text.contains("[voice note, audio/ogg, 4 s]"), "{text}");
    assert!(
        text.contains("voice notice (media not taken in)") && !text.contains("guardrail"),
        "{text}"
    );
    assert!(
        text.contains("[location 52.52, 13.405: Office]\nmeet here?"),
        "{text}"
    );

    let file = env.path("person.json");
    let out = env
        .cmd(&["history", "export", "--sender", "telegram:777", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let text = exported.to_string();
    assert!(text.contains("\"kind\":\"voice\""), "{text}");
    assert!(text.contains("AwACAgIAAxkBvoice"), "{text}");
}

/// An operator links two identities into one person; `history export
/// --person` and `history delete --person` cover both; `people unlink`
/// parts them again.
#[test]
fn people_link_and_a_person_is_exported_and_deleted_across_channels() {
    let env = Env::new();
    fill(&env);
    fill_also_sms(&env);
    let run = |args: &[&str]| env.cmd(args).output().unwrap();
    let listed = stdout_of(&run(&["people", "list"]));
    assert_eq!(listed.lines().count(), 4, "a person per sender: {listed}");

    let out = run(&["people", "link", "telegram:alice", "whatsapp:+15551234567"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let said = stdout_of(&out);
    assert!(
        said.contains("telegram:alice, whatsapp:whatsapp:+15551234567"),
        "{said}"
    );
    let shown = stdout_of(&run(&["people", "show", "whatsapp:+15551234567"]));
    assert!(
        shown.contains("telegram:alice  since") && shown.contains("1 conversations, 2 messages"),
        "{shown}"
    );
    assert_eq!(
        stdout_of(&run(&["people", "list"])).lines().count(),
        3,
        "two senders, one person"
    );
    let shown = stdout_of(&run(&["history", "show", "2"]));
    assert!(
        shown.contains("Person 1: telegram:alice, whatsapp:whatsapp:+15551234567."),
        "history show names the person: {shown}"
    );

    // Export covers both identities; the SMS sender is someone else.
    let out = run(&["history", "export", "--person", "telegram:alice"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let channels: Vec<&str> = export["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(channels, ["telegram", "whatsapp"]);
    assert_eq!(export["person"]["identities"].as_array().unwrap().len(), 2);
    let texts = export["messages"].to_string();
    assert!(texts.contains("Opening hours?") && texts.contains("Where is my parcel?"));
    assert!(!texts.contains("Text me back"), "not the SMS sender's");

    // Unlink, link again by number, then delete the person.
    let out = run(&["people", "unlink", "whatsapp:+15551234567"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let alone = stdout_of(&run(&["people", "show", "whatsapp:+15551234567", "--json"]));
    let alone: serde_json::Value = serde_json::from_str(&alone).unwrap();
    assert_eq!(alone["identities"].as_array().unwrap().len(), 1);
    let id = alone["id"].to_string();
    let out = run(&["people", "link", "telegram:alice", &id]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    let out = run(&["history", "delete", "--person", &id, "--yes"]);
    assert!(!out.status.success(), "that person was joined into alice's");
    assert!(
        stderr_of(&out).contains("nobody known as person"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&["history", "delete", "--person", "telegram:alice", "--yes"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("2 conversations, 6 messages"),
        "{}",
        stdout_of(&out)
    );
    let left = stdout_of(&run(&["history"]));
    assert!(
        !left.contains("alice") && !left.contains("15551234567"),
        "{left}"
    );
    assert!(
        left.contains("+15559876543"),
        "the SMS sender stays: {left}"
    );
    assert_eq!(stdout_of(&run(&["people", "list"])).lines().count(), 2);

    // Bad names are explained.
    let out = run(&["people", "show", "telegram:nobody"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("nobody known as telegram:nobody"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&["history", "export"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("--sender"), "{}", stderr_of(&out));
}

fn fill_also_sms(env: &Env) {
    let store = SqliteStore::open(&env.store()).unwrap();
    store
        .accept(&InboundMessage {
            key: ConversationKey::new(Channel::Sms, "+15559876543", "+15559876543"),
            text: "Text me back".into(),
            provider_message_id: "SMx".into(),
            provider_ts: None,
            received_at: 1_700_000_300_000,
            attachments: vec![],
            metadata: BTreeMap::new(),
            correlation_id: CorrelationId::generate(),
        })
        .unwrap();
}
