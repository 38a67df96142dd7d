//! Voice notes to text, before their turn: each voice note or audio of the
//! turn that has no transcript yet is fetched with its channel's own auth
//! (at most `[stt] max_bytes`) and given to speech-to-text; the transcript
//! is stored with the attachment (`Write::Attachments`) before the agent
//! reads the turn, so the model gets the person's words. This runs after
//! the durable accept, never before the 200: a daemon killed before or
//! during it finds the message pending at start and hears it then. A fetch
//! or transcription that fails is traced and the turn goes on without it
//! (the voice notice, or the model reading the stand-in).

use std::sync::Arc;

use super::Daemon;
use crate::core::channel;
use crate::core::media::Sense;
use crate::core::{Outcome, Pending, Stage, Write};

/// Transcribes what the turn's messages need heard; updates `turn` (the
/// agent decides from it) and the store (the context reads from it).
pub(super) async fn hear(daemon: &Arc<Daemon>, turn: &mut [Pending]) {
    let live = daemon.live();
    let Some((stt, max_bytes)) = live.hearing.clone() else {
        return;
    };
    for pending in turn.iter_mut() {
        let message = &mut pending.message;
        let unheard: Vec<usize> = (0..message.attachments.len())
            .filter(|&i| {
                let a = &message.attachments[i];
                a.transcript.is_none() && a.kind.sense() == Some(Sense::Hearing)
            })
            .collect();
        if unheard.is_empty() {
            continue;
        }
        let Some(adapter) = channel::find(&live.channels, message.key.channel).cloned() else {
            continue;
        };
        let mut heard = false;
        for i in unheard {
            let started_at = daemon.clock.now_ms();
            let began = std::time::Instant::now();
            let attachment = message.attachments[i].clone();
            let outcome = async {
                let fetch = adapter
                    .fetch(&attachment, max_bytes)
                    .ok_or_else(|| format!("{} serves no files", message.key.channel))?;
                let audio = fetch.await?;
                let bytes = audio.len();
                let mime = attachment.content_type.as_deref().unwrap_or("audio/ogg");
                let name = attachment
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("voice.{}", extension(mime)));
                let text = stt.transcribe(audio, mime, &name).await?;
                Ok::<_, String>((text, bytes))
            }
            .await;
            let (result, detail) = match outcome {
                Ok((text, bytes)) => {
                    let detail =
                        format!("{bytes} bytes, {} words", text.split_whitespace().count());
                    message.attachments[i].transcript = Some(text);
                    heard = true;
                    (Outcome::Ok, detail)
                }
                Err(why) => {
                    tracing::warn!(correlation_id = %message.correlation_id, error = %why, "a voice note was not heard");
                    (Outcome::Failed, why)
                }
            };
            daemon.tracer.stage(
                &message.correlation_id.0,
                Stage::Transcribed,
                started_at,
                began,
                result,
                Some(detail),
            );
        }
        if heard {
            let write = Write::Attachments {
                message_id: pending.message_id,
                attachments: pending.message.attachments.clone(),
            };
            if let Err(e) = daemon.store.write(write).await {
                tracing::error!(error = %e, "cannot store a transcript");
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
