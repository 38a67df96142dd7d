//! One person, two channels: `/link` on Telegram gives a code; `/link CODE`
//! from WhatsApp within ten minutes makes both identities one person.

use std::sync::Arc;

use convagent::core::Channel;
use convagent::core::ports::SenderRef;
use convagent::core::ports::all::*;
use serde_json::json;

use crate::handoff::{start, text_from, twilio_texts};
use crate::support::{EchoLlm, FakeClock};
use crate::{Harness, Options, bodies};

const NOON: i64 = 1_763_726_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_from_telegram_sent_from_whatsapp_links_one_person() {
    let llm = Arc::new(EchoLlm::new());
    let h = start(llm.clone(), Arc::new(FakeClock::at(NOON))).await;

    let mut ask = h.golden("telegram/text.json");
    ask.json.as_mut().unwrap()["message"]["text"] = json!("/link");
    assert_eq!(h.post(&h.sign(&ask)).await.0, 200);
    h.drained().await;
    let told = bodies(&h.telegram).await[0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let code: String = told
        .split_whitespace()
        .find(|w| {
            w.trim_end_matches('.').len() == 6 && w.chars().take(6).all(|c| c.is_ascii_digit())
        })
        .unwrap_or_else(|| panic!("{told}"))
        .trim_end_matches('.')
        .to_string();
    assert!(told.starts_with("Your link code is "), "{told}");

    let whatsapp = |text: &str, sid: &str| {
        let mut golden = h.golden("whatsapp/text.json");
        let form = golden.form.as_mut().unwrap();
        *form.get_mut("Body").unwrap() = text.into();
        *form.get_mut("MessageSid").unwrap() = sid.into();
        h.sign(&golden)
    };
    let twilio_texts = || twilio_texts(&h);
    // A wrong code first: refused, and said why.
    assert_eq!(h.post(&whatsapp("/link 000000", "SM1")).await.0, 200);
    h.drained().await;
    assert!(twilio_texts().await[0].starts_with("Not linked: that code is not known"));
    assert_eq!(
        h.post(&whatsapp(&format!("/link {code}"), "SM2")).await.0,
        200
    );
    h.drained().await;
    assert_eq!(
        twilio_texts().await[1],
        "Linked: your telegram and whatsapp chats are one person to me now."
    );
    let telegram = SenderRef {
        channel: Channel::Telegram,
        id: "111222333".into(),
    };
    let person = h.store.person_of(&telegram).unwrap().unwrap();
    let ids: Vec<String> = person
        .identities
        .iter()
        .map(|i| format!("{}:{}", i.channel, i.sender))
        .collect();
    assert_eq!(
        ids,
        ["telegram:111222333", "whatsapp:whatsapp:+14155550123"]
    );
    // The code is spent; the model saw none of it.
    assert_eq!(
        h.post(&whatsapp(&format!("/link {code}"), "SM3")).await.0,
        200
    );
    h.drained().await;
    assert!(twilio_texts().await[2].contains("used already"));
    assert!(llm.seen.lock().unwrap().is_empty());
    h.stop().await;
}

/// What a person said on WhatsApp reaches the agent answering them on
/// Telegram once the two are one person, with its source; after the
/// WhatsApp identity is erased, nothing of it can be retrieved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_crosses_linked_channels_and_leaves_with_an_erasure() {
    use convagent::core::Write;
    let llm = Arc::new(EchoLlm::new());
    let h = start(llm.clone(), Arc::new(FakeClock::at(NOON))).await;
    let telegram = |text: &str, n: i64| text_from(&h, n, text);
    let mut wa = h.golden("whatsapp/text.json");
    *wa.form.as_mut().unwrap().get_mut("Body").unwrap() =
        "my bike is a red Gazelle, stolen from the station".into();
    assert_eq!(h.post(&telegram("hello", 1)).await.0, 200);
    assert_eq!(h.post(&h.sign(&wa)).await.0, 200);
    h.drained().await;
    let whatsapp = SenderRef {
        channel: Channel::Whatsapp,
        id: "+14155550123".into(),
    };
    h.store
        .write_now(Write::Link {
            a: SenderRef {
                channel: Channel::Telegram,
                id: "111222333".into(),
            },
            b: whatsapp.clone(),
            at: NOON,
        })
        .unwrap();

    // An operator's link (another process) counts once the agent looks
    // again: within 30 seconds.
    h.advance(31_000);
    assert_eq!(h.post(&telegram("which bike was stolen?", 2)).await.0, 200);
    h.drained().await;
    let systems = llm.systems.lock().unwrap().last().unwrap().clone();
    let given = systems
        .iter()
        .find(|s| s.starts_with("What you know"))
        .unwrap_or_else(|| panic!("{systems:?}"));
    assert!(
        given.contains("[1] (you on whatsapp, 2025-11-21) my bike is a red Gazelle"),
        "{given}"
    );
    let traced: Vec<(String, String)> = crate::support::pairs(
        &h.dir.path().join("convagent.db"),
        "SELECT outcome, detail FROM traces WHERE stage = 'retrieve'",
    );
    assert!(
        traced
            .iter()
            .any(|(o, d)| o == "ok" && d.starts_with("[1] you on whatsapp")),
        "{traced:?}"
    );

    h.store
        .write_now(Write::Erase {
            sender: whatsapp,
            at: NOON,
        })
        .unwrap();
    assert_eq!(
        h.post(&telegram("which bike was stolen again?", 3)).await.0,
        200
    );
    h.drained().await;
    let systems = llm.systems.lock().unwrap().last().unwrap().clone();
    assert!(
        systems.iter().all(|s| !s.contains("Gazelle")),
        "an erased person's words are not retrieved: {systems:?}"
    );
    h.stop().await;
}

/// `serve` keeps `[knowledge]` current: a new file is indexed, a changed
/// one indexed again, a deleted one removed, without a command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_picks_up_new_changed_and_vanished_knowledge_files() {
    use convagent::core::ports::Retrieval;
    let kb = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.settings.knowledge = Some(convagent::daemon::knowledge::Rescan {
        paths: vec![kb.path().to_path_buf()],
        chunk_chars: 1_000,
        every: std::time::Duration::from_millis(100),
        embedder: None,
    });
    let h = Harness::start(options).await;
    let file = kb.path().join("returns.md");
    std::fs::write(&file, "# Returns\n\nWithin thirty days.").unwrap();
    let titled = |title: &'static str| {
        let store = h.store.clone();
        move || {
            store
                .knowledge_docs()
                .is_ok_and(|d| d.len() == 1 && d[0].title == title)
        }
    };
    assert!(
        crate::support::eventually(10, titled("Returns")).await,
        "indexed"
    );
    std::fs::write(&file, "# Refunds\n\nWithin five days.").unwrap();
    assert!(
        crate::support::eventually(10, titled("Refunds")).await,
        "indexed again"
    );
    let words = convagent::core::knowledge::query_words("refunds");
    assert_eq!(h.store.search_knowledge(&words, 4).unwrap().len(), 1);
    std::fs::remove_file(&file).unwrap();
    let store = h.store.clone();
    assert!(
        crate::support::eventually(10, move || store
            .knowledge_docs()
            .is_ok_and(|d| d.is_empty()))
        .await,
        "removed"
    );
    h.stop().await;
}
