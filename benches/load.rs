//! The daemon under load, end to end: the release `convagent serve` on
//! loopback, fed by a load generator that is not the code under test (`wrk`
//! for 1 and 2, this program's own client for 3), with fakes of the LLM
//! (Ollama's `/api/chat`) and of Telegram's Bot API that answer at once.
//! Method and figures in benches/README.md.
//!
//!     cargo bench --bench load -- [--secs 8] [--conns 64] [--limit 0] [--only N]
//!
//! 1. `/health` req/s (the HTTP stack's ceiling) and signed Telegram acks/s
//!    from 1,000 chats with the pipeline behind (LLM down → fallback,
//!    dry-run sends), their ratio; ack p50/p99 at a fixed 5,000/s.
//! 2. Whole pipeline: messages from 1,000 chats answered (fake LLM) and
//!    sent (dry run) per second, first POST to last reply.
//! 3. Webhook → reply received by the fake Telegram: one message at a
//!    time (p50/p99), and 50 senders at once (replies/s).
//! 4. Acks and the whole pipeline on SQLite, on Postgres (a throwaway
//!    cluster with Postgres's own durability settings) with one daemon,
//!    and with two daemons sharing the database, in one run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Notify;

static MESSAGES_PER_MINUTE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

const SECRET: &str = "s3cret";
const TOKEN: &str = "1:bench";

#[path = "support/flags.rs"]
mod flags;
#[path = "../tests/support/ports.rs"]
mod ports;
use ports::ReservedPort;
#[path = "../tests/support/postgres.rs"]
#[allow(dead_code)]
mod pg;
use flags::flag;

fn main() {
    let secs: u64 = flag("--secs", 8);
    let conns: u64 = flag("--conns", 64);
    // `--only 2`: just that measurement.
    let only: u64 = flag("--only", 0);
    // `[limits] messages_per_minute` for the daemon: 0 (off) by default,
    // since every chat here sends far more than any limit allows; a huge
    // value keeps the check's reads without holding anything back.
    MESSAGES_PER_MINUTE.get_or_init(|| flag("--limit", 0));
    if Command::new("wrk").arg("--version").output().is_err() {
        eprintln!("load: needs wrk, the load generator (apt-get install wrk)");
        std::process::exit(2);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(secs, conns, only));
}

async fn run(secs: u64, conns: u64, only: u64) {
    let fakes = Fakes::start().await;

    if only == 0 || only == 1 {
        acks(secs, conns).await;
    }
    if only == 0 || only == 2 {
        pipeline(secs, conns, &fakes).await;
    }
    if only == 0 || only == 3 {
        round_trips(secs, &fakes).await;
    }
    if only == 0 || only == 4 {
        stores(secs, conns, &fakes).await;
    }
}

/// Measurement 4: the same acks and whole pipeline on SQLite, on Postgres
/// with one daemon, and with two daemons sharing one database (each fed by
/// its own wrk with half the connections, to the same 1,000 chats), in one
/// run. Postgres runs with its own durability settings.
async fn stores(secs: u64, conns: u64, fakes: &Fakes) {
    let cluster = pg::Cluster::start_durable();
    println!("4. stores, one run     acks/s (LLM down)      whole pipeline msgs/s");
    for (n, (label, postgres, count)) in [
        ("SQLite, 1 daemon", false, 1),
        ("Postgres, 1 daemon", true, 1),
        ("Postgres, 2 daemons", true, 2),
    ]
    .into_iter()
    .enumerate()
    {
        let start = |database: &str, env: &[(&str, &str)]| -> (Vec<Daemon>, Option<String>) {
            let url = postgres.then(|| cluster.database(&format!("{database}{n}")));
            let mut env = env.to_vec();
            if let Some(url) = &url {
                env.push(("CONVAGENT_DATABASE_URL", url));
            }
            ((0..count).map(|_| Daemon::start(&env)).collect(), url)
        };
        let (daemons, _) = start(
            "acks",
            &[
                ("CONVAGENT_DRY_RUN", "1"),
                ("OLLAMA_HOST", "http://127.0.0.1:9"),
            ],
        );
        let acks = wrk_each(&daemons, secs, conns);
        drop(daemons);
        let (daemons, url) = start(
            "pipeline",
            &[("CONVAGENT_DRY_RUN", "1"), ("OLLAMA_HOST", &fakes.ollama)],
        );
        let first_post = unix_ms();
        wrk_each(&daemons, secs, conns);
        let drained = match &url {
            Some(url) => wait_drained_pg(url, Duration::from_secs(300)),
            None => daemons[0].wait_drained(Duration::from_secs(300)),
        };
        let pipeline = drained.map_or("did not drain in 300 s".to_string(), |d| {
            format!(
                "{:>9.0} ({} messages)",
                d.answered as f64 / ((d.last_sent_at - first_post) as f64 / 1000.0),
                d.answered
            )
        });
        println!("   {label:<20} {acks:>9.0}              {pipeline}");
    }
}

