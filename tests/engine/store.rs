//! The store conformance suite, written against the `Store` port so every
//! backend runs the same checks. SQLite runs it in memory and on a file.

use convagent::core::ports::all::*;
use std::collections::BTreeMap;

use convagent::adapters::store::{OpenMode, SqliteStore};
use convagent::core::ports::{
    AnyStore, Destination, OutboxUpdate, Outgoing, Prune, SenderRef, StoreError, Take, TokenChange,
};
use convagent::core::{
    Attachment, Breaker, BreakerPolicy, BreakerState, Channel, ConversationFilter, ConversationKey,
    CorrelationId, InboundMessage, NewReply, ReplyKind, Role, SearchOrder, Store, Summary, Write,
    Writes, Written,
};

fn message(key: &ConversationKey, id: &str, text: &str, at: i64) -> InboundMessage {
    InboundMessage {
        key: key.clone(),
        text: text.into(),
        provider_message_id: id.into(),
        provider_ts: Some(at - 5),
        received_at: at,
        attachments: Vec::new(),
        metadata: BTreeMap::from([("k".to_string(), "v".to_string())]),
        correlation_id: CorrelationId::generate(),
    }
}

fn reply(text: &str, at: i64, prompt_version: i64) -> NewReply {
    NewReply {
        kind: ReplyKind::Answer,
        text: text.into(),
        provider: "fake".into(),
        model: "fake-model".into(),
        prompt_version,
        prompt_tokens: Some(12),
        completion_tokens: Some(3),
        latency_ms: 42,
        created_at: at,
    }
}

fn alice() -> ConversationKey {
    ConversationKey::new(Channel::Telegram, "alice", "")
}

/// Every check of the suite, against one fresh store.
fn conformance(store: &dyn AnyStore) {
    // First: replies below refer to prompt versions 1 and 2.
    prompts_are_versioned(store);
    accept_and_deduplicate(store);
    a_batch_of_accepts_is_one_result_each_in_order(store);
    replies_are_unique_per_message(store);
    recent_turns_are_bounded_and_ordered(store);
    reset_starts_a_new_conversation(store);
    listing_filters_and_orders(store);
    search_finds_words(store);
    fallbacks_leave_messages_pending(store);
    summaries_are_kept_once_per_range(store);
    breakers_round_trip(store);
    a_turn_reply_covers_its_burst(store);
    sender_names_are_kept_with_the_conversation(store);
    health_reports_current_schema(store);
    an_outside_agent_sends_and_answers(store);
    a_message_is_taken_by_one_consumer_at_a_time(store);
    access_tokens_are_kept_hashed_by_name(store);
    erasing_a_sender_leaves_nothing_of_them(store);
    pruning_deletes_idle_conversations_and_nothing_still_owed(store);
    the_last_notice_of_a_kind_is_found(store);
    approvals_are_asked_once_answered_once_and_run_once(store);
    people_are_made_on_first_contact_and_linked_by_code(store);
    knowledge_is_ranked_replaced_and_removed(store);
    vectors_are_kept_with_their_chunks(store);
    a_persons_other_conversations_are_retrieved(store);
}

fn vectors_are_kept_with_their_chunks(store: &dyn AnyStore) {
    use convagent::core::knowledge::KnowledgeChange;
    use convagent::core::ports::StoreError;
    let put = |path: &str, embedder: Option<&str>, vectors: Vec<Vec<f32>>| {
        store.write_now(Write::Knowledge(KnowledgeChange::Put {
            path: path.into(),
            sha256: "v".into(),
            title: "Vectors".into(),
            chunks: vec!["first".into(), "second".into()],
            at: 5,
            embedder: embedder.map(str::to_string),
            vectors,
        }))
    };
    put(
        "/kb/v.md",
        Some("local:m"),
        vec![vec![1.0, 0.5], vec![-0.25, 3.0e-3]],
    )
    .unwrap();
    put("/kb/w.md", Some("ollama:other"), vec![vec![9.0], vec![8.0]]).unwrap();
    let held = store.knowledge_vectors("local:m").unwrap();
    assert_eq!(held.len(), 2, "only this embedder's: {held:?}");
    assert_eq!((held[0].chunk, held[0].text.as_str()), (1, "first"));
    assert_eq!(held[0].vector, [1.0, 0.5], "the same numbers back");
    assert_eq!(held[1].vector, [-0.25, 3.0e-3]);
    let doc = |path: &str| {
        store
            .knowledge_docs()
            .unwrap()
            .into_iter()
            .find(|d| d.path == path)
            .unwrap()
    };
    assert_eq!(doc("/kb/v.md").embedder.as_deref(), Some("local:m"));
    // One vector short is refused whole.
    let short = put("/kb/v.md", Some("local:m"), vec![vec![1.0, 0.0]]);
    assert!(matches!(short, Err(StoreError::Invalid(_))), "{short:?}");
    assert_eq!(store.knowledge_vectors("local:m").unwrap().len(), 2);
    // Indexed again without vectors: none left for the old embedder.
    put("/kb/v.md", None, Vec::new()).unwrap();
    assert!(store.knowledge_vectors("local:m").unwrap().is_empty());
    assert_eq!(doc("/kb/v.md").embedder, None);
    // A removed document takes its vectors with it.
    store
        .write_now(Write::Knowledge(KnowledgeChange::Remove {
            path: "/kb/w.md".into(),
        }))
        .unwrap();
    assert!(store.knowledge_vectors("ollama:other").unwrap().is_empty());
    store
        .write_now(Write::Knowledge(KnowledgeChange::Remove {
            path: "/kb/v.md".into(),
        }))
        .unwrap();
}

fn knowledge_is_ranked_replaced_and_removed(store: &dyn AnyStore) {
    use convagent::core::knowledge::{KnowledgeChange, Source};
    let put = |path: &str, chunks: &[&str], at| {
        store
            .write_now(Write::Knowledge(KnowledgeChange::Put {
                path: path.into(),
                sha256: format!("sha-{at}"),
                title: "T".into(),
                chunks: chunks.iter().map(|c| c.to_string()).collect(),
                at,
                embedder: None,
                vectors: Vec::new(),
            }))
            .unwrap();
    };
    put(
        "/kb/returns.md",
        &[
            "Returns are free within thirty days of delivery.",
            "Refunds reach the card in five working days.",
        ],
        1,
    );
    put(
        "/kb/hours.md",
        &["The café opens at nine and closes at six."],
        2,
    );
    let words = |q: &str| convagent::core::knowledge::query_words(q);
    let found = store
        .search_knowledge(&words("how long do refunds take?"), 5)
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        found[0].source,
        Source::Document {
            path: "/kb/returns.md".into(),
            chunk: 2
        }
    );
    assert!(found[0].score > 0.0);
    // Diacritics fold: "cafe" finds "café".
    let cafe = store.search_knowledge(&words("cafe opening"), 5).unwrap();
    assert_eq!(cafe.len(), 1, "{cafe:?}");
    // Any word counts; more matching words rank higher.
    let both = store
        .search_knowledge(&words("returns refunds card"), 5)
        .unwrap();
    assert_eq!(
        both[0].source,
        Source::Document {
            path: "/kb/returns.md".into(),
            chunk: 2
        }
    );
    // A changed document replaces its chunks.
    put("/kb/returns.md", &["Returns are no longer accepted."], 3);
    assert!(
        store
            .search_knowledge(&words("refunds"), 5)
            .unwrap()
            .is_empty()
    );
    let docs = store.knowledge_docs().unwrap();
    let returns = docs.iter().find(|d| d.path == "/kb/returns.md").unwrap();
    assert_eq!((returns.chunks, returns.sha256.as_str()), (1, "sha-3"));
    store
        .write_now(Write::Knowledge(KnowledgeChange::Remove {
            path: "/kb/returns.md".into(),
        }))
        .unwrap();
    assert!(
        store
            .search_knowledge(&words("returns"), 5)
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.write_now(Write::Knowledge(KnowledgeChange::Remove {
            path: "/kb/returns.md".into()
        })),
        Err(StoreError::NotFound(_))
    ));
    assert!(store.search_knowledge(&[], 5).unwrap().is_empty());
}

