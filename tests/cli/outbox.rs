//! `convagent outbox`: dead letters an operator can list, queue again and
//! discard, on a real store file, with the real binary.

use convagent::core::ports::all::*;

use convagent::adapters::store::SqliteStore;
use convagent::core::{Channel, OutboxUpdate, OutboxView, Write};

use crate::support::{answer, inbound};
use crate::{Env, stderr_of, stdout_of};

/// Three replies to two people: one sent, one dead after a 403, one
/// queued behind it. Returns the outbox ids, in that order.
fn fill(env: &Env) -> [i64; 3] {
    let store = SqliteStore::open(&env.store()).unwrap();
    let prompt = store.ensure_prompt("be nice", 1_000).unwrap();
    let mut ids = Vec::new();
    for (i, (sender, text)) in [
        ("alice", "It ships tomorrow."),
        ("bob", "Your refund is on its way."),
        ("bob", "Anything else?"),
    ]
    .into_iter()
    .enumerate()
    {
        let message = inbound(
            Channel::Telegram,
            sender,
            &format!("m{i}"),
            "hello",
            1_000 + i as i64,
        );
        let a = store.accept(&message).unwrap();
        let reply = answer(text, prompt.version, 2_000 + i as i64);
        let stored = store.record_reply(a.message_id, &reply).unwrap();
        let entries = store.outbox_entries(OutboxView::All, 10).unwrap();
        ids.push(entries.iter().find(|e| e.text == stored.text).unwrap().id);
    }
    let update = |id, update| {
        store
            .write_now(Write::Outbox {
                id,
                update,
                at: 3_000,
            })
            .unwrap()
    };
    update(
        ids[0],
        OutboxUpdate::Sent {
            provider_message_id: Some("7".into()),
            dry_run: false,
        },
    );
    update(
        ids[1],
        OutboxUpdate::Dead {
            code: "403".into(),
            error: "Forbidden: bot was blocked by the user".into(),
        },
    );
    [ids[0], ids[1], ids[2]]
}

