//! The media stage, before each turn: every attachment of the turn with a
//! file not yet fetched is downloaded with its channel's own auth
//! (`ChannelAdapter::fetch`: at most `[media]`'s cap for its kind, retried
//! on a 5xx or a lost connection, within the fetch timeout) and kept in the
//! media directory under its SHA-256; then a voice note is given to
//! speech-to-text and a document's text is read. What was learnt (the
//! file's name, its transcript or text, or why it could not be fetched) is
//! stored with the attachment (`Write::Attachments`) before the agent reads
//! the turn. This runs after the durable accept, never before the 200: a
//! daemon killed before or during it finds the message pending at start
//! and takes it in then. A fetch that fails is traced and the turn goes on
//! with what did arrive (the notice, or the model reading the stand-in).

use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use crate::core::channel::{self, ChannelAdapter, FetchError};
use crate::core::media::{self, Attachment, MediaConfig, MediaFiles, Sense};
use crate::core::stt::SpeechToText;
use crate::core::{Outcome, Pending, Stage, Write};

/// What the media stage works with; `serve`, `chat` and the tests build
/// it from the configuration alike ([`Media::from_settings`]).
pub struct Media {
    pub files: Arc<dyn MediaFiles>,
    pub config: MediaConfig,
    /// Speech to text (`[stt]`), if configured.
    pub stt: Option<Arc<dyn SpeechToText>>,
    /// Decode audio to 16 kHz WAV for speech to text (`[stt] convert`).
    pub convert: bool,
}

/// The longest recording decoded for speech to text.
const MAX_HEARD_SECS: u32 = 30 * 60;

impl Media {
    /// The media directory of `settings`, and speech to text where `[stt]`
    /// names a server.
    pub fn from_settings(settings: &crate::config::Settings) -> Media {
        let config = &settings.config;
        Media {
            files: Arc::new(crate::adapters::media_files::DiskFiles::new(
                settings.media_dir(),
            )),
            config: config.media.clone(),
            stt: crate::adapters::stt::OpenAiStt::from_config(&config.stt)
                .map(|s| Arc::new(s) as Arc<dyn SpeechToText>),
            convert: config.stt.convert,
        }
    }

    /// Fetches, keeps and reads what `attachment` needs (see the module);
    /// each step traced under `correlation_id`. Returns whether anything
    /// about it was learnt (and so is to be stored).
    pub async fn take_in(
        &self,
        source: Source<'_>,
        attachment: &mut Attachment,
        trace: &mut (dyn FnMut(Stage, Outcome, String) + Send),
    ) -> bool {
        if !attachment.wants_file() {
            return false;
        }
        let Some(cap) = self.config.max_bytes(attachment.kind) else {
            return false;
        };
        // Shared by keeping, reading and hearing: fetched once, copied never.
        let bytes = match self.fetch(source, attachment, cap).await {
            Ok(bytes) => Arc::new(bytes),
            Err(why) => {
                trace(Stage::Fetched, Outcome::Failed, why.clone());
                attachment.fetch_error = Some(why);
                return true;
            }
        };
        let files = self.files.clone();
        let kept = {
            let bytes = Arc::clone(&bytes);
            tokio::task::spawn_blocking(move || files.put(&bytes))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        };
        let file = match kept {
            Ok(file) => file,
            Err(why) => {
                tracing::error!(error = %why, "cannot keep a fetched file");
                trace(Stage::Fetched, Outcome::Failed, why);
                return false;
            }
        };
        attachment.file = Some(file);
        attachment.size.get_or_insert(bytes.len() as u64);
        if attachment.content_type.is_none() {
            attachment.content_type = media::sniff(&bytes).map(str::to_string);
        }
        let mut detail = format!("{} bytes", bytes.len());
        if attachment.kind.sense() == Some(Sense::Reading) {
            detail.push_str(&self.read(attachment, Arc::clone(&bytes)).await);
        }
        trace(Stage::Fetched, Outcome::Ok, detail);
        if attachment.kind.sense() == Some(Sense::Hearing)
            && let Some(stt) = &self.stt
        {
            let bytes = Arc::try_unwrap(bytes).unwrap_or_else(|shared| (*shared).clone());
            let (audio, mime, name, said) = self.for_hearing(attachment, bytes).await;
            match stt.transcribe(audio, &mime, &name).await {
                Ok(text) => {
                    let words = text.split_whitespace().count();
                    trace(
                        Stage::Transcribed,
                        Outcome::Ok,
                        format!("{words} words{said}"),
                    );
                    attachment.transcript = Some(text);
                }
                Err(why) => trace(Stage::Transcribed, Outcome::Failed, format!("{why}{said}")),
            }
        }
        true
    }