fn a_persons_other_conversations_are_retrieved(store: &dyn AnyStore) {
    let tg = ConversationKey::new(Channel::Telegram, "mem-1", "mem-1");
    let wa = ConversationKey::new(
        Channel::Whatsapp,
        "whatsapp:+15559903",
        "whatsapp:+15559903",
    );
    let here = store
        .accept(&message(&tg, "mem-a", "what bike do I have?", 400_000))
        .unwrap();
    let there = store
        .accept(&message(&wa, "mem-b", "my bike is a red Gazelle", 400_100))
        .unwrap();
    assert!(
        store
            .person_conversations(here.conversation_id)
            .unwrap()
            .is_empty(),
        "strangers share nothing"
    );
    store
        .write_now(Write::Link {
            a: SenderRef {
                channel: Channel::Telegram,
                id: "mem-1".into(),
            },
            b: SenderRef {
                channel: Channel::Whatsapp,
                id: "+15559903".into(),
            },
            at: 400_200,
        })
        .unwrap();
    let others = store.person_conversations(here.conversation_id).unwrap();
    assert_eq!(others, [(there.conversation_id, Channel::Whatsapp)]);
    let said = store
        .user_messages_of(&[there.conversation_id], 10)
        .unwrap();
    assert_eq!(
        said,
        [(
            there.conversation_id,
            400_100,
            "my bike is a red Gazelle".to_string()
        )]
    );
}

fn people_are_made_on_first_contact_and_linked_by_code(store: &dyn AnyStore) {
    use convagent::core::people::CODE_LIFETIME_MS;
    let tg = ConversationKey::new(Channel::Telegram, "li-42", "li-42");
    let wa = ConversationKey::new(
        Channel::Whatsapp,
        "whatsapp:+15559901",
        "whatsapp:+15559901",
    );
    let sms = ConversationKey::new(Channel::Sms, "+15559902", "+15559902");
    for (i, key) in [&tg, &wa, &sms].into_iter().enumerate() {
        store
            .accept(&message(key, &format!("li-{i}"), "hi", 200_000 + i as i64))
            .unwrap();
    }
    // A second conversation of one sender is the same person.
    let tg_thread = ConversationKey::new(Channel::Telegram, "li-42", "group-7");
    store
        .accept(&message(&tg_thread, "li-9", "hi", 200_010))
        .unwrap();
    let sender = |channel, id: &str| SenderRef {
        channel,
        id: id.into(),
    };
    let li = sender(Channel::Telegram, "li-42");
    // WhatsApp senders are stored with the channel's prefix; found without.
    let ana_wa = sender(Channel::Whatsapp, "+15559901");
    let ana_sms = sender(Channel::Sms, "+15559902");
    let p_tg = store.person_of(&li).unwrap().unwrap();
    assert_eq!(p_tg.identities.len(), 1);
    let p_wa = store.person_of(&ana_wa).unwrap().unwrap();
    assert_ne!(p_tg.id, p_wa.id, "strangers until linked");
    assert_eq!(p_wa.identities[0].sender, "whatsapp:+15559901");

    // By code: asked on Telegram, sent from WhatsApp.
    let code = |sender: &SenderRef, code: &str, at| {
        store.write_now(Write::LinkCode {
            sender: sender.clone(),
            code: code.into(),
            at,
        })
    };
    let redeem = |sender: &SenderRef, code: &str, at| {
        store
            .write_now(Write::Redeem {
                sender: sender.clone(),
                code: code.into(),
                at,
            })
            .unwrap()
            .redeemed()
            .unwrap()
    };
    code(&li, "111111", 300_000).unwrap();
    assert!(
        redeem(&li, "111111", 300_100)
            .unwrap_err()
            .contains("other chat")
    );
    assert!(
        redeem(&ana_wa, "999999", 300_100)
            .unwrap_err()
            .contains("not known")
    );
    let linked = redeem(&ana_wa, "111111", 300_200).unwrap();
    assert_eq!(linked.id, p_tg.id, "joined to the code's person");
    assert_eq!(linked.identities.len(), 2);
    assert_eq!(store.person_of(&ana_wa).unwrap().unwrap().id, p_tg.id);
    assert_eq!(
        store.person(p_wa.id).unwrap(),
        None,
        "the joined person is gone"
    );
    assert!(
        redeem(&ana_sms, "111111", 300_300)
            .unwrap_err()
            .contains("used already")
    );
    code(&li, "222222", 300_400).unwrap();
    assert!(
        redeem(&ana_sms, "222222", 300_400 + CODE_LIFETIME_MS + 1)
            .unwrap_err()
            .contains("ran out")
    );
    // Wrong codes are counted per identity and hour (they were committed):
    // two so far, three more close it even to a good code.
    for wrong in ["333333", "777777", "888888"] {
        assert!(
            redeem(&ana_sms, wrong, 300_500)
                .unwrap_err()
                .contains("not known")
        );
    }
    code(&li, "444444", 300_600).unwrap();
    assert!(
        redeem(&ana_sms, "444444", 300_700)
            .unwrap_err()
            .contains("too many wrong"),
        "five failures this hour close it"
    );
    // Asking for codes is limited too: three asked so far, two more, then no.
    code(&li, "555555", 300_800).unwrap();
    code(&li, "565656", 300_800).unwrap();
    match code(&li, "575757", 300_800) {
        Err(StoreError::Invalid(why)) => assert!(why.contains("too many"), "{why}"),
        other => panic!("a sixth code within the hour: {other:?}"),
    }
    assert!(matches!(
        code(&sender(Channel::Slack, "nobody"), "666666", 300_900),
        Err(StoreError::NotFound(_))
    ));

    // By an operator: link and unlink.
    let all = store
        .write_now(Write::Link {
            a: li.clone(),
            b: ana_sms.clone(),
            at: 301_000,
        })
        .unwrap()
        .person()
        .unwrap();
    assert_eq!(all.identities.len(), 3);
    assert!(store.people(100).unwrap().iter().any(|p| p.id == all.id));
    let alone = store
        .write_now(Write::Unlink {
            sender: ana_sms.clone(),
            at: 301_100,
        })
        .unwrap()
        .person()
        .unwrap();
    assert_ne!(alone.id, all.id);
    assert_eq!(store.person(all.id).unwrap().unwrap().identities.len(), 2);

    // Erasing the person takes every identity's data, and the person.
    let erased = store
        .write_now(Write::ErasePerson {
            person: all.id,
            at: 302_000,
        })
        .unwrap()
        .erased()
        .unwrap();
    assert_eq!(
        erased.conversations, 3,
        "two Telegram, one WhatsApp: {erased:?}"
    );
    assert_eq!(store.person(all.id).unwrap(), None);
    assert_eq!(store.person_of(&li).unwrap(), None);
    assert!(store.sender_data(&ana_wa).unwrap().conversations.is_empty());
    // Erasing a sender takes its identity, and its person when alone.
    store
        .write_now(Write::Erase {
            sender: ana_sms.clone(),
            at: 302_100,
        })
        .unwrap();
    assert_eq!(store.person(alone.id).unwrap(), None);
    // A sender writing again after an erasure is a new person.
    store
        .accept(&message(&sms, "li-10", "back", 303_000))
        .unwrap();
    assert!(store.person_of(&ana_sms).unwrap().is_some());
}

