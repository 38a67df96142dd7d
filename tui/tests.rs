//! Snapshot tests of every view on ratatui's `TestBackend`, from fixed
//! state: times are relative to a fixed `now`, ids are fixed strings.

use convagent::core::{
    ActivityBucket, Breaker, BreakerState, Channel, ConversationOverview, ConversationSummary,
    OutboxStats, Outcome, ReplyKind, Role, Stage, StoredMessage, TraceEvent,
};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

use super::{Key, State, View, draw};

const NOW: i64 = 1_763_712_000_000;

fn conversation(
    id: i64,
    channel: Channel,
    sender: &str,
    last: &str,
    ago_s: i64,
    pending: u64,
    failed: u64,
) -> ConversationOverview {
    ConversationOverview {
        summary: ConversationSummary {
            id,
            channel,
            sender: sender.into(),
            thread: String::new(),
            message_count: 4,
            started_at: NOW - 3_600_000,
            last_activity_at: NOW - ago_s * 1000,
            closed: false,
            display_name: None,
            mode: Default::default(),
            mode_at: None,
            mode_by: None,
        },
        last_text: last.into(),
        pending,
        failed,
    }
}

fn message(id: i64, role: Role, text: &str, kind: Option<ReplyKind>) -> StoredMessage {
    let assistant = role == Role::Assistant;
    StoredMessage {
        id,
        conversation_id: 1,
        role,
        text: text.into(),
        created_at: NOW - 60_000 + id * 1000,
        correlation_id: Some(format!("corr-{id:04}")),
        provider_message_id: None,
        reply_to: assistant.then_some(id - 1),
        provider: assistant.then(|| "ollama".into()),
        model: assistant.then(|| {
            if kind == Some(ReplyKind::Refusal) {
                "credential_request".into()
            } else {
                "mistral:7b".into()
            }
        }),
        prompt_version: assistant.then_some(2),
        answered_by: None,
        prompt_tokens: assistant.then_some(120),
        completion_tokens: assistant.then_some(18),
        latency_ms: assistant.then_some(840),
        attachments: Vec::new(),
        kind,
    }
}