fn states(env: &Env) -> Vec<(i64, String)> {
    let out = env.cmd(&["outbox", "--all", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn lists_queued_and_dead_with_the_providers_error() {
    let env = Env::new();
    let [sent, dead, queued] = fill(&env);
    let out = env.cmd(&["outbox"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    assert!(
        !text.contains("It ships tomorrow"),
        "sent items are not listed: {text}"
    );
    let dead_line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{dead} ")))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        dead_line.contains("telegram") && dead_line.contains("bob") && dead_line.contains("dead"),
        "{dead_line}"
    );
    assert!(dead_line.contains("403"), "{dead_line}");
    assert!(text.contains("bot was blocked by the user"), "{text}");
    assert!(
        text.contains("convagent outbox retry"),
        "says what to do: {text}"
    );

    let out = env.cmd(&["outbox", "--dead", "--json"]).output().unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], dead);
    assert_eq!(list[0]["recipient"], "bob");
    assert_eq!(list[0]["error_code"], "403");
    assert_eq!(list[0]["attempts"], 1);
    assert_eq!(list[0]["text"], "Your refund is on its way.");

    assert_eq!(
        states(&env),
        [
            (sent, "sent".to_string()),
            (dead, "dead".to_string()),
            (queued, "queued".to_string())
        ]
    );
}

#[test]
fn a_dead_letter_queued_again_goes_out_before_the_reply_behind_it() {
    let env = Env::new();
    let [_, dead, queued] = fill(&env);
    let out = env
        .cmd(&["outbox", "retry", &dead.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("queued again"));
    let store = SqliteStore::open(&env.store()).unwrap();
    let due = store.due(i64::MAX, 10).unwrap();
    assert_eq!(
        due.iter().map(|i| i.id).collect::<Vec<_>>(),
        [dead],
        "the head of bob's queue again, with the later reply behind it"
    );
    assert_eq!(due[0].attempts, 0, "its failures forgotten");
    assert_eq!(store.outbox_stats().unwrap().dead, 0);
    assert_eq!(states(&env)[2], (queued, "queued".to_string()));
}

#[test]
fn retry_all_dead_and_discard() {
    let env = Env::new();
    let [_, dead, queued] = fill(&env);
    let failed = || -> u64 {
        let store = SqliteStore::open(&env.store()).unwrap();
        let filter = convagent::core::ConversationFilter::default();
        let shown = store.overview(&filter, None).unwrap();
        shown.iter().map(|o| o.failed).sum()
    };
    assert_eq!(failed(), 1, "the TUI marks the dead letter");
    // Nothing else is dead: the queued one is refused, and nothing changes.
    let out = env
        .cmd(&["outbox", "retry", &queued.to_string(), &dead.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("outbox item {queued} is queued")),
        "{err}"
    );
    assert!(err.contains("only dead letters"), "a hint: {err}");
    assert_eq!(
        states(&env)[1].1,
        "dead",
        "the whole command changed nothing"
    );

    let out = env
        .cmd(&["outbox", "retry", "--all-dead"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains(&format!("1 item queued again: {dead}")));
    assert_eq!(states(&env)[1].1, "queued");

    let out = env
        .cmd(&["outbox", "discard", &dead.to_string(), &queued.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(states(&env)[1].1, "discarded");
    assert_eq!(states(&env)[2].1, "discarded");
    let out = env.cmd(&["outbox"]).output().unwrap();
    assert!(
        stdout_of(&out).contains("Nothing waiting to be sent"),
        "{}",
        stdout_of(&out)
    );
    let store = SqliteStore::open(&env.store()).unwrap();
    assert_eq!(store.due(i64::MAX, 10).unwrap(), vec![], "never sent now");
    assert_eq!(store.outbox_stats().unwrap().dead, 0, "nor counted as dead");
    assert_eq!(failed(), 0, "nor marked failed in the TUI");

    // A discarded item is not brought back, and an unknown id is said so.
    let out = env
        .cmd(&["outbox", "retry", &dead.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("is discarded"),
        "{}",
        stderr_of(&out)
    );
    let out = env.cmd(&["outbox", "discard", "999"]).output().unwrap();
    assert!(!out.status.success());
    let err = stderr_of(&out);
    assert!(err.contains("there is no outbox item 999"), "{err}");
    assert!(err.contains("--all"), "{err}");
}

#[test]
fn an_empty_store_has_nothing_to_list() {
    let env = Env::new();
    let out = env.cmd(&["outbox"]).output().unwrap();
    assert!(out.status.success());
    assert!(stdout_of(&out).contains("Nothing waiting"));
    let out = env.cmd(&["outbox", "--json"]).output().unwrap();
    assert_eq!(stdout_of(&out).trim(), "[]");
    assert!(!env.store().exists(), "listing creates no store");
}

/// `doctor` reports what the alerting rules watch: dead letters first, then
/// replies waiting long, else a pass.
#[test]
fn doctor_reports_dead_letters_and_replies_waiting_long() {
    let env = Env::new();
    let [_, dead, queued] = fill(&env);
    let outbox_check = || -> (String, String, String) {
        let out = env
            .cmd(&["doctor", "--json"])
            .env("CONVAGENT_LLM_CHAIN", "ollama")
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let check = v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "outbox")
            .unwrap_or_else(|| panic!("no outbox check: {v}"))
            .clone();
        let text = |k: &str| check[k].as_str().unwrap_or_default().to_string();
        (text("status"), text("detail"), text("fix"))
    };
    let (status, detail, fix) = outbox_check();
    assert_eq!(status, "warn");
    assert!(
        detail.contains("1 dead letter") && detail.contains("1 queued"),
        "{detail}"
    );
    assert!(fix.contains("convagent outbox retry --all-dead"), "{fix}");

    env.cmd(&["outbox", "discard", &dead.to_string()])
        .assert()
        .success();
    // The queued reply was queued in 1970 by the test's clock: long ago.
    let (status, detail, fix) = outbox_check();
    assert_eq!(status, "warn");
    assert!(
        detail.contains("1 replies queued, the oldest since"),
        "{detail}"
    );
    assert!(fix.contains("convagent serve"), "{fix}");

    env.cmd(&["outbox", "discard", &queued.to_string()])
        .assert()
        .success();
    let (status, detail, _) = outbox_check();
    assert_eq!(status, "pass", "{detail}");
    assert!(detail.contains("0 queued, no dead letters"), "{detail}");
}