fn approvals_are_asked_once_answered_once_and_run_once(store: &dyn AnyStore) {
    use convagent::core::approvals::{ApprovalState, Ask, Decision};
    let key = ConversationKey::new(Channel::Telegram, "paula-approves", "");
    let m = store
        .accept(&message(&key, "p-1", "book it", 97_000))
        .unwrap();
    let ask = Ask {
        conversation_id: m.conversation_id,
        message_id: m.message_id,
        correlation_id: "corr-approve".into(),
        tool: "book_table".into(),
        arguments: r#"{"people":4}"#.into(),
        at: 97_010,
        deadline_at: 97_010 + 60_000,
    };
    let (first, new) = store
        .write_now(Write::Ask(ask.clone()))
        .unwrap()
        .approval()
        .unwrap();
    assert!(new);
    assert_eq!(first.state, ApprovalState::Pending);
    // The same call of the same turn, asked again (after a restart).
    let (again, new) = store
        .write_now(Write::Ask(Ask {
            at: 99_000,
            deadline_at: 159_000,
            ..ask.clone()
        }))
        .unwrap()
        .approval()
        .unwrap();
    assert!(!new);
    assert_eq!(
        (again.id, again.deadline_at),
        (first.id, 97_010 + 60_000),
        "its first wait"
    );
    let other = Ask {
        arguments: r#"{"people":5}"#.into(),
        ..ask.clone()
    };
    let (other, new) = store
        .write_now(Write::Ask(other))
        .unwrap()
        .approval()
        .unwrap();
    assert!(new && other.id != first.id, "other arguments: another call");
    assert_eq!(
        store
            .approvals(true, 10)
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect::<Vec<_>>(),
        [other.id, first.id]
    );

    let decide = |id, decision, at| {
        store
            .write_now(Write::Decide {
                id,
                decision,
                by: "ana".into(),
                at,
            })
            .unwrap()
            .approval()
            .unwrap()
            .0
    };
    // Expiring before the deadline does nothing; approving does.
    assert_eq!(
        decide(first.id, Decision::Expire, 98_000).state,
        ApprovalState::Pending
    );
    let approved = decide(first.id, Decision::Approve, 98_000);
    assert_eq!(
        (
            approved.state,
            approved.decided_by.as_deref(),
            approved.decided_at
        ),
        (ApprovalState::Approved, Some("ana"), Some(98_000))
    );
    assert_eq!(
        decide(first.id, Decision::Deny, 98_100).state,
        ApprovalState::Approved,
        "answered once"
    );
    // Past its deadline only the timeout answers.
    assert_eq!(
        decide(other.id, Decision::Approve, 200_000).state,
        ApprovalState::Pending
    );
    assert_eq!(
        decide(other.id, Decision::Expire, 200_000).state,
        ApprovalState::Expired
    );
    assert!(matches!(
        store.write_now(Write::Decide {
            id: 999_999,
            decision: Decision::Deny,
            by: "x".into(),
            at: 1
        }),
        Err(StoreError::NotFound(_))
    ));

    // One run: the first claim wins; a denied call has none.
    let claim = |id| {
        store
            .write_now(Write::RunApproved { id, at: 98_200 })
            .unwrap()
            .claimed()
            .unwrap()
    };
    assert!(claim(first.id));
    assert!(!claim(first.id), "runs once");
    assert!(!claim(other.id), "never approved");
    store
        .write_now(Write::ApprovalResult {
            id: first.id,
            result: "booked".into(),
        })
        .unwrap();
    let done = store.approval(first.id).unwrap().unwrap();
    assert_eq!(
        (done.ran_at, done.result.as_deref()),
        (Some(98_200), Some("booked"))
    );
    assert!(store.approvals(true, 10).unwrap().is_empty());
    assert_eq!(store.approvals(false, 10).unwrap().len(), 2);

    // Erasing the person takes their approvals too.
    store
        .write_now(Write::Erase {
            sender: SenderRef {
                channel: Channel::Telegram,
                id: "paula-approves".into(),
            },
            at: 300_000,
        })
        .unwrap();
    assert_eq!(store.approval(first.id).unwrap(), None);
}

fn the_last_notice_of_a_kind_is_found(store: &dyn AnyStore) {
    let key = ConversationKey::new(Channel::Telegram, "nina-notice", "");
    let voice = store.accept(&message(&key, "n-1", "", 95_000)).unwrap();
    let c = voice.conversation_id;
    assert_eq!(store.last_reply_by(c, "media", "voice").unwrap(), None);
    let notice = NewReply {
        kind: ReplyKind::Refusal,
        provider: "media".into(),
        model: "voice".into(),
        ..reply("I can't listen to voice notes here yet.", 95_010, 1)
    };
    store.record_reply(voice.message_id, &notice).unwrap();
    assert_eq!(
        store.last_reply_by(c, "media", "voice").unwrap(),
        Some(95_010)
    );
    assert_eq!(store.last_reply_by(c, "media", "image").unwrap(), None);
    let other = store
        .accept(&message(
            &ConversationKey::new(Channel::Telegram, "otto", ""),
            "o-1",
            "",
            95_020,
        ))
        .unwrap();
    assert_eq!(
        store
            .last_reply_by(other.conversation_id, "media", "voice")
            .unwrap(),
        None,
        "per conversation"
    );
}

fn sender(id: &str) -> SenderRef {
    SenderRef {
        channel: Channel::Telegram,
        id: id.into(),
    }
}

/// Accepts `id` from `key` at `at` and answers it at `at + 50`; the reply
/// is sent when `sent`. Returns the conversation.
fn answered(store: &dyn AnyStore, key: &ConversationKey, id: &str, at: i64, sent: bool) -> i64 {
    let accepted = store
        .accept(&message(key, id, "zanzibar quartz", at))
        .unwrap();
    store
        .record_turn_reply(accepted.message_id, &[], &reply("noted", at + 50, 1))
        .unwrap();
    if sent {
        let item = store.head(accepted.conversation_id).unwrap().unwrap();
        store
            .write_now(Write::Outbox {
                id: item.id,
                update: OutboxUpdate::Sent {
                    provider_message_id: None,
                    dry_run: true,
                },
                at: at + 60,
            })
            .unwrap();
    }
    accepted.conversation_id
}

fn erasing_a_sender_leaves_nothing_of_them(store: &dyn AnyStore) {
    let erin = ConversationKey::new(Channel::Telegram, "erin-erase", "");
    answered(store, &erin, "erin-1", 90_000, false);
    let second = store
        .accept(&message(&erin, "erin-2", "zanzibar again", 90_100))
        .unwrap();
    let correlation = store.messages(second.conversation_id).unwrap()[2]
        .correlation_id
        .clone()
        .unwrap();
    store
        .record_traces(&[convagent::core::TraceEvent {
            correlation_id: correlation,
            stage: convagent::core::Stage::Received,
            attempt: None,
            started_at: 90_100,
            duration_us: 5,
            outcome: convagent::core::Outcome::Ok,
            detail: None,
        }])
        .unwrap();
    let other = ConversationKey::new(Channel::Telegram, "olga-kept", "");
    answered(store, &other, "olga-1", 90_200, true);
    let held = store.sender_data(&sender("erin-erase")).unwrap();
    assert_eq!((held.messages.len(), held.outbox.len()), (3, 1));
    assert!(!held.traces.is_empty());

    let erased = store
        .write_now(Write::Erase {
            sender: sender("erin-erase"),
            at: 91_000,
        })
        .unwrap()
        .erased()
        .unwrap();
    assert_eq!(
        (erased.conversations, erased.messages, erased.outbox),
        (1, 3, 1)
    );
    assert!(erased.traces >= 1, "{erased:?}");
    let left = store.sender_data(&sender("erin-erase")).unwrap();
    assert!(
        left.conversations.is_empty()
            && left.messages.is_empty()
            && left.outbox.is_empty()
            && left.traces.is_empty(),
        "{left:?}"
    );
    assert!(store.open_conversation(&erin).unwrap().is_none());
    let found = store
        .search("zanzibar", None, 10, SearchOrder::Newest)
        .unwrap();
    assert!(
        found.iter().all(|h| h.sender != "erin-erase"),
        "search still finds them: {found:?}"
    );
    // Someone else is untouched.
    assert_eq!(
        store
            .sender_data(&sender("olga-kept"))
            .unwrap()
            .messages
            .len(),
        2
    );
}

