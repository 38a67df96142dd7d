//! Rendering: `draw(&State, &mut Frame)` only reads the state.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap,
};

use convagent::core::limits::NOTICE_PROVIDER;
use convagent::core::{BreakerState, Outcome, ReplyKind, Role, Stage, StoredMessage};

use super::log::Level;
use super::state::{LogScope, State, View, waits_for_person};
use crate::output::{age, preview, utc};
use convagent::core::handoff::Mode;

const DIM: Style = Style::new().fg(Color::DarkGray);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
/// A conversation waiting for a person.
const WAITING: Style = Style::new().fg(Color::Magenta).add_modifier(Modifier::BOLD);

pub fn draw(state: &State, frame: &mut Frame) {
    let [health, main, footer] = Layout::vertical([
        // Three lines: the providers (wrapping onto a second) and the outbox.
        Constraint::Length(5),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_health(state, frame, health);
    match state.view() {
        View::Conversations => draw_conversations(state, frame, main),
        View::Conversation => draw_conversation(state, frame, main),
        View::Trace => draw_trace(state, frame, main),
        View::Log => draw_log(state, frame, main),
        View::Approvals => draw_approvals(state, frame, main),
    }
    draw_footer(state, frame, footer);
    if state.help {
        draw_help(frame);
    }
}

fn draw_health(state: &State, frame: &mut Frame, area: Rect) {
    let [left, messages, latency] = Layout::horizontal([
        Constraint::Percentage(50),
        Constraint::Percentage(25),
        Constraint::Percentage(25),
    ])
    .areas(area);
    let mut lines = Vec::new();
    let mut breakers: Vec<Span> = vec![Span::raw("LLM ")];
    // Every configured provider from the start, then any other provider the
    // store has a breaker for (a chain changed since).
    let mut names: Vec<&str> = state.providers.iter().map(|(p, _)| p.as_str()).collect();
    for b in &state.breakers {
        if !names.contains(&b.provider.as_str()) {
            names.push(&b.provider);
        }
    }
    if names.is_empty() {
        breakers.push(Span::styled("no provider configured", DIM));
    }
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            breakers.push(Span::styled(" · ", DIM));
        }
        breakers.push(Span::raw(format!("{name} ")));
        let breaker = state.breakers.iter().find(|b| b.provider == *name);
        let last = state
            .providers
            .iter()
            .find(|(p, _)| p == name)
            .and_then(|(_, a)| a.as_ref());
        let (mark, color) = match breaker.map(|b| b.state) {
            Some(BreakerState::HalfOpen) => ("half-open", Color::Yellow),
            Some(BreakerState::Open) => ("open", Color::Red),
            _ if breaker.is_some_and(|b| b.failures > 0) => ("failing", Color::Yellow),
            _ => ("ok", Color::Green),
        };
        match last {
            Some(a) => {
                breakers.push(Span::styled(mark, Style::new().fg(color)));
                let latency = a
                    .latency_ms
                    .map(|ms| format!(" {ms} ms"))
                    .unwrap_or_default();
                breakers.push(Span::raw(format!(" {}{latency}", age(a.at, state.now_ms))));
            }
            None if breaker.is_some() => {
                breakers.push(Span::styled(mark, Style::new().fg(color)));
            }
            None => breakers.push(Span::styled("no calls yet", DIM)),
        }
        let Some(b) = breaker else { continue };
        if b.failures > 0 {
            breakers.push(Span::raw(format!(" {}✗", b.failures)));
        }
        if b.state != BreakerState::Closed
            && let Some(at) = b.next_probe_at
        {
            breakers.push(Span::raw(format!(
                " probe {}s",
                ((at - state.now_ms).max(0) + 999) / 1000
            )));
        }
    }
    lines.push(Line::from(breakers));
    let dead_style = if state.outbox.dead > 0 {
        Style::new().fg(Color::Red)
    } else {
        Style::new()
    };
    lines.push(Line::from(vec![
        Span::raw(format!("outbox {} queued · ", state.outbox.queued)),
        Span::styled(format!("{} dead", state.outbox.dead), dead_style),
    ]));
    let block = Block::new()
        .borders(Borders::ALL)
        .title(" convagent · health ");
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(ratatui::widgets::Wrap { trim: true })
            .block(block),
        left,
    );

    let per_minute: Vec<u64> = state.activity.iter().map(|b| b.messages).collect();
    let now = state.activity.last().map_or(0, |b| b.messages);
    frame.render_widget(
        Sparkline::default()
            .block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(format!(" msgs/min {now} ")),
            )
            .data(&per_minute),
        messages,
    );
    let p95: Vec<u64> = state.activity.iter().map(|b| b.p95_ms).collect();
    let last = state.activity.iter().rev().find(|b| b.p50_ms > 0);
    let title = match last {
        Some(b) => format!(" p50 {} ms · p95 {} ms ", b.p50_ms, b.p95_ms),
        None => " latency ".to_string(),
    };
    frame.render_widget(
        Sparkline::default()
            .block(Block::new().borders(Borders::ALL).title(title))
            .data(&p95),
        latency,
    );
}