/// One wrk per daemon, at the same time, `conns` shared among them;
/// their requests per second added up.
fn wrk_each(daemons: &[Daemon], secs: u64, conns: u64) -> f64 {
    let per = (conns / daemons.len() as u64).max(1);
    std::thread::scope(|scope| {
        let runs: Vec<_> = daemons
            .iter()
            .enumerate()
            .map(|(i, d)| {
                scope.spawn(move || {
                    wrk_numbered(
                        &d.url,
                        "/webhook/telegram",
                        secs,
                        per,
                        true,
                        i as u64 * 1_000_000_000_000,
                    )
                    .rps
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).sum()
    })
}

/// [`Daemon::wait_drained`] for daemons on Postgres.
fn wait_drained_pg(url: &str, limit: Duration) -> Option<Drained> {
    let store = convagent::adapters::store::PostgresStore::connect(url, 1).ok()?;
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let (pending, queued) = store
            .pool()
            .run(|c| {
                let r = c.query_one(
                    "SELECT (SELECT count(*) FROM messages WHERE role = 'user' AND answered_at IS NULL),
                            (SELECT count(*) FROM outbox WHERE state = 'queued')",
                    &[],
                )?;
                Ok((r.get::<_, i64>(0), r.get::<_, i64>(1)))
            })
            .ok()?;
        if pending == 0 && queued == 0 {
            return store
                .pool()
                .run(|c| {
                    let r = c.query_one(
                        "SELECT (SELECT count(*) FROM messages WHERE role = 'user'),
                                (SELECT count(*) FROM outbox WHERE state = 'sent'),
                                (SELECT max(updated_at) FROM outbox)",
                        &[],
                    )?;
                    Ok(Drained {
                        answered: r.get::<_, i64>(0) as u64,
                        replies: r.get::<_, i64>(1) as u64,
                        last_sent_at: r.get(2),
                    })
                })
                .ok();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

async fn acks(secs: u64, conns: u64) {
    // 1. Acks against the stack's ceiling; the LLM refuses connections.
    let llm_down = [
        ("CONVAGENT_DRY_RUN", "1"),
        ("OLLAMA_HOST", "http://127.0.0.1:9"),
    ];
    let daemon = Daemon::start(&llm_down);
    let health = wrk(&daemon.url, "/health", secs, conns, false);
    let acks = wrk(&daemon.url, "/webhook/telegram", secs, conns, true);
    let rss_loaded = daemon.rss_mb();
    drop(daemon);
    // At a fixed rate, on a fresh daemon (no backlog from the run above).
    let daemon = Daemon::start(&llm_down);
    let fixed = fixed_rate(&daemon.url, 5_000, Duration::from_secs(5)).await;
    println!(
        "1. /health            {:>9.0} req/s (the HTTP stack's ceiling)",
        health.rps
    );
    println!(
        "   acks, 1,000 chats   {:>9.0} /s   ratio {:.3}   at saturation p50 {} p99 {}   non-2xx {}",
        acks.rps,
        acks.rps / health.rps,
        acks.p50,
        acks.p99,
        acks.non2xx
    );
    println!(
        "   acks at {}/s       p50 {:.2} ms  p99 {:.2} ms  ({} sent, {} not 200)",
        fixed.rate, fixed.p50_ms, fixed.p99_ms, fixed.sent, fixed.failed
    );
    println!("   daemon RSS           {rss_loaded} MB after the load");
}

async fn pipeline(secs: u64, conns: u64, fakes: &Fakes) {
    // 2. The whole pipeline with an LLM that answers at once; dry-run sends.
    let daemon = Daemon::start(&[("CONVAGENT_DRY_RUN", "1"), ("OLLAMA_HOST", &fakes.ollama)]);
    let idle_rss = daemon.rss_mb();
    let first_post = unix_ms();
    let posted = wrk(&daemon.url, "/webhook/telegram", secs, conns, true);
    let drained = daemon.wait_drained(Duration::from_secs(300));
    match drained {
        Some(d) => println!(
            "2. whole pipeline     {:>9.0} msgs/s answered and sent ({} messages, {} replies, last reply {:.1} s after the first POST; wrk ran {secs} s)",
            d.answered as f64 / ((d.last_sent_at - first_post) as f64 / 1000.0),
            d.answered,
            d.replies,
            (d.last_sent_at - first_post) as f64 / 1000.0
        ),
        None => println!(
            "2. whole pipeline     did not drain within 300 s ({} posted)",
            posted.requests
        ),
    }
    println!(
        "   daemon RSS           {idle_rss} MB idle, {} MB after the load",
        daemon.rss_mb()
    );
}

async fn round_trips(secs: u64, fakes: &Fakes) {
    // 3. Webhook → reply received by the fake Telegram.
    let daemon = Daemon::start(&[
        ("OLLAMA_HOST", &fakes.ollama),
        ("CONVAGENT_TELEGRAM_API_BASE", &fakes.telegram),
    ]);
    let client = reqwest::Client::new();
    let mut one = Vec::new();
    for i in 0..400u64 {
        let chat = 7_000_000 + (i % 1000) as i64;
        one.push(round_trip(&client, &daemon.url, fakes, chat, i).await);
    }
    one.sort();
    println!(
        "3. webhook → reply    one at a time: p50 {:.2} ms  p99 {:.2} ms  ({} messages)",
        ms(one[one.len() / 2]),
        ms(one[one.len() * 99 / 100]),
        one.len()
    );
    let began = Instant::now();
    let until = began + Duration::from_secs(secs);
    let mut senders = Vec::new();
    for s in 0..50i64 {
        let (client, url, fakes) = (client.clone(), daemon.url.clone(), fakes.clone());
        senders.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                round_trip(
                    &client,
                    &url,
                    &fakes,
                    8_000_000 + s,
                    1_000_000 * s as u64 + n,
                )
                .await;
                n += 1;
            }
            n
        }));
    }
    let mut replies = 0;
    for s in senders {
        replies += s.await.unwrap();
    }
    println!(
        "   50 senders at once  {:>9.0} replies/s ({replies} in {:.1} s)",
        replies as f64 / began.elapsed().as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    println!(
        "   fakes answered       {} LLM calls, {} sendMessage calls",
        fakes.llm_calls(),
        fakes.sends()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn update(id: u64, chat: i64) -> String {
    format!(
        r#"{{"update_id":{id},"message":{{"message_id":{id},"from":{{"id":{chat},"is_bot":false,"first_name":"Load"}},"chat":{{"id":{chat},"type":"private"}},"date":1763712000,"text":"load test message {id}"}}}}"#
    )
}

/// Posts one update for `chat` and waits until its reply reaches the fake
/// Telegram.
async fn round_trip(
    client: &reqwest::Client,
    url: &str,
    fakes: &Fakes,
    chat: i64,
    id: u64,
) -> Duration {
    let before = fakes.replies_to(chat);
    let began = Instant::now();
    assert!(
        post_update(client, url, 9_000_000_000 + id, chat).await,
        "the daemon refused a webhook"
    );
    fakes.wait_reply(chat, before).await;
    began.elapsed()
}

/// Posts one signed update; whether the daemon answered 200.
async fn post_update(client: &reqwest::Client, url: &str, id: u64, chat: i64) -> bool {
    client
        .post(format!("{url}/webhook/telegram"))
        .header("content-type", "application/json")
        .header("x-telegram-bot-api-secret-token", SECRET)
        .body(update(id, chat))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
}

struct Fixed {
    rate: u64,
    sent: u64,
    failed: u64,
    p50_ms: f64,
    p99_ms: f64,
}

/// Open-loop load at `rate` requests/s: each request starts on schedule
/// whether or not earlier ones finished, so a slow daemon shows as latency.
async fn fixed_rate(url: &str, rate: u64, for_: Duration) -> Fixed {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let total = rate * for_.as_secs();
    let began = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(began + Duration::from_micros(i * 1_000_000 / rate)).await;
        let (client, url) = (client.clone(), url.to_string());
        let chat = 6_000_000 + (i % 1000) as i64;
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = post_update(&client, &url, 5_000_000_000 + i, chat).await;
            (t.elapsed(), ok)
        });
    }
    let mut latencies = Vec::new();
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        let (took, ok) = r.unwrap();
        failed += u64::from(!ok);
        latencies.push(took);
    }
    latencies.sort();
    Fixed {
        rate,
        sent: total,
        failed,
        p50_ms: ms(latencies[latencies.len() / 2]),
        p99_ms: ms(latencies[latencies.len() * 99 / 100]),
    }
}