fn pruning_deletes_idle_conversations_and_nothing_still_owed(store: &dyn AnyStore) {
    // Long idle, answered and sent; long idle but still owed an answer;
    // long idle with its reply still queued.
    let done = ConversationKey::new(Channel::Telegram, "pat-done", "");
    let owed = ConversationKey::new(Channel::Telegram, "pat-owed", "");
    let queued = ConversationKey::new(Channel::Telegram, "pat-queued", "");
    answered(store, &done, "pat-1", 100, true);
    store
        .accept(&message(&owed, "pat-2", "hello?", 150))
        .unwrap();
    answered(store, &queued, "pat-3", 160, false);
    let prune = |dry_run| {
        Write::Prune(Prune {
            messages_before: Some(1_000),
            traces_before: None,
            limit: 100,
            dry_run,
        })
    };

    let counted = store.write_now(prune(true)).unwrap().erased().unwrap();
    assert!(counted.conversations >= 1, "{counted:?}");
    assert!(
        store.open_conversation(&done).unwrap().is_some(),
        "a dry run keeps it"
    );

    let pruned = store.write_now(prune(false)).unwrap().erased().unwrap();
    assert_eq!(pruned.conversations, counted.conversations);
    assert!(
        store
            .sender_data(&sender("pat-done"))
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(
        store
            .sender_data(&sender("pat-owed"))
            .unwrap()
            .messages
            .len(),
        1
    );
    assert_eq!(
        store
            .sender_data(&sender("pat-queued"))
            .unwrap()
            .messages
            .len(),
        2
    );
}

fn send(to: Destination, text: &str, answers_pending: bool, at: i64) -> Write {
    Write::Send(Outgoing {
        to,
        text: text.into(),
        provider: "mcp".into(),
        sender: "an-mcp-client".into(),
        correlation_id: CorrelationId::generate().0,
        answers_pending,
        at,
    })
}

fn an_outside_agent_sends_and_answers(store: &dyn AnyStore) {
    // To someone never seen: a conversation is opened, the message queued.
    let carol = ConversationKey::new(Channel::Telegram, "carol-mcp", "");
    let sent = store
        .write_now(send(
            Destination::Key(carol.clone()),
            "hello Carol",
            false,
            80_000,
        ))
        .unwrap()
        .sent()
        .unwrap();
    let conversation = store.open_conversation(&carol).unwrap().unwrap();
    assert_eq!(sent.message.conversation_id, conversation);
    assert_eq!(sent.message.role, Role::Assistant);
    assert_eq!(sent.message.reply_to, None);
    assert_eq!(sent.message.provider.as_deref(), Some("mcp"));
    assert_eq!(sent.message.model.as_deref(), Some("an-mcp-client"));
    assert!(sent.answered.is_empty());
    let item = store
        .head(conversation)
        .unwrap()
        .expect("queued in the outbox");
    assert_eq!(Some(item.id), sent.outbox_id);
    assert_eq!(
        store
            .conversation(conversation)
            .unwrap()
            .unwrap()
            .message_count,
        1
    );

    // Carol writes twice; a message that answers pending ones covers both.
    let first = store
        .accept(&message(&carol, "mcp-1", "hi", 80_100))
        .unwrap();
    let second = store
        .accept(&message(&carol, "mcp-2", "are you there?", 80_200))
        .unwrap();
    let answer = store
        .write_now(send(
            Destination::Conversation(conversation),
            "yes",
            true,
            80_300,
        ))
        .unwrap()
        .sent()
        .unwrap();
    assert_eq!(answer.answered, vec![first.message_id, second.message_id]);
    assert_eq!(answer.message.reply_to, Some(second.message_id));
    assert!(store.pending(conversation, 10).unwrap().is_empty());
    assert!(answer.outbox_id.is_some());
    // Nothing left to answer: the next one answers nothing.
    let again = store
        .write_now(send(
            Destination::Conversation(conversation),
            "more",
            true,
            80_400,
        ))
        .unwrap()
        .sent()
        .unwrap();
    assert!(again.answered.is_empty());
    assert_eq!(again.message.reply_to, None);

    match store.write_now(send(Destination::Conversation(999_999), "x", false, 80_500)) {
        Err(StoreError::NotFound(what)) => assert!(what.contains("999999"), "{what}"),
        other => panic!("expected not found, got {other:?}"),
    }
}

fn take(consumer: &str, channel: Option<Channel>, now: i64) -> Write {
    Write::Take(Take {
        consumer: consumer.into(),
        channel,
        conversation_id: None,
        until: now + 1_000,
        now,
    })
}

fn take_of(write: Write) -> Take {
    match write {
        Write::Take(take) => take,
        _ => unreachable!("made by take()"),
    }
}

fn a_message_is_taken_by_one_consumer_at_a_time(store: &dyn AnyStore) {
    let dave = ConversationKey::new(Channel::Slack, "dave-take", "");
    let taken_by = |w: Write| store.write_now(w).unwrap().taken().unwrap();
    // Whatever earlier checks left unanswered is taken first; take it all.
    let sweep = Write::Take(Take {
        until: i64::MAX,
        ..take_of(take("sweeper", None, 90_000))
    });
    let swept = (0..1_000).find(|_| taken_by(sweep.clone()).is_none());
    assert!(swept.is_some(), "a taken message was handed out again");
    let a = store
        .accept(&message(&dave, "take-a", "one", 90_010))
        .unwrap();
    let b = store
        .accept(&message(&dave, "take-b", "two", 90_020))
        .unwrap();

    let first = taken_by(take("x", None, 90_100)).expect("a message to take");
    assert_eq!(first.id, a.message_id, "oldest first");
    let second = taken_by(take("y", None, 90_100)).expect("the next one");
    assert_eq!(second.id, b.message_id, "not the one x holds");
    assert_eq!(taken_by(take("z", None, 90_100)), None);
    // A filter on another channel finds nothing of Dave's.
    assert_eq!(taken_by(take("z", Some(Channel::Telegram), 91_200)), None);
    // x's time runs out: the message goes to the next consumer.
    let again = taken_by(take("z", Some(Channel::Slack), 91_200)).expect("released by time");
    assert_eq!(again.id, a.message_id);
    // Answered messages are never handed out again.
    store
        .write_now(send(
            Destination::Conversation(a.conversation_id),
            "ok",
            true,
            91_300,
        ))
        .unwrap();
    assert_eq!(taken_by(take("z", None, 99_000)), None);
}

fn access_tokens_are_kept_hashed_by_name(store: &dyn AnyStore) {
    let create = |name: &str, sha: &str| {
        store.write_now(Write::Token(TokenChange::Create {
            name: name.into(),
            sha256: sha.into(),
            at: 1_000,
            operator: name == "ci",
        }))
    };
    create("laptop", "aa11").unwrap();
    create("ci", "bb22").unwrap();
    match create("laptop", "cc33") {
        Err(StoreError::Invalid(why)) => assert!(why.contains("laptop"), "{why}"),
        other => panic!("a second token of one name: {other:?}"),
    }
    let names: Vec<_> = store
        .tokens()
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["ci", "laptop"]);
    let ci = store.token_by_hash("bb22").unwrap().unwrap();
    assert_eq!((ci.name.as_str(), ci.operator), ("ci", true));
    assert!(!store.token_by_hash("aa11").unwrap().unwrap().operator);
    assert_eq!(store.token_by_hash("cc33").unwrap(), None);
    store
        .write_now(Write::Token(TokenChange::Used {
            sha256: "bb22".into(),
            at: 2_000,
        }))
        .unwrap();
    assert_eq!(
        store.token_by_hash("bb22").unwrap().unwrap().last_used_at,
        Some(2_000)
    );
    store
        .write_now(Write::Token(TokenChange::Revoke { name: "ci".into() }))
        .unwrap();
    assert_eq!(store.token_by_hash("bb22").unwrap(), None);
    assert!(matches!(
        store.write_now(Write::Token(TokenChange::Revoke { name: "ci".into() })),
        Err(StoreError::NotFound(_))
    ));
}

fn accept_and_deduplicate(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Whatsapp, "whatsapp:+15550001", "");
    let first = store.accept(&message(&key, "SM1", "hello", 1_000)).unwrap();
    assert!(!first.duplicate);
    let again = store
        .accept(&message(&key, "SM1", "hello (redelivered)", 2_000))
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(again.message_id, first.message_id);
    assert_eq!(again.conversation_id, first.conversation_id);
    // The same provider id on another channel is another message.
    let other = ConversationKey::new(Channel::Slack, "U1", "");
    assert!(
        !store
            .accept(&message(&other, "SM1", "hi", 3_000))
            .unwrap()
            .duplicate
    );
    let msgs = store.messages(first.conversation_id).unwrap();
    assert_eq!(msgs.len(), 1, "the duplicate stored nothing");
    assert_eq!(msgs[0].text, "hello");
    assert_eq!(msgs[0].provider_message_id.as_deref(), Some("SM1"));
    assert!(store.accept(&message(&key, "", "no id", 4_000)).is_err());
}

