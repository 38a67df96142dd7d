//! Telemetry: `tracing` events as JSON lines in a daily-rolling file under
//! the XDG state dir, short human lines on stderr, one filter
//! (`CONVAGENT_LOG`). Every configured secret is masked in both before a byte
//! is written.

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Subscriber;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Shorter configured values are not masked.
pub const MIN_SECRET_CHARS: usize = 4;

/// What replaces a secret in any output.
pub const MASK: &str = "********";

/// Libraries whose routine chatter stays out of the log unless asked for.
const QUIET_DEFAULTS: &[&str] = &["llama_cpp_2=warn", "hyper=warn", "reqwest=warn"];

/// Replaces configured secret values in text. Clones share their secrets:
/// [`Masker::add`] (a reloaded config) reaches every writer at once.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    /// Each secret as written plain and as escaped inside a JSON string.
    patterns: Arc<std::sync::RwLock<Arc<[String]>>>,
}

impl Masker {
    pub fn new(secrets: &[String]) -> Self {
        Masker {
            patterns: Arc::new(std::sync::RwLock::new(Self::patterns(secrets, Vec::new()))),
        }
    }

    /// Masks these secrets too, from now on (the old ones stay masked).
    pub fn add(&self, secrets: &[String]) {
        let mut patterns = self.patterns.write().unwrap_or_else(|p| p.into_inner());
        *patterns = Self::patterns(secrets, patterns.to_vec());
    }

    fn patterns(secrets: &[String], mut patterns: Vec<String>) -> Arc<[String]> {
        // A secret of one to three characters would mask half of every
        // line while protecting nothing; such values are not secrets.
        for s in secrets
            .iter()
            .filter(|s| s.chars().count() >= MIN_SECRET_CHARS)
        {
            patterns.push(s.clone());
            let escaped = serde_json::to_string(s).unwrap_or_default();
            let escaped = escaped.trim_matches('"').to_string();
            if escaped != *s {
                patterns.push(escaped);
            }
        }
        // Longest first, so a secret containing another is masked whole.
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        patterns.dedup();
        patterns.into()
    }

    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(text);
        let patterns = self
            .patterns
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for p in patterns.iter() {
            if out.contains(p.as_str()) {
                out = Cow::Owned(out.replace(p.as_str(), MASK));
            }
        }
        match mask_credential_shapes(&out) {
            Cow::Owned(masked) => Cow::Owned(masked),
            Cow::Borrowed(_) => out,
        }
    }
}

/// Strings shaped like credentials, configured or not: a person may paste
/// a key into a message, and a provider may echo one in an error body.
/// Each pattern keeps its first group (a label) and masks the rest.
static CREDENTIAL_SHAPES: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(
        r#"(?x)
        ()\b(?:sk|rk|pk)-(?:proj-|live-|test-)?[A-Za-z0-9_-]{16,}      # OpenAI / Stripe-style keys
        | ()\bxox[abposr]-[A-Za-z0-9-]{10,}                             # Slack tokens
        | ()\bxapp-[A-Za-z0-9-]{10,}                                     # Slack app tokens
        | ()\b(?:AKIA|ASIA)[0-9A-Z]{16}\b                                # AWS access key ids
        | ()\b(?:AC|SK)[0-9a-fA-F]{32}\b                                 # Twilio account / API key SIDs
        | ()\bgh[pousr]_[A-Za-z0-9]{30,}                                 # GitHub tokens
        | ()\b\d{6,12}:[A-Za-z0-9_-]{30,}                               # Telegram bot tokens
        | ((?i:bearer|basic)\s+)[A-Za-z0-9._~+/-]{8,}=*                  # Authorization values
        | ((?i:auth[_-]?token|token|secret|password|passwd|api[_-]?key)["']?\s*[:=]\s*["']?)[^\s"'&,;]{8,}
        "#,
    )
    .expect("the credential patterns compile")
});

/// Masks what looks like a credential (see [`Masker::mask`], which also
/// masks the configured secrets).
pub fn mask_credential_shapes(text: &str) -> Cow<'_, str> {
    CREDENTIAL_SHAPES.replace_all(text, |c: &regex::Captures<'_>| {
        let label = (1..c.len())
            .find_map(|i| c.get(i))
            .map_or("", |m| m.as_str());
        format!("{label}{MASK}")
    })
}

