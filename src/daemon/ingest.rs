//! Durable accept with group commit: webhook handlers hand their message
//! to one writer thread, which stores everything waiting in one
//! transaction and answers each handler once it is committed. The 200 still
//! follows the commit; many webhooks share its cost.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::DaemonStore;
use crate::core::{Accepted, InboundMessage, StoreError};

/// Messages per transaction at most.
const BATCH: usize = 256;

type Job = (
    InboundMessage,
    oneshot::Sender<Result<Accepted, StoreError>>,
);

pub struct Ingest {
    tx: mpsc::UnboundedSender<Job>,
}

impl Ingest {
    pub fn start(store: Arc<dyn DaemonStore>) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        std::thread::Builder::new()
            .name("convagent-ingest".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut jobs = vec![first];
                    while jobs.len() < BATCH {
                        match rx.try_recv() {
                            Ok(job) => jobs.push(job),
                            Err(_) => break,
                        }
                    }
                    let (messages, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
                    for (result, reply) in store.accept_many(&messages).into_iter().zip(replies) {
                        let _ = reply.send(result);
                    }
                }
            })
            .expect("spawning the ingest thread");
        Ingest { tx }
    }

    /// Stores `message` durably; resolves after the commit.
    pub async fn accept(&self, message: InboundMessage) -> Result<Accepted, StoreError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((message, reply))
            .map_err(|_| StoreError::Backend("the ingest writer stopped".into()))?;
        done.await
            .map_err(|_| StoreError::Backend("the ingest writer stopped".into()))?
    }
}