    /// What goes to speech to text: with `convert`, the recording decoded
    /// to 16 kHz WAV (its length kept where the provider said none), else,
    /// or where it cannot be decoded, the file as it came; and what the
    /// trace says of that.
    async fn for_hearing(
        &self,
        attachment: &mut Attachment,
        bytes: Vec<u8>,
    ) -> (Vec<u8>, String, String, String) {
        let mime = attachment
            .content_type
            .clone()
            .unwrap_or_else(|| "audio/ogg".into());
        let name = attachment
            .name
            .clone()
            .unwrap_or_else(|| format!("voice.{}", extension(&mime)));
        if !self.convert {
            return (bytes, mime, name, String::new());
        }
        let (decoded, bytes) = tokio::task::spawn_blocking(move || {
            // A decoder that panics on a damaged file has met an unreadable
            // recording, not ended the turn.
            let decoded =
                std::panic::catch_unwind(|| crate::adapters::audio::to_wav(&bytes, MAX_HEARD_SECS))
                    .unwrap_or_else(|_| Err("an unreadable recording".into()));
            (decoded, bytes)
        })
        .await
        .unwrap_or_else(|e| (Err(e.to_string()), Vec::new()));
        match decoded {
            Ok(decoded) => {
                let secs = decoded.secs;
                attachment
                    .duration_secs
                    .get_or_insert(secs.round().max(1.0) as u32);
                let said = format!(", from {secs:.1} s decoded to 16 kHz WAV");
                (decoded.wav, "audio/wav".into(), "voice.wav".into(), said)
            }
            Err(why) => (bytes, mime, name, format!(", sent as it came ({why})")),
        }
    }

    /// The file, at most `cap` bytes, asking again after a 5xx or a lost
    /// connection (`fetch_attempts` in all, waiting 0.5 s, 1 s, ...), all
    /// within `fetch_timeout_secs`.
    async fn fetch(
        &self,
        source: Source<'_>,
        attachment: &Attachment,
        cap: u64,
    ) -> Result<Vec<u8>, String> {
        if attachment.size.is_some_and(|size| size > cap) {
            // Said by the provider: not worth a request.
            return Err(format!("over the cap of {cap} bytes"));
        }
        let attempts = self.config.fetch_attempts.max(1);
        let all = async {
            let mut attempt = 1;
            loop {
                let fetch = match source {
                    Source::Channel(adapter) => {
                        adapter.fetch(attachment, cap).ok_or_else(|| {
                            FetchError::permanent(format!("{} serves no files", adapter.channel()))
                        })?
                    }
                    Source::Local => local(attachment, cap),
                };
                match fetch.await {
                    Err(e) if e.retry && attempt < attempts => {
                        tracing::info!(attempt, error = %e, "fetching a file: trying again");
                        tokio::time::sleep(Duration::from_millis(500 << (attempt - 1).min(6)))
                            .await;
                        attempt += 1;
                    }
                    done => return done,
                }
            }
        };
        let limit = Duration::from_secs(self.config.fetch_timeout_secs.max(1));
        match tokio::time::timeout(limit, all).await {
            Ok(fetched) => fetched.map_err(|e| match e.retry && attempts > 1 {
                true => format!("{e} (after {attempts} attempts)"),
                false => e.why,
            }),
            Err(_) => Err(format!("timed out after {} s", limit.as_secs())),
        }
    }