struct Wrk {
    rps: f64,
    requests: u64,
    p50: String,
    p99: String,
    non2xx: String,
}

fn wrk(url: &str, path: &str, secs: u64, conns: u64, webhook: bool) -> Wrk {
    wrk_numbered(url, path, secs, conns, webhook, 0)
}

/// [`wrk`] whose update ids start past `id_base` (a second wrk beside it).
fn wrk_numbered(url: &str, path: &str, secs: u64, conns: u64, webhook: bool, id_base: u64) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.env("WRK_ID_BASE", id_base.to_string());
    cmd.args([
        "-t2",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if webhook {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/load/telegram_1000_chats.lua");
        cmd.arg("-s").arg(script);
    }
    let out = cmd
        .arg(format!("{url}{path}"))
        .env("TELEGRAM_WEBHOOK_SECRET", SECRET)
        .output()
        .expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| {
                l.trim_start()
                    .strip_prefix(prefix)
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default()
    };
    let requests = text
        .lines()
        .find_map(|l| {
            l.split(" requests in ")
                .next()
                .filter(|_| l.contains(" requests in "))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    Wrk {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        requests,
        p50: field("50%"),
        p99: field("99%"),
        non2xx: field("non2xx="),
    }
}

/// A release daemon in a fresh temporary home.
struct Daemon {
    child: Child,
    url: String,
    home: PathBuf,
}

impl Daemon {
    // The child is waited for by `Drop for Daemon` (or right here on failure).
    #[allow(clippy::zombie_processes)]
    fn start(env: &[(&str, &str)]) -> Daemon {
        let home = std::env::temp_dir().join(format!(
            "convagent-load-{}-{}",
            std::process::id(),
            unix_ms()
        ));
        std::fs::create_dir_all(home.join("config/convagent")).unwrap();
        std::fs::write(
            home.join("config/convagent/config.toml"),
            format!(
                "[limits]\nmessages_per_minute = {}\n",
                MESSAGES_PER_MINUTE.get().copied().unwrap_or(0)
            ),
        )
        .unwrap();
        let log = std::fs::File::create(home.join("serve.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_convagent"));
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("TELEGRAM_BOT_TOKEN", TOKEN)
            .env("TELEGRAM_WEBHOOK_SECRET", SECRET)
            .env("CONVAGENT_LLM_CHAIN", "ollama")
            .env("CONVAGENT_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("starting convagent serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(home.join("serve.log")).unwrap_or_default();
            if let Some(url) = log
                .split("listening on ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
            {
                return Daemon {
                    child,
                    url: url.to_string(),
                    home,
                };
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not start:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn rss_mb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    }

    fn store(&self) -> PathBuf {
        self.home.join("data/convagent/convagent.db")
    }

    /// Waits until every accepted message is answered and every reply
    /// sent; reads the daemon's own store (read-only).
    fn wait_drained(&self, limit: Duration) -> Option<Drained> {
        let deadline = Instant::now() + limit;
        let conn = rusqlite::Connection::open_with_flags(
            self.store(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opening the daemon's store");
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        while Instant::now() < deadline {
            let (pending, queued): (i64, i64) = conn
                .query_row(
                    "SELECT (SELECT count(*) FROM messages WHERE role = 'user' AND answered_at IS NULL),
                            (SELECT count(*) FROM outbox WHERE state = 'queued')",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            if pending == 0 && queued == 0 {
                return conn
                    .query_row(
                        "SELECT (SELECT count(*) FROM messages WHERE role = 'user'),
                                (SELECT count(*) FROM outbox WHERE state = 'sent'),
                                (SELECT max(updated_at) FROM outbox)",
                        [],
                        |r| {
                            Ok(Drained {
                                answered: r.get::<_, i64>(0)? as u64,
                                replies: r.get::<_, i64>(1)? as u64,
                                last_sent_at: r.get(2)?,
                            })
                        },
                    )
                    .ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

struct Drained {
    answered: u64,
    replies: u64,
    last_sent_at: i64,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// The fake Ollama and Telegram, on this process's runtime: each answers at
/// once, with TCP_NODELAY (no Nagle wait on a reply written in two sends).
#[derive(Clone)]
struct Fakes {
    ollama: String,
    telegram: String,
    state: Arc<FakeState>,
}

#[derive(Default)]
struct FakeState {
    llm_calls: Mutex<u64>,
    replies: Mutex<HashMap<i64, u64>>,
    replied: Notify,
}

impl Fakes {
    async fn start() -> Fakes {
        let state = Arc::new(FakeState::default());
        let ollama = Router::new()
            .route("/api/chat", post(fake_chat))
            .route("/api/tags", get(|| async { r#"{"models":[]}"# }))
            .with_state(state.clone());
        let telegram = Router::new()
            .route("/{bot}/{method}", post(fake_telegram))
            .with_state(state.clone());
        Fakes {
            ollama: serve(ollama).await,
            telegram: serve(telegram).await,
            state,
        }
    }

    fn llm_calls(&self) -> u64 {
        *self.state.llm_calls.lock().unwrap()
    }

    fn sends(&self) -> u64 {
        self.state.replies.lock().unwrap().values().sum()
    }

    fn replies_to(&self, chat: i64) -> u64 {
        self.state
            .replies
            .lock()
            .unwrap()
            .get(&chat)
            .copied()
            .unwrap_or(0)
    }

    async fn wait_reply(&self, chat: i64, before: u64) {
        loop {
            let notified = self.state.replied.notified();
            if self.replies_to(chat) > before {
                return;
            }
            tokio::time::timeout(Duration::from_secs(30), notified)
                .await
                .expect("no reply within 30 s");
        }
    }
}

async fn serve(app: Router) -> String {
    use axum::serve::ListenerExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// Ollama's `/api/chat` streaming answer, all of it at once: one NDJSON line.
async fn fake_chat(State(state): State<Arc<FakeState>>) -> impl axum::response::IntoResponse {
    *state.llm_calls.lock().unwrap() += 1;
    (
        [("content-type", "application/x-ndjson")],
        "{\"model\":\"bench\",\"message\":{\"role\":\"assistant\",\"content\":\"Hello from the bench.\"},\"done\":true,\"prompt_eval_count\":20,\"eval_count\":5}\n",
    )
}

/// Telegram's `sendMessage` (and `sendChatAction`): records who got a reply.
async fn fake_telegram(
    State(state): State<Arc<FakeState>>,
    UrlPath((_bot, method)): UrlPath<(String, String)>,
    body: String,
) -> &'static str {
    if method == "sendMessage" {
        let chat = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["chat_id"]
                    .as_i64()
                    .or_else(|| v["chat_id"].as_str()?.parse().ok())
            })
            .unwrap_or(0);
        *state.replies.lock().unwrap().entry(chat).or_default() += 1;
        state.replied.notify_waiters();
    }
    r#"{"ok":true,"result":{"message_id":1,"date":1763712000,"chat":{"id":1,"type":"private"}}}"#
}