/// A [`MakeWriter`] whose writers mask secrets in what they write. Each
/// event is buffered whole and masked when the writer is dropped, so a
/// secret split across `write` calls is still caught.
pub struct MaskingMakeWriter<M> {
    inner: M,
    masker: Masker,
}

pub struct MaskingWriter<W: Write> {
    inner: W,
    masker: Masker,
    buffer: Vec<u8>,
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for MaskingMakeWriter<M> {
    type Writer = MaskingWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        MaskingWriter {
            inner: self.inner.make_writer(),
            masker: self.masker.clone(),
            buffer: Vec::new(),
        }
    }
}

impl<W: Write> MaskingWriter<W> {
    fn flush_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let masked = self.masker.mask(&text);
        self.inner.write_all(masked.as_bytes())?;
        self.buffer.clear();
        Ok(())
    }
}

impl<W: Write> Write for MaskingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buffer()?;
        self.inner.flush()
    }
}

impl<W: Write> Drop for MaskingWriter<W> {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    /// JSON log directory; `None` logs to no file.
    pub log_dir: Option<PathBuf>,
    /// tracing env-filter directives (`CONVAGENT_LOG`).
    pub filter: String,
    /// Human lines on stderr: `None` for none (the TUI), else the filter
    /// for them (commands show warnings only unless asked for more).
    pub stderr_filter: Option<String>,
    pub secrets: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter `{filter}`: {message} (see CONVAGENT_LOG)")]
    Filter { filter: String, message: String },
    #[error("cannot write logs to {}: {message}", .dir.display())]
    Dir { dir: PathBuf, message: String },
}

/// Keeps the background log writer alive; drop it last to flush the file.
pub struct TelemetryGuard {
    _file: Option<WorkerGuard>,
    /// The secrets every log writer masks (more can be added).
    pub masker: Masker,
}

fn env_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    let mut directives: Vec<&str> = QUIET_DEFAULTS
        .iter()
        .copied()
        .filter(|d| {
            let target = d.split('=').next().unwrap_or_default();
            !filter.contains(target)
        })
        .collect();
    directives.insert(0, filter);
    EnvFilter::try_new(directives.join(",")).map_err(|e| TelemetryError::Filter {
        filter: filter.to_string(),
        message: e.to_string(),
    })
}

/// The JSON log file name prefix; files are `convagent.YYYY-MM-DD.log`.
pub const LOG_FILE_PREFIX: &str = "convagent";

