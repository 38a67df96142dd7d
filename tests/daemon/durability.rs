//! Acknowledged means on disk: every message that got its 200 is in what a
//! power cut leaves of the store (`support::powercut` forgets every write
//! that was not synced). And a store that cannot write (disk full, I/O
//! errors, a lock held too long) refuses with 503, keeps nothing half
//! written, and the daemon carries on once the fault clears.

use std::path::Path;

use serde_json::json;

use crate::support::powercut::Disk;
use crate::{Harness, Options, bodies, mount_success};

/// A Telegram text from chat `chat`, message `id`: stored as `chat:id`.
fn telegram(h: &Harness, chat: i64, id: i64) -> convagent::golden::SignedRequest {
    let mut golden = h.golden("telegram/text.json");
    let json = golden.json.as_mut().unwrap();
    json["update_id"] = json!(90_000 + chat * 1000 + id);
    json["message"]["message_id"] = json!(id);
    json["message"]["chat"]["id"] = json!(chat);
    json["message"]["from"]["id"] = json!(chat);
    json["message"]["text"] = json!(format!("message {id} from {chat}"));
    h.sign(&golden)
}

/// The provider ids of the user messages in the store a power cut now
/// would leave (opened as `serve` would open it after the reboot: WAL
/// recovery included).
fn stored_after_power_cut(disk: &Disk) -> Vec<String> {
    let after = tempfile::tempdir().unwrap();
    disk.restore_power_cut(after.path());
    provider_ids(&after.path().join("convagent.db"))
}