fn a_batch_of_accepts_is_one_result_each_in_order(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Whatsapp, "batch", "");
    let batch = [
        message(&key, "batch-1", "one", 5_000),
        message(&key, "batch-2", "two", 5_001),
        message(&key, "batch-1", "one again", 5_002),
        message(&key, "", "no id", 5_003),
        message(&key, "batch-3", "three", 5_004),
    ];
    let writes: Vec<Write> = batch.iter().cloned().map(Write::Accept).collect();
    let results: Vec<_> = store
        .write_batch(&writes)
        .into_iter()
        .map(|r| r.and_then(Written::accepted))
        .collect();
    assert_eq!(results.len(), 5);
    let ok: Vec<_> = results
        .iter()
        .map(|r| r.as_ref().map(|a| a.duplicate))
        .collect();
    assert!(
        matches!(ok[..], [Ok(false), Ok(false), Ok(true), Err(_), Ok(false)]),
        "{ok:?}"
    );
    let first = results[0].as_ref().unwrap();
    assert_eq!(
        results[2].as_ref().unwrap().message_id,
        first.message_id,
        "a duplicate within the batch"
    );
    let texts: Vec<String> = store
        .messages(first.conversation_id)
        .unwrap()
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(
        texts,
        ["one", "two", "three"],
        "the bad one left the others stored"
    );
    // The full-text index holds what the batch stored, whether or not a
    // write in it failed, and nothing of what it refused.
    for (word, found) in [
        ("one", 1),
        ("two", 1),
        ("three", 1),
        ("again", 0),
        ("id", 0),
    ] {
        let hits = store.search(word, None, 10, SearchOrder::Newest).unwrap();
        let hits = hits.iter().filter(|h| h.sender == "batch").count();
        assert_eq!(hits, found, "search for {word:?}");
    }
}

fn replies_are_unique_per_message(store: &dyn Store) {
    let a = store
        .accept(&message(&alice(), "u1", "what time is it?", 10_000))
        .unwrap();
    assert_eq!(store.reply_to(a.message_id).unwrap(), None);
    let id = store
        .record_reply(a.message_id, &reply("noon", 10_500, 1))
        .unwrap();
    let second = store
        .record_reply(a.message_id, &reply("midnight", 10_600, 1))
        .unwrap();
    assert_eq!(id.id, second.id, "a second reply keeps the first");
    assert_eq!(second.text, "noon");
    let stored = store.reply_to(a.message_id).unwrap().unwrap();
    assert_eq!(stored.text, "noon");
    assert_eq!(stored.role, Role::Assistant);
    assert_eq!(stored.reply_to, Some(a.message_id));
    assert_eq!(stored.provider.as_deref(), Some("fake"));
    assert_eq!(stored.model.as_deref(), Some("fake-model"));
    assert_eq!(stored.prompt_version, Some(1));
    assert_eq!(
        (stored.prompt_tokens, stored.completion_tokens),
        (Some(12), Some(3))
    );
    assert_eq!(stored.latency_ms, Some(42));
    assert!(store.record_reply(999_999, &reply("x", 1, 1)).is_err());
    let found = |word: &str| {
        store
            .search(word, None, 10, SearchOrder::Newest)
            .unwrap()
            .len()
    };
    assert_eq!(found("noon"), 1, "a stored reply is searchable");
    assert_eq!(found("midnight"), 0, "a reply not kept is not");
}

fn recent_turns_are_bounded_and_ordered(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Telegram, "bob", "");
    let mut last = None;
    for i in 0..30 {
        let a = store
            .accept(&message(
                &key,
                &format!("b{i}"),
                &format!("q{i}"),
                20_000 + i,
            ))
            .unwrap();
        store
            .record_reply(a.message_id, &reply(&format!("a{i}"), 20_000 + i, 1))
            .unwrap();
        last = Some(a);
    }
    let last = last.unwrap();
    let turns = store
        .recent_turns(last.conversation_id, last.message_id, 5)
        .unwrap();
    let texts: Vec<&str> = turns.iter().map(|t| t.text.as_str()).collect();
    // Up to and including the message being answered, not its reply.
    assert_eq!(texts, ["q27", "a27", "q28", "a28", "q29"]);
    assert_eq!(turns[4].role, Role::User);
    assert_eq!(turns[3].role, Role::Assistant);
    let all = store
        .recent_turns(last.conversation_id, i64::MAX, 1000)
        .unwrap();
    assert_eq!(all.len(), 60);
}

fn reset_starts_a_new_conversation(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Cli, "carol", "");
    let first = store.accept(&message(&key, "c1", "one", 30_000)).unwrap();
    assert_eq!(
        store.open_conversation(&key).unwrap(),
        Some(first.conversation_id)
    );
    assert!(store.close_conversation(&key, 30_100).unwrap());
    assert!(
        !store.close_conversation(&key, 30_200).unwrap(),
        "nothing open to close"
    );
    assert_eq!(store.open_conversation(&key).unwrap(), None);
    let second = store.accept(&message(&key, "c2", "two", 30_300)).unwrap();
    assert_ne!(second.conversation_id, first.conversation_id);
    assert!(
        store
            .conversation(first.conversation_id)
            .unwrap()
            .unwrap()
            .closed
    );
    assert!(
        !store
            .conversation(second.conversation_id)
            .unwrap()
            .unwrap()
            .closed
    );
    // Threads are separate conversations.
    let thread = ConversationKey::new(Channel::Cli, "carol", "t1");
    let t = store
        .accept(&message(&thread, "c3", "three", 30_400))
        .unwrap();
    assert_ne!(t.conversation_id, second.conversation_id);
}