fn file_appender(dir: &Path) -> Result<RollingFileAppender, TelemetryError> {
    let err = |e: &dyn std::fmt::Display| TelemetryError::Dir {
        dir: dir.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
    RollingFileAppender::builder()
        .rotation(Rotation::DAILY)
        .filename_prefix(LOG_FILE_PREFIX)
        .filename_suffix("log")
        .max_log_files(14)
        .build(dir)
        .map_err(|e| err(&e))
}

/// Builds the subscriber without installing it (tests install it locally).
pub fn subscriber(
    options: &TelemetryOptions,
) -> Result<(impl Subscriber + Send + Sync + 'static, TelemetryGuard), TelemetryError> {
    let masker = Masker::new(&options.secrets);

    let (file_layer, guard) = match &options.log_dir {
        Some(dir) => {
            let (writer, guard) = tracing_appender::non_blocking(file_appender(dir)?);
            let layer = tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(MaskingMakeWriter {
                    inner: writer,
                    masker: masker.clone(),
                })
                .with_filter(env_filter(&options.filter)?);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };

    let stderr_layer = match &options.stderr_filter {
        Some(filter) => Some(
            tracing_subscriber::fmt::layer()
                .compact()
                .without_time()
                .with_target(false)
                .with_ansi(io::stderr().is_terminal())
                .with_writer(MaskingMakeWriter {
                    inner: io::stderr,
                    masker: masker.clone(),
                })
                .with_filter(env_filter(filter)?),
        ),
        None => None,
    };

    let subscriber = tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer);
    Ok((
        subscriber,
        TelemetryGuard {
            _file: guard,
            masker,
        },
    ))
}

use tracing_subscriber::Layer as _;

/// Installs telemetry for the process.
pub fn init(options: &TelemetryOptions) -> Result<TelemetryGuard, TelemetryError> {
    let (subscriber, guard) = subscriber(options)?;
    // A second init in one process (tests) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_added_later_are_masked_by_every_clone() {
        let masker = Masker::new(&["first-secret".into()]);
        let writer_copy = masker.clone();
        masker.add(&["second-secret".into()]);
        assert_eq!(
            writer_copy.mask("first-secret and second-secret"),
            "******** and ********"
        );
    }

    #[test]
    fn credential_shaped_strings_are_masked_even_when_not_configured() {
        let m = Masker::new(&[]);
        for (line, kept) in [
            (
                "my key is sk-proj-abcdefghijklmnop1234 ok",
                "my key is ********** ok",
            ),
            (
                "token xoxb-123456789012-abcdefABCDEF here",
                "token ********** here",
            ),
            ("aws AKIAIOSFODNN7EXAMPLE", "aws **********"),
            ("sid ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!", "sid **********!"),
            (
                "Authorization: Bearer abc.def-ghi_jkl",
                "Authorization: Bearer **********",
            ),
            (
                "bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
                "bot **********",
            ),
            (
                "{\"auth_token\": \"0123456789abcdef0123456789abcdef\"}",
                "{\"auth_token\": \"**********\"}",
            ),
            ("password=hunter2hunter2&x=1", "password=**********&x=1"),
        ] {
            assert_eq!(m.mask(line), kept.replace("**********", MASK), "{line}");
        }
        // Ordinary text and our own ids stay as they are.
        for plain in [
            "correlation_id=0f1e2d3c4b5a69788796a5b4c3d2e1f0 stage=stored",
            "How do I reset my password?",
            "skip-to-content, an ask-me-anything",
        ] {
            assert_eq!(m.mask(plain), plain);
        }
    }

    #[test]
    fn masks_plain_and_json_escaped_secrets() {
        let m = Masker::new(&["abc123".into(), "pa\"ss".into(), String::new()]);
        assert_eq!(m.mask("token abc123!"), format!("token {MASK}!"));
        assert_eq!(m.mask(r#"{"v":"pa\"ss"}"#), format!(r#"{{"v":"{MASK}"}}"#));
        assert_eq!(m.mask("nothing here"), "nothing here");
    }

    #[test]
    fn masking_writer_catches_secrets_split_across_writes() {
        let masker = Masker::new(&["s3cr3t".into()]);
        let mut out = Vec::new();
        {
            let mut w = MaskingWriter {
                inner: &mut out,
                masker,
                buffer: Vec::new(),
            };
            w.write_all(b"key=s3").unwrap();
            w.write_all(b"cr3t\n").unwrap();
        }
        assert_eq!(String::from_utf8(out).unwrap(), format!("key={MASK}\n"));
    }

    #[test]
    fn secrets_never_reach_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "xoxb-1234-very-secret";
        let options = TelemetryOptions {
            log_dir: Some(dir.path().to_path_buf()),
            filter: "debug".into(),
            stderr_filter: None,
            secrets: vec![secret.into()],
        };
        let (subscriber, guard) = subscriber(&options).unwrap();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("message", correlation_id = "corr-42");
            let _entered = span.enter();
            tracing::info!(token = secret, "configured token {secret}");
            tracing::warn!(error = %format!("auth failed for {secret}"), "send failed");
        });
        drop(guard);
        let mut text = String::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            text.push_str(&std::fs::read_to_string(entry.unwrap().path()).unwrap());
        }
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("very-secret"), "{text}");
        assert_eq!(text.matches(MASK).count(), 3, "{text}");
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["span"]["correlation_id"], "corr-42", "{line}");
        }
    }

    #[test]
    fn a_bad_filter_is_reported() {
        let e = env_filter("info,=[").unwrap_err();
        assert!(e.to_string().contains("CONVAGENT_LOG"));
    }
}
