//! Step 5b, `retrieve`: what the turn's words find in `[knowledge]` (full
//! text, and with an embedder the nearest vectors too, fused) and in the
//! person's other conversations, within the budget, put after the system
//! prompt with their sources.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};

use super::Agent;
use crate::core::context::ContextWindow;
use crate::core::embeddings::{self, CANDIDATES, Embedder, VectorChunk};
use crate::core::knowledge::{self, KnowledgeDoc, Passage, Source};
use crate::core::llm::ChatMessage;
use crate::core::message::{Channel, Role};
use crate::core::ports::{Pending, StoreError};
use crate::core::trace::{Outcome, Stage};

/// How long what [`RetrievalCache`] holds is trusted.
const RECHECK_MS: i64 = 30_000;

/// The characters of a turn an embedder is given for its vector.
const QUERY_CHARS: usize = 2_000;

/// What retrieval reads seldom: the documents (whether any, and what they
/// are), their vectors, and each conversation's person's other
/// conversations; each kept [`RECHECK_MS`].
#[derive(Default)]
pub(super) struct RetrievalCache {
    /// When read, whether there are documents, and what identifies the
    /// documents' state (paths, hashes, embedders, times).
    documents: Option<(i64, bool, u64)>,
    /// The chunks' vectors, for the documents' state they were read at.
    vectors: Option<(u64, Arc<Vec<VectorChunk>>)>,
    others: HashMap<i64, (i64, Vec<(i64, Channel)>)>,
}

/// What identifies the documents' state: a new, changed, removed or
/// re-embedded document changes it.
fn fingerprint(docs: &[KnowledgeDoc]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for d in docs {
        (&d.path, &d.sha256, d.indexed_at, &d.embedder).hash(&mut h);
    }
    h.finish()
}

impl Agent {
    /// Ranks `[knowledge]` with `embedder`'s vectors as well as by full text
    /// (fused: what both find comes first).
    pub fn with_embedder(mut self, embedder: Arc<dyn Embedder>) -> Self {
        self.embedder = Some(embedder);
        self
    }