fn listing_filters_and_orders(store: &dyn Store) {
    let all = store.conversations(&ConversationFilter::default()).unwrap();
    assert!(all.len() >= 6);
    assert!(
        all.windows(2)
            .all(|w| w[0].last_activity_at >= w[1].last_activity_at)
    );
    let telegram = store
        .conversations(&ConversationFilter {
            channel: Some(Channel::Telegram),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(telegram.len(), 2);
    assert!(telegram.iter().all(|c| c.channel == Channel::Telegram));
    let bob = &telegram[0];
    assert_eq!(bob.sender, "bob");
    assert_eq!(bob.message_count, 60);
    let limited = store
        .conversations(&ConversationFilter {
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(limited.len(), 2);
    let by_sender = store
        .conversations(&ConversationFilter {
            sender: Some("alice".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_sender.len(), 1);
    assert_eq!(store.conversation(-1).unwrap(), None);
}

fn search_finds_words(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Slack, "U9", "1700000000.000100");
    store
        .accept(&message(
            &key,
            "s1",
            "The invoice for März is attached",
            40_000,
        ))
        .unwrap();
    let hits = store
        .search("invoice marz", None, 10, SearchOrder::Newest)
        .unwrap();
    assert_eq!(hits.len(), 1, "diacritics folded, all words required");
    assert_eq!(hits[0].channel, Channel::Slack);
    assert_eq!(hits[0].sender, "U9");
    assert!(hits[0].snippet.contains("[invoice]"), "{}", hits[0].snippet);
    assert!(
        store
            .search("invoice", Some(Channel::Telegram), 10, SearchOrder::Newest)
            .unwrap()
            .is_empty()
    );
    // FTS syntax in user input is taken literally, not as an operator.
    assert!(
        store
            .search("invoice OR \"unbalanced", None, 10, SearchOrder::Newest)
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .search("  *  ", None, 10, SearchOrder::Newest)
            .is_err()
    );

    // Newest first by default; by relevance on request.
    let older = store
        .accept(&message(
            &key,
            "s2",
            "invoice invoice invoice, the invoice again",
            40_001,
        ))
        .unwrap();
    let newer = store
        .accept(&message(
            &key,
            "s3",
            "one invoice and much else besides that",
            40_002,
        ))
        .unwrap();
    let ids = |order| -> Vec<i64> {
        store
            .search("invoice", None, 2, order)
            .unwrap()
            .iter()
            .map(|h| h.message.id)
            .collect()
    };
    assert_eq!(
        ids(SearchOrder::Newest),
        [newer.message_id, older.message_id]
    );
    assert_eq!(ids(SearchOrder::Relevance)[0], older.message_id);
}

fn prompts_are_versioned(store: &dyn Store) {
    assert_eq!(store.current_prompt().unwrap(), None);
    let v1 = store.ensure_prompt("be kind", 50_000).unwrap();
    assert_eq!(v1.version, 1);
    assert_eq!(store.ensure_prompt("ignored", 50_100).unwrap(), v1);
    let v2 = store.set_prompt("be brief", 50_200).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(store.current_prompt().unwrap().unwrap().text, "be brief");
    assert!(store.set_prompt("   ", 50_300).is_err());
    assert_eq!(
        (v1.source.as_str(), v2.source.as_str()),
        ("default", "chat")
    );

    // The configuration as it was seeded: a `/prompt set` since then stays.
    assert_eq!(store.sync_configured_prompt("be kind", 50_400).unwrap(), v2);
    // Edited in the configuration: a new version, once.
    let v3 = store.sync_configured_prompt("be polite", 50_500).unwrap();
    assert_eq!((v3.version, v3.source.as_str()), (3, "config"));
    assert_eq!(
        store.sync_configured_prompt("be polite", 50_600).unwrap(),
        v3
    );
    // A person's prompt outlives restarts with the same configuration...
    let v4 = store.set_prompt("be brief again", 50_700).unwrap();
    assert_eq!(
        store.sync_configured_prompt("be polite", 50_800).unwrap(),
        v4
    );
    // ...until the configuration changes again.
    let v5 = store.sync_configured_prompt("be formal", 50_900).unwrap();
    assert_eq!((v5.version, v5.text.as_str()), (5, "be formal"));
    assert_eq!(store.latest_prompt_from("config").unwrap().unwrap(), v5);
}

fn fallbacks_leave_messages_pending(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Whatsapp, "whatsapp:+15550002", "");
    let a = store
        .accept(&message(&key, "SM-f1", "first", 60_000))
        .unwrap();
    let b = store
        .accept(&message(&key, "SM-f2", "second", 60_001))
        .unwrap();
    let pending: Vec<String> = store
        .pending(a.conversation_id, 10)
        .unwrap()
        .into_iter()
        .map(|p| p.message.text)
        .collect();
    assert_eq!(pending, ["first", "second"]);

    let fallback = NewReply {
        kind: ReplyKind::Fallback,
        ..reply("back soon", 60_100, 1)
    };
    let f = store.record_reply(a.message_id, &fallback).unwrap();
    assert_eq!(f.kind, Some(ReplyKind::Fallback));
    assert_eq!(
        store.reply_to(a.message_id).unwrap(),
        None,
        "a fallback is not the answer"
    );
    assert_eq!(
        store.latest_reply(a.conversation_id).unwrap().unwrap().id,
        f.id,
        "the conversation's newest reply is the fallback"
    );
    assert_eq!(store.pending(a.conversation_id, 10).unwrap().len(), 2);

    let answer = store
        .record_reply(a.message_id, &reply("the answer", 60_200, 1))
        .unwrap();
    assert_eq!(store.reply_to(a.message_id).unwrap().unwrap().id, answer.id);
    let refusal = NewReply {
        kind: ReplyKind::Refusal,
        ..reply("no", 60_300, 1)
    };
    store.record_reply(b.message_id, &refusal).unwrap();
    assert!(store.pending(a.conversation_id, 10).unwrap().is_empty());

    // The pending message comes back whole, ready to be handled again.
    let photo = Attachment {
        url: "https://example.com/a.jpg".into(),
        content_type: Some("image/jpeg".into()),
        width: Some(640),
        height: Some(480),
        ..Attachment::new(convagent::core::AttachmentKind::Photo)
    };
    let c = store
        .accept(&InboundMessage {
            attachments: vec![photo.clone()],
            ..message(&key, "SM-f3", "third", 60_400)
        })
        .unwrap();
    // The model reads the photo's stand-in before the text.
    let turns = store
        .recent_turns(c.conversation_id, c.message_id, 1)
        .unwrap();
    assert_eq!(turns[0].text, "[photo 640×480, image/jpeg]\nthird");
    let back = store.pending(c.conversation_id, 10).unwrap().remove(0);
    assert_eq!(back.conversation_id, c.conversation_id);
    assert_eq!(back.message_id, c.message_id);
    let back = back.message;
    assert_eq!(back.key, key);
    assert_eq!(back.provider_message_id, "SM-f3");
    assert_eq!(back.attachments, [photo]);
    assert_eq!(back.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(back.correlation_id.0.len(), 32);
    store
        .record_violation(c.message_id, "credential_request", 60_500)
        .unwrap();
}

fn a_turn_reply_covers_its_burst(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Whatsapp, "whatsapp:+15550001111", "");
    let other = ConversationKey::new(Channel::Whatsapp, "whatsapp:+15550002222", "");
    let burst: Vec<_> = ["hi", "I need help", "with my order"]
        .iter()
        .enumerate()
        .map(|(i, t)| {
            store
                .accept(&message(
                    &key,
                    &format!("SM-burst-{i}"),
                    t,
                    70_000 + i as i64,
                ))
                .unwrap()
        })
        .collect();
    let stranger = store
        .accept(&message(&other, "SM-burst-other", "not mine", 70_010))
        .unwrap();
    let (first, last) = (burst[0].message_id, burst[2].message_id);

    // A fallback covers nothing: the whole burst stays pending.
    store
        .record_turn_reply(
            last,
            &[first, burst[1].message_id],
            &NewReply {
                kind: ReplyKind::Fallback,
                ..reply("later", 70_050, 1)
            },
        )
        .unwrap();
    assert_eq!(
        store.pending(burst[0].conversation_id, 10).unwrap().len(),
        3
    );

    // The answer covers the burst, and only unanswered messages of its own
    // conversation: the stranger's id is ignored.
    let answer = store
        .record_turn_reply(
            last,
            &[first, burst[1].message_id, stranger.message_id],
            &reply("one answer for three", 70_100, 1),
        )
        .unwrap();
    assert!(
        store
            .pending(burst[0].conversation_id, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.pending(stranger.conversation_id, 10).unwrap().len(),
        1
    );
    let messages = store.messages(burst[0].conversation_id).unwrap();
    let covered: Vec<i64> = messages
        .iter()
        .filter(|m| m.answered_by == Some(answer.id))
        .map(|m| m.id)
        .collect();
    assert_eq!(covered, [first, burst[1].message_id]);
    assert_eq!(answer.reply_to, Some(last));
    assert_eq!(store.reply_to(last).unwrap().unwrap().id, answer.id);
}

fn sender_names_are_kept_with_the_conversation(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Telegram, "424242", "424242");
    let mut m = message(&key, "424242:1", "hello", 80_000);
    m.metadata
        .insert(convagent::core::message::SENDER_NAME.into(), "Ana".into());
    let a = store.accept(&m).unwrap();
    let c = store.conversation(a.conversation_id).unwrap().unwrap();
    assert_eq!(c.display_name.as_deref(), Some("Ana"));
    assert_eq!(c.who(), "Ana (424242)");
    // A later message without a name keeps the one known.
    store
        .accept(&message(&key, "424242:2", "again", 80_100))
        .unwrap();
    let c = store.conversation(a.conversation_id).unwrap().unwrap();
    assert_eq!(c.display_name.as_deref(), Some("Ana"));
}

fn summaries_are_kept_once_per_range(store: &dyn Store) {
    let key = ConversationKey::new(Channel::Telegram, "summarised", "");
    let a = store.accept(&message(&key, "sum1", "x", 70_000)).unwrap();
    assert_eq!(store.latest_summary(a.conversation_id).unwrap(), None);
    let summary = |from, to, text: &str| Summary {
        conversation_id: a.conversation_id,
        from_message_id: from,
        to_message_id: to,
        text: text.into(),
        provider: "fake".into(),
        model: "fake-model".into(),
        created_at: 70_100,
    };
    store.save_summary(&summary(1, 10, "first")).unwrap();
    let again = store.save_summary(&summary(1, 10, "redone")).unwrap();
    assert_eq!(again.text, "first", "a range is summarised once");
    store.save_summary(&summary(1, 20, "longer")).unwrap();
    assert_eq!(
        store
            .latest_summary(a.conversation_id)
            .unwrap()
            .unwrap()
            .text,
        "longer"
    );
}

fn breakers_round_trip(store: &dyn Store) {
    assert_eq!(store.breaker("ollama", "mistral:7b").unwrap(), None);
    let policy = BreakerPolicy {
        failure_threshold: 1,
        cooldown_ms: 1_000,
    };
    let mut b = Breaker::new("ollama", "mistral:7b", 80_000);
    let t = b.on_failure(80_001, "refused", &policy);
    store.save_breaker(&b, t.as_ref()).unwrap();
    let loaded = store.breaker("ollama", "mistral:7b").unwrap().unwrap();
    assert_eq!(loaded, b);
    assert_eq!(loaded.state, BreakerState::Open);
    let t = b.on_success(80_002);
    store.save_breaker(&b, t.as_ref()).unwrap();
    let all = store.breakers().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, BreakerState::Closed);
}

fn health_reports_current_schema(store: &dyn Store) {
    let h = store.health().unwrap();
    assert_eq!(h.schema_version, h.latest_schema_version);
    assert!(h.latest_schema_version >= 1);
    assert_eq!(h.integrity, Ok(()));
}

#[test]
fn sqlite_in_memory_conforms() {
    conformance(&SqliteStore::open_in_memory().unwrap());
}

/// The same suite on Postgres (a throwaway cluster), through the same
/// port: what SQLite promises, Postgres keeps.
#[test]
fn postgres_conforms() {
    let cluster = crate::support::postgres::Cluster::start();
    let store =
        convagent::adapters::store::PostgresStore::open(&cluster.database("conformance"), 2)
            .unwrap();
    conformance(&store);
}

#[test]
fn sqlite_file_conforms_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/convagent.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        conformance(&store);
    }
    let reopened = SqliteStore::open(&path).unwrap();
    let bob = reopened
        .conversations(&ConversationFilter {
            sender: Some("bob".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(bob[0].message_count, 60);
    assert_eq!(
        reopened.current_prompt().unwrap().unwrap().version,
        5,
        "every version of `prompts_are_versioned` survives the reopen"
    );
    let mode: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    let read_only = SqliteStore::open_with(&path, OpenMode::ReadOnly).unwrap();
    let everything = ConversationFilter::default();
    assert_eq!(
        read_only.conversations(&everything).unwrap(),
        reopened.conversations(&everything).unwrap()
    );
    let key = ConversationKey::new(Channel::Cli, "dave", "");
    assert!(
        read_only.accept(&message(&key, "d1", "x", 1)).is_err(),
        "read-only store refuses writes"
    );
}

#[test]
fn recent_turns_is_an_index_range_scan() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convagent.db");
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN {}",
            convagent::adapters::store::sqlite::RECENT_TURNS_SQL
        ))
        .unwrap();
    let plan: Vec<String> = stmt
        .query_map([1, 100, 10], |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = plan.join("\n");
    assert!(
        plan.contains("USING INDEX messages_by_conversation"),
        "{plan}"
    );
    assert!(
        !plan.contains("TEMP B-TREE"),
        "no sort of the whole conversation: {plan}"
    );
}

#[test]
fn gathering_context_reads_only_what_the_budget_can_hold() {
    use convagent::core::context::{PAGE_TURNS, estimate_tokens, gather};
    let store = SqliteStore::open_in_memory().unwrap();
    let key = alice();
    let text = "a turn of roughly twenty tokens, give or take a few words";
    let mut last = None;
    for i in 0..5_000 {
        last = Some(
            store
                .accept(&message(&key, &format!("g{i}"), text, i))
                .unwrap(),
        );
    }
    let last = last.unwrap();
    let per_turn = estimate_tokens(text);
    let turns = gather(&store, last.conversation_id, last.message_id, 1024).unwrap();
    assert!(
        turns.len() * per_turn > 1024,
        "enough turns to fill the budget"
    );
    assert!(
        (turns.len() - 1) * per_turn <= 1024,
        "no turn past the one that fills the budget: {} turns",
        turns.len()
    );
    assert_eq!(turns.last().unwrap().message_id, last.message_id);
    assert!(
        turns
            .windows(2)
            .all(|w| w[1].message_id == w[0].message_id + 1),
        "contiguous, oldest first"
    );

    let short = ConversationKey::new(Channel::Slack, "brief", "");
    let mut last = None;
    for i in 0..10 {
        last = Some(
            store
                .accept(&message(&short, &format!("s{i}"), "hi", i))
                .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(
        gather(&store, last.conversation_id, last.message_id, 4096)
            .unwrap()
            .len(),
        10
    );

    // Short turns: the budget holds several pages of them, and every page
    // that fits is read (a full page is not the end of the conversation).
    let chatty = ConversationKey::new(Channel::Slack, "chatty", "");
    let mut last = None;
    for i in 0..400 {
        last = Some(
            store
                .accept(&message(&chatty, &format!("c{i}"), "ok", i))
                .unwrap(),
        );
    }
    let last = last.unwrap();
    let turns = gather(&store, last.conversation_id, last.message_id, 1024).unwrap();
    assert!(
        turns.len() > 3 * PAGE_TURNS,
        "{} turns of {} tokens for a budget of 1024",
        turns.len(),
        estimate_tokens("ok")
    );
    assert!(
        turns.len() * estimate_tokens("ok") > 1024,
        "filled the budget"
    );
    assert_eq!(turns.last().unwrap().message_id, last.message_id);
    assert!(
        turns
            .windows(2)
            .all(|w| w[1].message_id == w[0].message_id + 1),
        "pages joined without gaps or repeats, oldest first"
    );
}

/// The agent's cache of recent turns gives exactly what reading them from
/// the store gives, turn after turn, with replies, bursts that arrive after
/// the message being answered, and another conversation in between.
#[test]
fn the_turn_cache_gives_what_the_store_holds() {
    use convagent::core::context::{TurnCache, gather};
    let store = SqliteStore::open_in_memory().unwrap();
    store.ensure_prompt("be brief", 0).unwrap();
    // One cache per budget (an agent has one budget), some of them small
    // enough for the budget to fall exactly on a turn's end now and then.
    let caches: Vec<(usize, TurnCache)> = (60..=70)
        .chain([1024])
        .map(|budget| (budget, TurnCache::default()))
        .collect();
    let (key, other) = (alice(), ConversationKey::new(Channel::Slack, "other", ""));
    for i in 0..300i64 {
        // Texts of varying length, so that the budget cuts at varying turns.
        let text = "word ".repeat((i % 17) as usize + 1);
        let a = store
            .accept(&message(&key, &format!("tc{i}"), &text, i))
            .unwrap();
        if i % 5 == 0 {
            // A burst: the next message is stored before this one is answered.
            store
                .accept(&message(&key, &format!("tc{i}-next"), "and also", i))
                .unwrap();
        }
        store
            .accept(&message(&other, &format!("o{i}"), "elsewhere", i))
            .unwrap();
        for (budget, cache) in &caches {
            let budget = *budget;
            let expected = gather(&store, a.conversation_id, a.message_id, budget).unwrap();
            let cached = cache
                .gather(&store, a.conversation_id, a.message_id, budget)
                .unwrap();
            assert_eq!(cached, expected, "turn {i}, budget {budget}");
        }
        if i % 3 != 0 {
            store
                .record_reply(a.message_id, &reply(&format!("reply {i}"), i, 1))
                .unwrap();
        }
    }
}

/// However many conversations it has seen, the cache holds at most its cap
/// of text, and what it dropped is read from the store again.
#[test]
fn the_turn_cache_holds_at_most_its_cap_of_text() {
    use convagent::core::context::{CACHED_TEXT_BYTES, TurnCache, gather};
    let store = SqliteStore::open_in_memory().unwrap();
    let cache = TurnCache::default();
    let text = "x".repeat(64 << 10);
    let budget = 32_768;
    let mut answered = Vec::new();
    for i in 0..(CACHED_TEXT_BYTES / text.len() + 40) {
        let key = ConversationKey::new(Channel::Telegram, format!("big{i}"), "");
        let a = store
            .accept(&message(&key, &format!("x{i}"), &text, 1))
            .unwrap();
        assert_eq!(
            cache
                .gather(&store, a.conversation_id, a.message_id, budget)
                .unwrap()
                .len(),
            1
        );
        answered.push(a);
    }
    assert!(
        cache.bytes() <= CACHED_TEXT_BYTES && cache.bytes() > CACHED_TEXT_BYTES / 2,
        "{} bytes cached",
        cache.bytes()
    );
    for a in [answered[0], *answered.last().unwrap()] {
        assert_eq!(
            cache
                .gather(&store, a.conversation_id, a.message_id, budget)
                .unwrap(),
            gather(&store, a.conversation_id, a.message_id, budget).unwrap()
        );
    }
}

/// A turn read once is not read again (the cache answers for it), but a
/// cached conversation that lost a message is read afresh: a deleted
/// message never reaches the model from the cache.
#[test]
fn the_turn_cache_reads_only_what_is_new_and_forgets_what_was_deleted() {
    use convagent::core::context::TurnCache;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convagent.db");
    let store = SqliteStore::open(&path).unwrap();
    let cache = TurnCache::default();
    let key = alice();
    let first = store
        .accept(&message(&key, "d1", "my card number is private", 1))
        .unwrap();
    let second = store.accept(&message(&key, "d2", "hello", 2)).unwrap();
    let texts = |up_to: i64| -> Vec<String> {
        cache
            .gather(&store, first.conversation_id, up_to, 4096)
            .unwrap()
            .into_iter()
            .map(|t| t.text)
            .collect()
    };
    assert_eq!(
        texts(second.message_id),
        ["my card number is private", "hello"]
    );
    let other = rusqlite::Connection::open(&path).unwrap();
    // Changed behind the cache's back without a message more or less: the
    // cache does not read it again.
    other
        .execute(
            "UPDATE messages SET text = 'changed' WHERE id = ?1",
            [first.message_id],
        )
        .unwrap();
    let third = store.accept(&message(&key, "d3", "again", 3)).unwrap();
    assert_eq!(
        texts(third.message_id),
        ["my card number is private", "hello", "again"],
        "the turns already read came from the cache"
    );
    // Deleted, as a deletion does: the message and the conversation's count.
    other
        .execute("DELETE FROM messages WHERE id = ?1", [first.message_id])
        .unwrap();
    other
        .execute(
            "UPDATE conversations SET message_count = message_count - 1 WHERE id = ?1",
            [first.conversation_id],
        )
        .unwrap();
    let fourth = store
        .accept(&message(&key, "d4", "still there?", 4))
        .unwrap();
    assert_eq!(
        texts(fourth.message_id),
        ["hello", "again", "still there?"],
        "read afresh after the deletion"
    );
}

#[tokio::test]
async fn writes_through_the_writer_are_checkpointed_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convagent.db");
    let store = SqliteStore::open(&path).unwrap();
    let size = || std::fs::metadata(&path).unwrap().len();
    let before = size();
    let key = ConversationKey::new(Channel::Telegram, "ckpt", "");
    // Far below SQLite's own automatic checkpoint (1,000 pages): only the
    // background checkpointer copies these into the database file.
    for i in 0..50 {
        let written = store
            .write(Write::Accept(message(&key, &format!("c{i}"), "hello", i)))
            .await
            .unwrap();
        assert!(!written.accepted().unwrap().duplicate);
    }
    assert!(
        crate::support::eventually(5, || size() > before).await,
        "the WAL was never copied back ({before} bytes)"
    );
    // And everything written is there for a fresh reader.
    drop(store);
    let again = SqliteStore::open(&path).unwrap();
    let id = again.open_conversation(&key).unwrap().unwrap();
    assert_eq!(again.pending(id, 100).unwrap().len(), 50);
}

/// Under writes that never pause, with readers at work, the WAL must still
/// be copied back to its end now and then and start over from its beginning;
/// otherwise it grows by every page ever written (gigabytes a minute under
/// load). Each start-over increments the checkpoint sequence number in the
/// WAL's header (bytes 12..16, big-endian).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_steady_writes_and_reads_the_wal_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("convagent.db");
    let store = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
    let key = ConversationKey::new(Channel::Telegram, "steady", "");
    let first = store.accept(&message(&key, "w0", "hello", 0)).unwrap();
    let wal = dir.path().join("convagent.db-wal");
    let starts = || {
        let header = std::fs::read(&wal).unwrap_or_default();
        header
            .get(12..16)
            .map_or(0, |b| u32::from_be_bytes(b.try_into().unwrap()))
    };
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.pending(first.conversation_id, 5).unwrap();
            }
        })
    };
    // Sixteen senders at once: the writer always has the next batch waiting.
    let senders: Vec<_> = (0..16)
        .map(|s| {
            let (store, stop, key) = (store.clone(), stop.clone(), key.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let text = format!("message number {i} of a steady stream");
                    let write = Write::Accept(message(&key, &format!("w{s}-{i}"), &text, i));
                    store.write(write).await.unwrap();
                    i += 1;
                }
                i
            })
        })
        .collect();
    let before = starts();
    let started_over = crate::support::eventually(10, || starts() >= before + 3).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut written = 0;
    for sender in senders {
        written += sender.await.unwrap();
    }
    reader.join().unwrap();
    assert!(
        started_over,
        "the WAL started over {} times in 10 s of steady writes ({written} messages)",
        starts() - before
    );
}