fn draw_conversations(state: &State, frame: &mut Frame, area: Rect) {
    let mut title = String::from(" conversations ");
    if let Some(c) = state.channel {
        title.push_str(&format!("· {c} "));
    }
    if let Some(q) = &state.search {
        title.push_str(&format!("· “{q}” "));
    }
    let waiting = state.waiting();
    let mut block = Block::new().borders(Borders::ALL).title(title);
    if waiting > 0 {
        block = block.title(Span::styled(
            format!(" {waiting} waiting for a person "),
            WAITING,
        ));
    }
    if !state.approvals.is_empty() {
        block = block.title(Span::styled(
            format!(" {} approvals waiting (a) ", state.approvals.len()),
            WAITING,
        ));
    }
    if state.conversations.is_empty() {
        let text = if state.no_store || (state.search.is_none() && state.channel.is_none()) {
            vec![
                Line::from("No conversations yet."),
                Line::from(""),
                Line::from(
                    "Start one with `convagent chat`, or run `convagent serve` and message your bot.",
                ),
                Line::from(Span::styled(format!("store: {}", state.store), DIM)),
            ]
        } else {
            vec![Line::from("Nothing matches. Esc clears the filter.")]
        };
        frame.render_widget(
            Paragraph::new(text).block(block).wrap(Wrap { trim: false }),
            area,
        );
        return;
    }
    let rows = state.conversations.iter().map(|c| {
        let s = &c.summary;
        let mut marks = String::new();
        if state.unread(c) {
            marks.push_str("● ");
        }
        if c.pending > 0 {
            marks.push_str(&format!("⋯{} ", c.pending));
        }
        if c.failed > 0 {
            marks.push_str(&format!("✗{} ", c.failed));
        }
        if s.mode == Mode::Human {
            marks.push_str(&format!("⚑{}", s.mode_by.as_deref().unwrap_or("human")));
        }
        let sender = if s.thread.is_empty() || s.thread == s.sender {
            s.who()
        } else {
            format!("{} #{}", s.who(), s.thread)
        };
        let row_style = if waits_for_person(c) {
            WAITING
        } else {
            Style::new()
        };
        Row::new(vec![
            Cell::from(s.channel.as_str()),
            Cell::from(preview(&sender, 28)),
            Cell::from(preview(&c.last_text, 200)),
            Cell::from(age(s.last_activity_at, state.now_ms)),
            Cell::from(marks).style(Style::new().fg(if c.failed > 0 {
                Color::Red
            } else if s.mode == Mode::Human {
                Color::Magenta
            } else {
                Color::Yellow
            })),
        ])
        .style(row_style)
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(9),
            Constraint::Length(28),
            Constraint::Min(10),
            Constraint::Length(8),
            Constraint::Length(18),
        ],
    )
    .header(Row::new(["CHANNEL", "SENDER", "LAST MESSAGE", "AGE", ""]).style(DIM))
    .row_highlight_style(SELECTED)
    .block(block);
    let mut table_state = TableState::default().with_selected(Some(state.selected));
    frame.render_stateful_widget(table, area, &mut table_state);
}