    /// Step 5b: passages from the documents and from the person's other
    /// conversations that match the turn's words, within the budget, put
    /// after the system prompt with their sources; traced as `retrieve`. A
    /// store that cannot answer costs the turn its passages, not its answer;
    /// an embedder that cannot, its vectors.
    pub(super) async fn retrieve(
        &self,
        turn: &[Pending],
        window: &mut ContextWindow,
    ) -> Vec<Passage> {
        let last = &turn[turn.len() - 1];
        let began = self.now();
        let text: String = turn
            .iter()
            .map(|p| p.message.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let words = knowledge::query_words(&text);
        let found = match self.lookable(last.conversation_id, began.0) {
            Ok((None, others)) if others.is_empty() => Ok(None),
            Ok(_) if words.is_empty() => Ok(None),
            Ok((documents, others)) => self
                .passages(last, &text, &words, documents, &others)
                .await
                .map(Some),
            Err(e) => Err(e),
        };
        let passages = match found {
            Ok(Some(p)) => p,
            Ok(None) => return Vec::new(),
            Err(e) => {
                warn!(error = %e, "retrieval failed: the turn goes on without it");
                self.stage(
                    &last.message,
                    Stage::Retrieve,
                    began,
                    Outcome::Failed,
                    Some(e.to_string()),
                );
                return Vec::new();
            }
        };
        let kept = knowledge::within_budget(passages, self.settings.knowledge.budget_tokens);
        if !kept.is_empty() {
            let context = knowledge::as_context(&kept);
            window.estimated_tokens += context.len() / 4;
            let at = window.messages.len().min(1);
            window
                .messages
                .insert(at, ChatMessage::new(Role::System, context));
        }
        info!(passages = kept.len(), "retrieved");
        self.stage(
            &last.message,
            Stage::Retrieve,
            began,
            Outcome::Ok,
            Some(if kept.is_empty() {
                "nothing matched".into()
            } else {
                knowledge::describe(&kept)
            }),
        );
        kept
    }

    /// The documents' vectors (when there are documents: `Some`, empty
    /// without an embedder), and the other conversations of the person
    /// `conversation` belongs to: from [`RetrievalCache`] while it is fresh,
    /// else read (outside the lock: a read holds up no other turn).
    #[allow(clippy::type_complexity)]
    fn lookable(
        &self,
        conversation: i64,
        now: i64,
    ) -> Result<(Option<Arc<Vec<VectorChunk>>>, Vec<(i64, Channel)>), StoreError> {
        let cache = || self.retrieval.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = |at: i64| now - at < RECHECK_MS;
        let (documents, others) = {
            let held = cache();
            (
                held.documents.filter(|(at, _, _)| fresh(*at)),
                held.others
                    .get(&conversation)
                    .filter(|(at, _)| fresh(*at))
                    .map(|(_, others)| others.clone()),
            )
        };
        let (any, state) = match documents {
            Some((_, any, state)) => (any, state),
            None => {
                let docs = self.store.knowledge_docs()?;
                let (any, state) = (!docs.is_empty(), fingerprint(&docs));
                cache().documents = Some((now, any, state));
                (any, state)
            }
        };
        let vectors = match (&self.embedder, any) {
            (_, false) => None,
            (None, true) => Some(Arc::new(Vec::new())),
            (Some(embedder), true) => {
                let held = cache()
                    .vectors
                    .as_ref()
                    .filter(|(at_state, _)| *at_state == state)
                    .map(|(_, v)| v.clone());
                Some(match held {
                    Some(v) => v,
                    None => {
                        let v = Arc::new(self.store.knowledge_vectors(embedder.name())?);
                        cache().vectors = Some((state, v.clone()));
                        v
                    }
                })
            }
        };
        let others = match others {
            Some(others) => others,
            None => {
                let others = self.store.person_conversations(conversation)?;
                let mut held = cache();
                if held.others.len() >= 4_096 {
                    held.others.clear();
                }
                held.others.insert(conversation, (now, others.clone()));
                others
            }
        };
        Ok((vectors, others))
    }

    /// Forgets what [`RetrievalCache`] holds of a person's conversations
    /// (a `/link` joined two people).
    pub(super) fn forget_people(&self) {
        self.retrieval
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .others
            .clear();
    }

    /// The documents' passages for the turn: full-text ranked, and fused
    /// with the nearest of `vectors` when there are some and the embedder
    /// answers.
    async fn documents(
        &self,
        text: &str,
        words: &[String],
        vectors: &[VectorChunk],
    ) -> Result<Vec<Passage>, StoreError> {
        let top = self.settings.knowledge.top;
        let (Some(embedder), false) = (&self.embedder, vectors.is_empty()) else {
            return self.store.search_knowledge(words, top);
        };
        let by_words = self.store.search_knowledge(words, top * CANDIDATES)?;
        let query: String = text.chars().take(QUERY_CHARS).collect();
        match embedder.embed(std::slice::from_ref(&query)).await {
            Ok(q) if q.len() == 1 => Ok(embeddings::hybrid(by_words, &q[0], vectors, top)),
            Ok(_) | Err(_) => {
                warn!(
                    embedder = embedder.name(),
                    "the embedder did not answer: documents ranked by full text only"
                );
                Ok(by_words.into_iter().take(top).collect())
            }
        }
    }

    /// The candidates for `words`, best first within each kind: from the
    /// documents when there are some (`vectors` is `Some`), and from the
    /// person's `others` conversations.
    async fn passages(
        &self,
        last: &Pending,
        text: &str,
        words: &[String],
        vectors: Option<Arc<Vec<VectorChunk>>>,
        others: &[(i64, Channel)],
    ) -> Result<Vec<Passage>, StoreError> {
        let mut passages = Vec::new();
        if let Some(vectors) = vectors {
            passages.extend(self.documents(text, words, &vectors).await?);
        }
        let memory = &self.settings.memory;
        if !others.is_empty() && memory.recall > 0 {
            let ids: Vec<i64> = others.iter().map(|(id, _)| *id).collect();
            let said = self.store.user_messages_of(&ids, memory.window)?;
            let texts: Vec<&str> = said.iter().map(|(_, _, t)| t.as_str()).collect();
            let scores = knowledge::rank(words, &texts);
            let mut ranked: Vec<(f64, &(i64, i64, String))> = scores
                .into_iter()
                .zip(&said)
                .filter(|(score, _)| *score > 0.0)
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (score, (conversation, at, text)) in ranked.into_iter().take(memory.recall) {
                let channel = others
                    .iter()
                    .find(|(id, _)| id == conversation)
                    .map(|(_, c)| *c)
                    .unwrap_or(last.message.key.channel);
                passages.push(Passage {
                    source: Source::Memory { channel, at: *at },
                    text: text.clone(),
                    score,
                });
            }
        }
        if memory.across_channels {
            let channel = last.message.key.channel;
            for (id, other) in others.iter().filter(|(_, c)| *c != channel).take(3) {
                if let Some(summary) = self.store.latest_summary(*id)? {
                    passages.push(Passage {
                        source: Source::Summary {
                            channel: *other,
                            conversation: *id,
                        },
                        text: summary.text,
                        score: 0.0,
                    });
                }
            }
        }
        Ok(passages)
    }
}