#[test]
fn the_monitors_search_finds_conversations_past_many_newer_matches() {
    use convagent::core::MonitorStore;
    let store = SqliteStore::open_in_memory().unwrap();
    let old = ConversationKey::new(Channel::Telegram, "old", "");
    let busy = ConversationKey::new(Channel::Slack, "busy", "");
    store
        .accept(&message(&old, "o1", "the parcel arrived", 1))
        .unwrap();
    // More newer matches in one conversation than one step of the walk reads.
    for i in 0..1_200 {
        store
            .accept(&message(
                &busy,
                &format!("b{i}"),
                "where is my parcel",
                10 + i,
            ))
            .unwrap();
    }
    store
        .accept(&message(&busy, "quiet", "nothing to see", 5_000))
        .unwrap();
    let found = |filter: &ConversationFilter| -> Vec<String> {
        store
            .overview(filter, Some("parcel"))
            .unwrap()
            .into_iter()
            .map(|o| o.summary.sender)
            .collect()
    };
    let all = ConversationFilter {
        limit: 10,
        ..ConversationFilter::default()
    };
    assert_eq!(found(&all), ["busy", "old"]);
    let one = ConversationFilter {
        limit: 1,
        ..all.clone()
    };
    assert_eq!(found(&one), ["busy"], "the newest matches first");
    let telegram = ConversationFilter {
        channel: Some(Channel::Telegram),
        ..all
    };
    assert_eq!(found(&telegram), ["old"]);
    assert!(store.overview(&one, Some("absent")).unwrap().is_empty());
}

