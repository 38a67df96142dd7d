//! An operator steps in with the real binaries: `convagent takeover`
//! silences the agent in one conversation of a running `serve`, `convagent
//! reply` reaches the person through the daemon's outbox, and `convagent
//! release` gives the conversation back; `history` shows who answers.

use std::time::{Duration, Instant};

use crate::serve::{Daemon, accepting_telegram, post_update, sent, telegram_update};
use crate::{stderr_of, stdout_of};

async fn wait_for(telegram: &wiremock::MockServer, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let texts = sent(telegram, "text").await;
        if texts.len() >= n || Instant::now() > deadline {
            return texts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_reply_and_release_through_a_running_daemon() {
    let telegram = accepting_telegram().await;
    let (env, _ollama) = crate::serve::echoing().await;
    let daemon = tokio::task::block_in_place(|| Daemon::start(&env, &telegram.uri(), &[]));
    let post = |n: i64, text: &str| {
        let url = daemon.url.clone();
        let update = telegram_update(77, n, text);
        tokio::task::block_in_place(move || post_update(&url, &update))
    };
    assert_eq!(post(1, "hi"), 200);
    assert_eq!(wait_for(&telegram, 1).await, ["re: hi"]);

    let run = |args: &[&str]| tokio::task::block_in_place(|| env.cmd(args).output().unwrap());
    let out = run(&["takeover", "1", "--as", "ana"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("is yours, ana"),
        "{}",
        stdout_of(&out)
    );
    let out = run(&["history"]);
    assert!(
        stdout_of(&out).contains("(human: ana)"),
        "{}",
        stdout_of(&out)
    );

    assert_eq!(post(2, "is anyone human here?"), 200);
    assert_eq!(post(3, "my parcel is lost"), 200);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        sent(&telegram, "text").await.len(),
        1,
        "the agent is silent"
    );

    let out = run(&[
        "reply", "1", "Ana", "here:", "I", "am", "on", "it.", "--as", "ana",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("answering 2 waiting"),
        "{}",
        stdout_of(&out)
    );
    assert_eq!(
        wait_for(&telegram, 2).await,
        ["re: hi", "Ana here: I am on it."],
        "sent by the daemon's outbox"
    );
    let out = run(&["history", "show", "1", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let last = shown["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["provider"].as_str(), last["model"].as_str()),
        (Some("human"), Some("ana"))
    );

    let out = run(&["release", "1", "--as", "ana"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert_eq!(post(4, "thanks"), 200);
    assert_eq!(
        wait_for(&telegram, 3).await,
        ["re: hi", "Ana here: I am on it.", "re: thanks"],
        "the agent answers again"
    );

    // Bad input: a conversation that is not there, and no text.
    let out = run(&["takeover", "99"]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("there is no conversation 99"),
        "{}",
        stderr_of(&out)
    );
    let out = run(&["reply", "1", " "]);
    assert!(!out.status.success());
    assert!(
        stderr_of(&out).contains("nothing to send"),
        "{}",
        stderr_of(&out)
    );
    drop(daemon);
}