fn draw_conversation(state: &State, frame: &mut Frame, area: Rect) {
    let title = match state.current() {
        Some(c) => format!(
            " {} · {} · {} messages · {}{} ",
            c.summary.channel,
            c.summary.who(),
            c.summary.message_count,
            match c.summary.mode {
                Mode::Agent => "the agent answers".to_string(),
                Mode::Human => format!(
                    "taken over by {}",
                    c.summary.mode_by.as_deref().unwrap_or("a person")
                ),
            },
            state
                .person
                .as_ref()
                .map(|p| format!(" · person {}: {}", p.id, p.describe()))
                .unwrap_or_default()
        ),
        None => " conversation ".into(),
    };
    let mut lines: Vec<Line> = Vec::new();
    let mut selected_line = 0;
    for (i, m) in state.messages.iter().enumerate() {
        if i == state.message {
            selected_line = lines.len();
        }
        let time = utc(m.created_at);
        let mut head = vec![Span::styled(format!("{} ", &time[11..]), DIM)];
        match m.role {
            Role::User => {
                head.push(Span::styled("user", Style::new().fg(Color::Cyan)));
                if let Some(by) = m.answered_by {
                    let notice = state.messages.iter().any(|r| r.id == by && is_notice(r));
                    head.push(Span::styled(
                        if notice {
                            " [held back by a limit]"
                        } else {
                            " [answered with the next]"
                        },
                        DIM,
                    ));
                }
            }
            _ => {
                head.push(Span::styled("agent", Style::new().fg(Color::Green)));
                let mut info = Vec::new();
                match m.kind {
                    Some(ReplyKind::Fallback) => info.push("FALLBACK".to_string()),
                    Some(ReplyKind::Refusal) => info.push(format!(
                        "{} {}",
                        if is_notice(m) {
                            "LIMIT"
                        } else if m.provider.as_deref()
                            == Some(convagent::core::media::NOTICE_PROVIDER)
                        {
                            "MEDIA"
                        } else {
                            "REFUSED"
                        },
                        m.model.as_deref().unwrap_or("")
                    )),
                    _ if m.provider.as_deref() == Some(crate::reply::PROVIDER) => {
                        info.push(format!("by {}", m.model.as_deref().unwrap_or("a person")));
                    }
                    _ => {
                        if let (Some(p), Some(model)) = (&m.provider, &m.model) {
                            info.push(format!("{p}/{model}"));
                        }
                    }
                }
                if let Some(t) = m.completion_tokens {
                    info.push(format!("{}+{t} tok", m.prompt_tokens.unwrap_or(0)));
                }
                if let Some(l) = m.latency_ms {
                    info.push(format!("{l} ms"));
                }
                if let Some(v) = m.prompt_version {
                    info.push(format!("prompt v{v}"));
                }
                let covered = state
                    .messages
                    .iter()
                    .filter(|u| u.answered_by == Some(m.id))
                    .count();
                if covered > 0 {
                    info.push(format!("answers {} messages", covered + 1));
                }
                head.push(Span::styled(format!(" [{}]", info.join(" · ")), DIM));
            }
        }
        let style = if i == state.message {
            SELECTED
        } else {
            Style::new()
        };
        lines.push(Line::from(head).style(style));
        let said = convagent::core::media::for_people(&m.text, &m.attachments);
        for text in said.lines().take(6) {
            lines.push(Line::from(format!("  {text}")).style(style));
        }
    }
    let height = area.height.saturating_sub(2) as usize;
    let scroll = selected_line.saturating_sub(height / 2) as u16;
    frame.render_widget(
        Paragraph::new(lines)
            .block(Block::new().borders(Borders::ALL).title(title))
            .scroll((scroll, 0)),
        area,
    );
}