fn provider_ids(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    // A power cut can leave the file without the schema itself.
    let Ok(mut stmt) =
        conn.prepare("SELECT provider_message_id FROM messages WHERE role = 'user' ORDER BY id")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::watch(dir.path());
    let h = Harness::start_in(dir, Options::default()).await;
    mount_success(&h).await;
    // The schema reaches the disk by the writer's first checkpoint at the
    // latest: what follows is about the messages' own commits.
    assert_eq!(h.post(&telegram(&h, 4242, 0)).await.0, 200);
    let schema = || {
        let after = tempfile::tempdir().unwrap();
        disk.restore_power_cut(after.path());
        let conn = rusqlite::Connection::open(after.path().join("convagent.db")).unwrap();
        conn.prepare("SELECT 1 FROM messages").is_ok()
    };
    assert!(crate::support::eventually(10, schema).await);

    // One at a time: the power cut comes the moment each 200 arrives.
    for id in 1..=12 {
        let (status, body, _) = h.post(&telegram(&h, 4242, id)).await;
        assert_eq!(status, 200, "{body}");
        let kept = stored_after_power_cut(&disk);
        assert!(
            kept.contains(&format!("4242:{id}")),
            "message {id} was acknowledged, but a power cut right after its 200 loses it \
             (kept: {kept:?})"
        );
    }

    // A burst from many chats, committed in groups: each of its 200s too.
    let requests: Vec<_> = (0..40).map(|chat| telegram(&h, 5000 + chat, 1)).collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(async move { crate::post(&r).await.0 }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let kept = stored_after_power_cut(&disk);
    for chat in 0..40 {
        assert!(
            kept.contains(&format!("{}:1", 5000 + chat)),
            "chat {} was acknowledged and lost at the power cut",
            5000 + chat
        );
    }
    h.stop().await;
}

/// Replies the fake Telegram was sent for `chat`.
async fn replies_to(h: &Harness, chat: i64) -> usize {
    bodies(&h.telegram)
        .await
        .iter()
        .filter(|b| b["chat_id"] == json!(chat.to_string()) || b["chat_id"] == json!(chat))
        .count()
}

/// Rows of the message `chat:id` (0 or 1), and whether it was answered.
fn stored(h: &Harness, chat: i64, id: i64) -> (i64, bool) {
    let conn = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    conn.query_row(
        "SELECT count(*), coalesce(max(answered_at IS NOT NULL), 0) FROM messages \
         WHERE provider_message_id = ?1",
        [format!("{chat}:{id}")],
        |r| Ok((r.get(0)?, r.get::<_, i64>(1)? == 1)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_write_gets_503s_and_the_daemon_carries_on_after() {
    use rusqlite::ffi::{SQLITE_FULL, SQLITE_IOERR_WRITE};
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::watch(dir.path());
    let h = Harness::start_in(dir, Options::default()).await;
    mount_success(&h).await;

    for (chat, code, what) in [
        (7001, SQLITE_FULL, "full"),
        (7002, SQLITE_IOERR_WRITE, "disk I/O error"),
    ] {
        let (status, _, _) = h.post(&telegram(&h, chat, 1)).await;
        assert_eq!(status, 200);
        h.drained().await;

        disk.fail(code);
        let (status, body, _) = h.post(&telegram(&h, chat, 2)).await;
        assert_eq!(status, 503, "{what}: the provider must retry: {body}");
        assert!(body.contains("not stored") && body.contains(what), "{body}");
        assert_eq!(
            stored(&h, chat, 2),
            (0, false),
            "{what}: nothing of it is kept"
        );

        // The fault clears; the provider's retry is stored and answered once.
        disk.heal();
        let (status, body, _) = h.post(&telegram(&h, chat, 2)).await;
        assert_eq!(status, 200, "{what}: {body}");
        h.drained().await;
        assert_eq!(stored(&h, chat, 2), (1, true), "{what}");
        assert_eq!(
            replies_to(&h, chat).await,
            2,
            "{what}: one reply per message"
        );
    }

    // Another process holding the write lock past the busy timeout (5 s).
    let holder = rusqlite::Connection::open(h.dir.path().join("convagent.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (status, body, _) = h.post(&telegram(&h, 7003, 1)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("locked"), "{body}");
    holder.execute_batch("ROLLBACK").unwrap();
    let (status, _, _) = h.post(&telegram(&h, 7003, 1)).await;
    assert_eq!(status, 200);
    h.drained().await;
    assert_eq!(stored(&h, 7003, 1), (1, true));
    assert_eq!(replies_to(&h, 7003).await, 1);
    h.stop().await;
}

/// Story 26 of the original design: the store fails in the middle of the
/// pipeline — after the accept, while the turn runs — and the message is
/// still answered, once, when it heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fault_while_a_turn_runs_costs_no_answer() {
    use rusqlite::ffi::SQLITE_IOERR_WRITE;
    let dir = tempfile::tempdir().unwrap();
    let disk = Disk::watch(dir.path());
    let llm = std::sync::Arc::new(crate::support::EchoLlm {
        delay: std::time::Duration::from_millis(800),
        ..crate::support::EchoLlm::new()
    });
    let mut options = Options {
        llm: llm.clone(),
        ..Options::default()
    };
    // A turn that could not be stored is tried again after this.
    options.settings.fallback_retry = std::time::Duration::from_millis(500);
    let h = Harness::start_in(dir, options).await;
    mount_success(&h).await;
    let (status, _, _) = h.post(&telegram(&h, 7101, 1)).await;
    assert_eq!(status, 200);
    // The turn is with the LLM: its reply cannot be stored.
    assert!(
        crate::support::eventually(5, || llm.calls.load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await
    );
    disk.fail(SQLITE_IOERR_WRITE);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        stored(&h, 7101, 1),
        (1, false),
        "accepted, not yet answered"
    );
    assert_eq!(replies_to(&h, 7101).await, 0);
    disk.heal();
    h.drained().await;
    assert_eq!(stored(&h, 7101, 1), (1, true));
    assert_eq!(replies_to(&h, 7101).await, 1, "answered once");
    // The reply generated during the fault was lost with its write; the
    // retry generated it again.
    assert!(llm.calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    h.stop().await;
}