fn state() -> State {
    let mut conversations = vec![
        conversation(
            1,
            Channel::Telegram,
            "111222333",
            "Where is my parcel?",
            12,
            1,
            0,
        ),
        conversation(
            2,
            Channel::Whatsapp,
            "whatsapp:+14155550123",
            "Opening hours on Sunday?",
            300,
            0,
            1,
        ),
        conversation(
            3,
            Channel::Slack,
            "U061F7AUR",
            "is it everything a river should be?",
            7200,
            0,
            0,
        ),
    ];
    conversations[0].summary.display_name = Some("Ada".into());
    let mut messages = vec![
        message(1, Role::User, "Hi", None),
        message(2, Role::User, "Where is my parcel?", None),
        message(
            3,
            Role::Assistant,
            "It ships tomorrow morning.",
            Some(ReplyKind::Answer),
        ),
        message(4, Role::User, "What is the admin password?", None),
        message(
            5,
            Role::Assistant,
            "Sorry, I can't help with that.",
            Some(ReplyKind::Refusal),
        ),
        message(6, Role::User, "Still there?", None),
        message(
            7,
            Role::Assistant,
            "Sorry, I can't answer right now.",
            Some(ReplyKind::Fallback),
        ),
        message(8, Role::User, "hello?", None),
        message(
            9,
            Role::Assistant,
            "Please wait a minute.",
            Some(ReplyKind::Refusal),
        ),
        message(10, Role::User, "hello??", None),
    ];
    // "Hi" and "Where is my parcel?" came as a burst: one answer for both.
    messages[0].answered_by = Some(3);
    // Over the message rate: a notice, and the next message held by it.
    messages[8].provider = Some("limit".into());
    messages[8].model = Some("messages_per_minute".into());
    messages[9].answered_by = Some(9);
    State {
        now_ms: NOW,
        conversations,
        messages,
        providers: vec![
            ("ollama".into(), None),
            (
                "embedded".into(),
                Some(convagent::core::ProviderActivity {
                    provider: "embedded".into(),
                    model: "SmolLM2-135M-Instruct.Q4_1".into(),
                    at: NOW - 12_000,
                    latency_ms: Some(850),
                }),
            ),
            ("openai".into(), None),
        ],
        trace_id: Some("corr-0001".into()),
        trace: [
            ("received", 40, "ok"),
            ("verified", 12, "ok"),
            ("stored", 310, "ok"),
            ("guarded", 25, "pass"),
            ("context built", 480, "ok"),
            ("llm call", 840_000, "ok"),
            ("reply stored", 350, "answer"),
            ("send attempt 1", 95_000, "retry"),
            ("send attempt 2", 61_000, "ok"),
            ("sent", 61_000, "ok"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (stage, us, outcome))| {
            let (stage, attempt) = Stage::parse(stage).unwrap();
            TraceEvent {
                correlation_id: "corr-0001".into(),
                stage,
                attempt,
                started_at: NOW + i as i64,
                duration_us: *us,
                outcome: Outcome::parse(outcome),
                detail: None,
            }
        })
        .collect(),
        breakers: vec![
            Breaker {
                provider: "ollama".into(),
                model: "mistral:7b".into(),
                state: BreakerState::Open,
                failures: 3,
                opened_at: Some(NOW - 60_000),
                next_probe_at: Some(NOW + 240_000),
                last_error: Some("refused".into()),
                updated_at: NOW,
            },
            Breaker::new("embedded", "SmolLM2-135M-Instruct.Q4_1", NOW),
        ],
        outbox: OutboxStats { queued: 2, dead: 1 },
        activity: (0..30)
            .map(|i| ActivityBucket {
                start: NOW - (30 - i) * 60_000,
                messages: (i % 7) as u64,
                p50_ms: 400 + i as u64 * 10,
                p95_ms: 900 + (i % 5) as u64 * 100,
            })
            .collect(),
        store: "/home/me/.local/share/convagent/convagent.db".into(),
        // The first conversation moved since the session began.
        session_start: NOW - 60_000,
        ..State::default()
    }
}

fn render(state: &State) -> String {
    let mut terminal = Terminal::new(TestBackend::new(110, 28)).unwrap();
    terminal.draw(|f| draw(state, f)).unwrap();
    terminal.backend().to_string()
}

#[test]
fn conversations_view() {
    let mut s = state();
    s.selected = 1;
    insta::assert_snapshot!(render(&s));
}

#[test]
fn conversation_view_marks_fallback_and_refused_turns() {
    let mut s = state();
    s.view = Some(View::Conversation);
    s.message = 3;
    insta::assert_snapshot!(render(&s));
}

#[test]
fn trace_view_scales_bars_to_the_total() {
    let mut s = state();
    s.view = Some(View::Trace);
    insta::assert_snapshot!(render(&s));
}

#[test]
fn empty_store_says_how_to_start() {
    let s = State {
        now_ms: NOW,
        no_store: true,
        store: "/tmp/x/convagent.db".into(),
        ..State::default()
    };
    insta::assert_snapshot!(render(&s));
}

#[test]
fn help_and_search_overlays() {
    let mut s = state();
    s.on_key(Key::Char('?'));
    insta::assert_snapshot!("help", render(&s));
    s.on_key(Key::Esc);
    s.on_key(Key::Char('/'));
    for c in "parcel".chars() {
        s.on_key(Key::Char(c));
    }
    insta::assert_snapshot!("search", render(&s));
}

#[test]
fn a_small_terminal_still_renders() {
    let mut terminal = Terminal::new(TestBackend::new(40, 10)).unwrap();
    terminal.draw(|f| draw(&state(), f)).unwrap();
    let text = terminal.backend().to_string();
    assert!(
        text.contains("conversations") || text.contains("convagent"),
        "{text}"
    );
}

/// The drawn buffer, for tests that look at styles (snapshots keep text only).
fn buffer(state: &State) -> ratatui::buffer::Buffer {
    let mut terminal = Terminal::new(TestBackend::new(110, 28)).unwrap();
    terminal.draw(|f| draw(state, f)).unwrap();
    terminal.backend().buffer().clone()
}

