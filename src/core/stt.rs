//! The speech-to-text port: a voice note's audio in, the words out. The
//! daemon fetches a voice note with its channel's auth and asks this port
//! before the turn; the transcript is stored with the attachment and the
//! model reads it as the person's words, marked as heard from a voice note.

use super::llm::BoxFuture;

pub trait SpeechToText: Send + Sync {
    /// What `doctor` and the trace call it (`openai-compatible at URL`).
    fn describe(&self) -> String;

    /// The words of `audio` (`mime`, named `file_name` for servers that go
    /// by the extension), or why not.
    fn transcribe<'a>(
        &'a self,
        audio: Vec<u8>,
        mime: &'a str,
        file_name: &'a str,
    ) -> BoxFuture<'a, Result<String, String>>;
}