    /// A document's text into `attachment.text`, within the budget; says
    /// what was read for the trace.
    async fn read(&self, attachment: &mut Attachment, bytes: Arc<Vec<u8>>) -> String {
        let (mime, name) = (attachment.content_type.clone(), attachment.name.clone());
        let budget = self.config.document_chars;
        let read = tokio::task::spawn_blocking(move || {
            crate::adapters::documents::text_of(&bytes, mime.as_deref(), name.as_deref(), budget)
        })
        .await
        .unwrap_or_else(|e| Some(Err(e.to_string())));
        match read {
            None => String::new(),
            Some(Ok(text)) => {
                let said = format!(", {} characters read", text.chars().count());
                attachment.text = Some(text);
                said
            }
            Some(Err(why)) => format!(", not read: {why}"),
        }
    }
}

/// Where an attachment's file comes from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// Its channel, with the provider's auth.
    Channel(&'a dyn ChannelAdapter),
    /// This machine (`chat`'s `/attach`: a `file://` URL). Never for a
    /// channel's attachment: a webhook cannot make the daemon read a file.
    Local,
}

/// A local file named by a `file://` URL, at most `cap` bytes of it.
fn local(
    attachment: &Attachment,
    cap: u64,
) -> crate::core::llm::BoxFuture<'_, Result<Vec<u8>, FetchError>> {
    Box::pin(async move {
        let path = attachment
            .url
            .strip_prefix("file://")
            .ok_or_else(|| FetchError::permanent("not a local file"))?;
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| FetchError::permanent(format!("{path}: {e}")))?;
        if meta.len() > cap {
            return Err(FetchError::permanent(format!(
                "over the cap of {cap} bytes"
            )));
        }
        tokio::fs::read(path)
            .await
            .map_err(|e| FetchError::permanent(format!("{path}: {e}")))
    })
}

/// Takes in what the turn's messages carry; updates `turn` (the agent
/// decides from it) and the store (the context reads from it).
pub(super) async fn take_in(daemon: &Arc<Daemon>, turn: &mut [Pending]) {
    let live = daemon.live();
    let Some(media) = live.media.clone() else {
        return;
    };
    for pending in turn.iter_mut() {
        if !pending
            .message
            .attachments
            .iter()
            .any(Attachment::wants_file)
        {
            continue;
        }
        let message = &mut pending.message;
        let Some(adapter) = channel::find(&live.channels, message.key.channel).cloned() else {
            continue;
        };
        let correlation_id = message.correlation_id.0.clone();
        let mut learnt = false;
        for attachment in message.attachments.iter_mut() {
            let started_at = daemon.clock.now_ms();
            let began = std::time::Instant::now();
            let mut trace = |stage: Stage, outcome: Outcome, detail: String| {
                if outcome == Outcome::Failed {
                    tracing::warn!(correlation_id = %correlation_id, stage = %stage, error = %detail, "an attachment was not taken in");
                }
                daemon.tracer.stage(
                    &correlation_id,
                    stage,
                    started_at,
                    began,
                    outcome,
                    Some(detail),
                );
            };
            let source = Source::Channel(adapter.as_ref());
            learnt |= media.take_in(source, attachment, &mut trace).await;
        }
        if learnt {
            let write = Write::Attachments {
                message_id: pending.message_id,
                attachments: pending.message.attachments.clone(),
            };
            if let Err(e) = daemon.store.write(write).await {
                tracing::error!(error = %e, "cannot store what was learnt of an attachment");
            }
        }
    }
}

/// A file extension servers recognise for `mime`.
fn extension(mime: &str) -> &'static str {
    match mime {
        m if m.contains("ogg") || m.contains("opus") => "ogg",
        m if m.contains("mpeg") || m.contains("mp3") => "mp3",
        m if m.contains("mp4") || m.contains("m4a") || m.contains("aac") => "m4a",
        m if m.contains("wav") => "wav",
        m if m.contains("amr") => "amr",
        m if m.contains("webm") => "webm",
        _ => "ogg",
    }
}