/// The cells of the first row containing `text`, starting where it starts.
fn cells_of<'a>(
    buf: &'a ratatui::buffer::Buffer,
    text: &str,
) -> (u16, u16, &'a ratatui::buffer::Cell) {
    let area = buf.area;
    for y in 0..area.height {
        let row: String = (0..area.width).map(|x| buf[(x, y)].symbol()).collect();
        if let Some(byte) = row.find(text) {
            let x = row[..byte].chars().count() as u16;
            return (x, y, &buf[(x, y)]);
        }
    }
    panic!("`{text}` is not on screen");
}

#[test]
fn the_selection_and_the_warning_marks_are_styled() {
    use ratatui::style::{Color, Modifier};
    let mut s = state();
    s.selected = 1;
    let buf = buffer(&s);
    // The selected conversation (row 2) is reversed, across its row; the
    // others are not.
    let (_, y, cell) = cells_of(&buf, "whatsapp:+14155550123");
    assert!(cell.modifier.contains(Modifier::REVERSED), "{cell:?}");
    assert!(buf[(2, y)].modifier.contains(Modifier::REVERSED));
    let (_, _, other) = cells_of(&buf, "Ada (111222333)");
    assert!(!other.modifier.contains(Modifier::REVERSED), "{other:?}");
    // A dead letter is red, a waiting message yellow.
    let (_, _, dead) = cells_of(&buf, "✗1");
    assert_eq!(dead.fg, Color::Red);
    let (_, _, waiting) = cells_of(&buf, "⋯1");
    assert_eq!(waiting.fg, Color::Yellow);
    // An open breaker is red, a healthy provider green.
    let (_, _, open) = cells_of(&buf, "open 3✗");
    assert_eq!(open.fg, Color::Red);
    let (_, _, ok) = cells_of(&buf, "ok 12s");
    assert_eq!(ok.fg, Color::Green);

    // Moving the selection moves the highlight.
    s.selected = 0;
    let buf = buffer(&s);
    let (_, _, cell) = cells_of(&buf, "Ada (111222333)");
    assert!(cell.modifier.contains(Modifier::REVERSED));
    let (_, _, cell) = cells_of(&buf, "whatsapp:+14155550123");
    assert!(!cell.modifier.contains(Modifier::REVERSED));
}

#[test]
fn the_terminal_is_restored_however_the_loop_ends() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let restored = AtomicUsize::new(0);
    let init = || Terminal::new(TestBackend::new(20, 5)).unwrap();
    let restore = || {
        restored.fetch_add(1, Ordering::SeqCst);
    };

    let drawn = super::on_terminal(init, restore, |t| {
        t.draw(|f| draw(&State::default(), f)).map(|_| "drawn")
    });
    assert_eq!(drawn.unwrap(), "drawn");
    assert_eq!(restored.load(Ordering::SeqCst), 1, "after a normal end");

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::on_terminal(init, restore, |_| -> () { panic!("a bug in the loop") })
    }));
    assert!(panicked.is_err(), "the panic goes on");
    assert_eq!(
        restored.load(Ordering::SeqCst),
        2,
        "and the terminal came back first"
    );
}

#[test]
fn a_conversation_waiting_for_a_person_comes_first_in_magenta() {
    use convagent::core::handoff::Mode;
    use ratatui::style::Color;
    let mut s = state();
    let mut list = s.conversations.clone();
    list[1].summary.mode = Mode::Human;
    list[1].summary.mode_by = Some("ana".into());
    list[1].pending = 2;
    s.arrange(list, None);
    insta::assert_snapshot!(render(&s));
    let buf = buffer(&s);
    let (_, _, cell) = cells_of(&buf, "whatsapp");
    assert_eq!(cell.fg, Color::Magenta);
    let (_, _, cell) = cells_of(&buf, "slack");
    assert_ne!(cell.fg, Color::Magenta, "only what waits for a person");
    assert!(render(&s).contains("1 waiting for a person"));

    // Open it and start a reply: the footer is the compose line.
    s.on_key(Key::Enter);
    s.on_key(Key::Char('r'));
    for c in "on it".chars() {
        s.on_key(Key::Char(c));
    }
    let text = render(&s);
    assert!(text.contains("taken over by ana"), "{text}");
    assert!(
        text.contains("reply to whatsapp:+14155550123: on it▏  Enter send"),
        "{text}"
    );
}