fn draw_trace(state: &State, frame: &mut Frame, area: Rect) {
    let id = state.trace_id.as_deref().unwrap_or("?");
    let block = Block::new()
        .borders(Borders::ALL)
        .title(format!(" trace {id} "));
    if state.trace.is_empty() {
        let text = "No stages recorded for this message (`serve` and `chat` write traces).";
        frame.render_widget(
            Paragraph::new(text).block(block).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let total: u64 = state
        .trace
        .iter()
        .map(|t| t.duration_us)
        .sum::<u64>()
        .max(1);
    let bar_width = area.width.saturating_sub(48).max(10) as u64;
    let mut lines: Vec<Line> = Vec::new();
    for t in &state.trace {
        lines.push({
            let cells = (t.duration_us * bar_width).div_ceil(total).max(1);
            let color = match t.outcome {
                Outcome::Ok | Outcome::Pass | Outcome::Answer => Color::Green,
                Outcome::Retry | Outcome::Fallback | Outcome::Ignored => Color::Yellow,
                Outcome::Failed | Outcome::Dead => Color::Red,
                _ => Color::Blue,
            };
            Line::from(vec![
                Span::raw(format!("{:<16}", preview(&t.label(), 16))),
                Span::styled("█".repeat(cells as usize), Style::new().fg(color)),
                Span::raw(format!(" {} ", duration(t.duration_us))),
                Span::styled(
                    format!(
                        "{} {}",
                        t.outcome,
                        t.detail
                            .as_deref()
                            .map(|d| preview(d, 40))
                            .unwrap_or_default()
                    ),
                    DIM,
                ),
            ])
        });
        // What a turn retrieved: each source on a line of its own.
        if t.stage == Stage::Retrieve
            && let Some(detail) = &t.detail
            && detail.starts_with('[')
        {
            for source in detail.split("; ") {
                lines.push(Line::from(Span::styled(format!("{:16}{source}", ""), DIM)));
            }
        }
    }
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_approvals(state: &State, frame: &mut Frame, area: Rect) {
    let block = Block::new()
        .borders(Borders::ALL)
        .title(format!(" approvals · {} waiting ", state.approvals.len()));
    if state.approvals.is_empty() {
        let text = "No tool call waits for an approval. Calls of `[[mcp.servers]]` marked \
                    `approve` wait here for y or n.";
        frame.render_widget(
            Paragraph::new(text).block(block).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let rows = state.approvals.iter().map(|a| {
        let left = (a.deadline_at - state.now_ms).max(0);
        Row::new(vec![
            Cell::from(a.id.to_string()),
            Cell::from(a.conversation_id.to_string()),
            Cell::from(age(a.asked_at, state.now_ms)),
            Cell::from(format!("{}s left", (left + 999) / 1000)),
            Cell::from(preview(&format!("{} {}", a.tool, a.arguments), 200)),
        ])
        .style(WAITING)
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(6),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Min(10),
        ],
    )
    .header(Row::new(["ID", "CONV", "ASKED", "DEADLINE", "CALL"]).style(DIM))
    .row_highlight_style(SELECTED)
    .block(block);
    let mut table_state = TableState::default().with_selected(Some(state.approval));
    frame.render_stateful_widget(table, area, &mut table_state);
}

fn draw_log(state: &State, frame: &mut Frame, area: Rect) {
    let log = &state.log;
    let scope = match (&log.scope, log.scoped) {
        (LogScope::All, _) | (_, false) => "everything".to_string(),
        (LogScope::Conversation(id), true) => format!("conversation {id}"),
        (LogScope::Trace(id), true) => format!("trace {id}"),
    };
    let title = format!(
        " log · {}+ · {scope}{} ",
        log.level.as_str(),
        if log.back > 0 {
            format!(" · {} lines back", log.back)
        } else {
            " · following".into()
        }
    );
    let block = Block::new().borders(Borders::ALL).title(title);
    let shown = log.shown();
    if shown.is_empty() {
        let text = if log.lines.is_empty() {
            format!(
                "No log lines yet in {} (`serve` writes its JSON log there).",
                log.dir
            )
        } else {
            "No line matches: v changes the level, f the scope.".to_string()
        };
        frame.render_widget(
            Paragraph::new(text).block(block).wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let height = area.height.saturating_sub(2) as usize;
    let end = shown.len().saturating_sub(log.back);
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = shown[start..end]
        .iter()
        .map(|l| {
            let color = match l.level {
                Level::Error => Color::Red,
                Level::Warn => Color::Yellow,
                Level::Info => Color::Green,
                Level::Debug | Level::Trace => Color::Blue,
            };
            Line::from(vec![
                Span::styled(format!("{} ", l.time), DIM),
                Span::styled(format!("{:<5} ", l.level.as_str()), Style::new().fg(color)),
                Span::raw(format!("{} ", l.message)),
                Span::styled(l.fields.clone(), DIM),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn duration(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn draw_footer(state: &State, frame: &mut Frame, area: Rect) {
    let text = if let Some(typed) = &state.typing {
        format!("search: {typed}▏  Enter apply · Esc cancel")
    } else if let Some(typed) = &state.compose {
        let to = state.current().map(|c| c.summary.who()).unwrap_or_default();
        format!("reply to {to}: {typed}▏  Enter send · Esc cancel")
    } else if let Some(notice) = &state.notice {
        notice.clone()
    } else {
        match state.view() {
            View::Conversations => {
                "↑↓ move · Enter open · h take over/release · r reply · / search · c channel · a approvals · l log · ? help · q quit"
            }
            View::Conversation => {
                "↑↓ message · Enter/t trace · h take over/release · r reply · l log · Esc back · ? help · q quit"
            }
            View::Trace => "y copy correlation id · l log · Esc back · ? help · q quit",
            View::Log if state.log.scope != LogScope::All => {
                "↑↓ PgUp/PgDn scroll · v level · f this conversation/everything · Esc back · q quit"
            }
            View::Log => "↑↓ PgUp/PgDn scroll · v level · Esc back · q quit",
            View::Approvals => "↑↓ move · y approve · n deny · Esc back · ? help · q quit",
        }
        .to_string()
    };
    frame.render_widget(Paragraph::new(text).style(DIM), area);
}

fn draw_help(frame: &mut Frame) {
    let area = frame.area();
    // Tall enough for every line below, borders included, when it fits.
    let height = 24.min(area.height);
    let popup = Rect {
        x: area.width / 6,
        y: (area.height - height) / 2,
        width: area.width * 2 / 3,
        height,
    };
    let text = vec![
        Line::from("convagent tui: a live view of the store, and an operator's desk"),
        Line::from(""),
        Line::from("Conversations  ↑↓ move · Enter open · / search"),
        Line::from("               c cycle channel · Esc clear"),
        Line::from("Conversation   ↑↓ message · Enter/t its trace · Esc back"),
        Line::from("Both           h take over (the agent goes silent) or release"),
        Line::from("               r reply as a person (takes it over too)"),
        Line::from("Trace          y copy the correlation id (printed at"),
        Line::from("               exit too, for grep in the JSON log)"),
        Line::from("Anywhere       l the daemon's log, live: v level, f keep to the"),
        Line::from("               conversation or trace it was opened from"),
        Line::from("               a tool calls waiting for approval: y yes, n no"),
        Line::from(""),
        Line::from("Marks: ● new since you looked, ⋯N waiting for an answer,"),
        Line::from("       ✗N replies dead-lettered, ⚑name taken over by name;"),
        Line::from("       waiting for a person: first, in magenta"),
        Line::from("The view follows the store within a second; it writes only"),
        Line::from("what you do (h, r), like `convagent takeover`/`reply`."),
        Line::from(""),
        Line::from(Span::styled("any key closes this", DIM)),
    ];
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text)
            .block(Block::new().borders(Borders::ALL).title(" help "))
            .wrap(Wrap { trim: false }),
        popup,
    );
}

/// A limit's notice (`core::limits`): a refusal the limits sent.
fn is_notice(m: &StoredMessage) -> bool {
    m.kind == Some(ReplyKind::Refusal) && m.provider.as_deref() == Some(NOTICE_PROVIDER)
}