/// See the SQLite adapter's module documentation: a bare `LIMIT ?N` makes
/// SQLite compile the statement again at every run.
#[test]
fn no_statement_of_the_sqlite_adapter_binds_a_bare_limit() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/adapters/store/sqlite");
    let mut bare = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let squeezed: String = line.split_whitespace().collect::<Vec<_>>().join(" ");
            if squeezed.contains("LIMIT ?") && !squeezed.starts_with("//") {
                bare.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(bare.is_empty(), "write LIMIT +?N:\n{}", bare.join("\n"));
}

/// Two processes writing one SQLite file (`serve` accepting while
/// `convagent mcp` takes messages for an outside agent): every write of
/// both succeeds, none is refused because the other committed first.
#[test]
fn two_writers_on_one_sqlite_file_both_succeed() {
    use convagent::core::ports::Take;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let serve = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
    let relay = std::sync::Arc::new(SqliteStore::open(&path).unwrap());
    let accepting = {
        let serve = serve.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                let key = ConversationKey::new(Channel::Telegram, format!("{}", i % 7), "");
                serve
                    .accept(&message(&key, &format!("busy-{i}"), "hello", 1_000 + i))
                    .expect("an accept beside another writer");
            }
        })
    };
    let mut taken = 0;
    let mut rounds = 0;
    while taken < 200 {
        rounds += 1;
        assert!(rounds < 1_000_000, "took {taken} of 200");
        let take = Take {
            consumer: "relay".into(),
            channel: None,
            conversation_id: None,
            until: i64::MAX,
            now: 2_000,
        };
        match relay.write_now(Write::Take(take)) {
            Ok(written) => taken += usize::from(written.taken().unwrap().is_some()),
            Err(e) => panic!("a take beside another writer: {e}"),
        }
    }
    accepting.join().unwrap();
}