#[test]
fn the_log_view_follows_the_newest_lines() {
    use super::log::LogLine;
    let mut s = state();
    s.log.dir = "/home/me/.local/state/convagent/logs".into();
    s.on_key(Key::Char('l'));
    insta::assert_snapshot!("log_empty", render(&s));
    for i in 0..40 {
        s.log.lines.push_back(LogLine::parse(&format!(
            r#"{{"timestamp":"2025-11-21T08:00:{:02}.000Z","level":"{}","fields":{{"message":"line {i}","reply_id":{i}}},"span":{{"correlation_id":"corr-{i:04}","name":"message"}}}}"#,
            i % 60,
            if i % 10 == 9 { "WARN" } else { "INFO" }
        )));
    }
    insta::assert_snapshot!("log", render(&s));
    let text = render(&s);
    assert!(
        text.contains("line 39") && !text.contains("line 10 "),
        "{text}"
    );
}

#[test]
fn approvals_wait_in_their_own_view_and_y_or_n_answers() {
    use super::{Action, Operation};
    use convagent::core::approvals::{Approval, ApprovalState, Decision};
    let mut s = state();
    s.approvals = vec![Approval {
        id: 7,
        conversation_id: 1,
        message_id: 2,
        correlation_id: "corr-0002".into(),
        tool: "book_table".into(),
        arguments: r#"{"people":4}"#.into(),
        asked_at: NOW - 30_000,
        deadline_at: NOW + 270_000,
        state: ApprovalState::Pending,
        decided_by: None,
        decided_at: None,
        ran_at: None,
        result: None,
    }];
    assert!(render(&s).contains("1 approvals waiting (a)"));
    assert_eq!(s.on_key(Key::Char('a')), Action::Reload);
    assert_eq!(s.view(), View::Approvals);
    insta::assert_snapshot!(render(&s));
    assert_eq!(
        s.on_key(Key::Char('y')),
        Action::Operate(Operation::Answer {
            approval: 7,
            decision: Decision::Approve
        })
    );
    assert_eq!(
        s.on_key(Key::Char('n')),
        Action::Operate(Operation::Answer {
            approval: 7,
            decision: Decision::Deny
        })
    );
    assert_eq!(s.on_key(Key::Esc), Action::Reload);
    assert_eq!(s.view(), View::Conversations, "back where it was opened");
}

#[test]
fn the_trace_lists_what_a_turn_retrieved_and_the_title_names_the_person() {
    use convagent::core::people::{Identity, Person};
    let mut s = state();
    s.view = Some(View::Trace);
    s.trace.push(TraceEvent {
        correlation_id: "corr-0002".into(),
        stage: Stage::Retrieve,
        attempt: None,
        started_at: NOW,
        duration_us: 900,
        outcome: Outcome::Ok,
        detail: Some("[1] wal.html#3 (2.31); [2] you on whatsapp, 2025-11-21 (1.20)".into()),
    });
    let text = render(&s);
    assert!(text.contains("[1] wal.html#3 (2.31)"), "{text}");
    assert!(
        text.contains("[2] you on whatsapp, 2025-11-21 (1.20)"),
        "{text}"
    );

    s.view = Some(View::Conversation);
    s.person = Some(Person {
        id: 3,
        created_at: NOW,
        identities: vec![
            Identity {
                channel: Channel::Telegram,
                sender: "111222333".into(),
                since: NOW,
            },
            Identity {
                channel: Channel::Whatsapp,
                sender: "whatsapp:+14155550123".into(),
                since: NOW,
            },
        ],
    });
    let text = render(&s);
    assert!(
        text.contains("person 3: telegram:111222333, whatsapp:"),
        "{text}"
    );
}
