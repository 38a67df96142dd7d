//! Golden webhook payloads: the file format `convagent replay` and the
//! tests share, and signing a payload the way its provider would.
//!
//! A golden file is JSON:
//!
//! ```json
//! {
//!   "channel": "telegram",
//!   "name": "plain text message",
//!   "source": "where the example comes from in the provider's documentation",
//!   "json": { "update_id": 1, "message": { "...": "..." } },
//!   "headers": { "X-Slack-Retry-Num": "1" },
//!   "expect_status": 200,
//!   "expect": "accepted"
//! }
//! ```
//!
//! The body is `json` (Telegram, Slack) or `form` (Twilio: an object of
//! strings, sent form-encoded in the order the file lists them, as Twilio
//! sends its parameters unsorted). `headers` are added as they are; the
//! signature headers are computed when sending. `expect_status` (default
//! 200) and `expect` (`accepted`, `duplicate`, `ignored`, or any text the
//! response body starts with) are what `replay --expect` checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::adapters::channels::registry;
use crate::config::Config;
use crate::core::Channel;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    pub channel: Channel,
    pub name: String,
    pub source: String,
    #[serde(default)]
    pub json: Option<serde_json::Value>,
    #[serde(default)]
    pub form: Option<Form>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "ok_status")]
    pub expect_status: u16,
    #[serde(default)]
    pub expect: Option<String>,
}

fn ok_status() -> u16 {
    200
}

/// Form fields in the order the file gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form(pub Vec<(String, String)>);

impl Form {
    pub fn get_mut(&mut self, key: &str) -> Option<&mut String> {
        self.0.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

impl<'de> Deserialize<'de> for Form {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Form;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of string fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Form, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<String, String>()? {
                    fields.push(field);
                }
                Ok(Form(fields))
            }
        }
        d.deserialize_map(Fields)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a golden payload: {message}", .path.display())]
    Format { path: PathBuf, message: String },
    #[error("{channel}: cannot sign without {missing} (set it in the config or the environment)")]
    MissingSecret { channel: Channel, missing: String },
}

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Golden {
    pub fn load(path: &Path) -> Result<Self, GoldenError> {
        let text = std::fs::read_to_string(path).map_err(|source| GoldenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let golden: Golden = serde_json::from_str(&text).map_err(|e| GoldenError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if golden.json.is_some() == golden.form.is_some() {
            return Err(GoldenError::Format {
                path: path.to_path_buf(),
                message: "give exactly one of `json` and `form`".into(),
            });
        }
        Ok(golden)
    }

    /// Every golden file under `path` (a file, or a folder searched
    /// recursively), in name order.
    pub fn load_all(path: &Path) -> Result<Vec<(PathBuf, Golden)>, GoldenError> {
        let mut files = Vec::new();
        collect(path, true, &mut files).map_err(|source| GoldenError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        files.sort();
        files
            .into_iter()
            .map(|f| Golden::load(&f).map(|g| (f, g)))
            .collect()
    }

    /// The request body as the provider sends it.
    pub fn body(&self) -> Vec<u8> {
        match (&self.json, &self.form) {
            (Some(json), _) => json.to_string().into_bytes(),
            (None, Some(form)) => serde_urlencoded::to_string(&form.0)
                .unwrap_or_default()
                .into_bytes(),
            (None, None) => Vec::new(),
        }
    }

    /// A copy whose provider ids carry `n`, so that each copy is a new
    /// message (load tests) rather than a duplicate.
    pub fn numbered(&self, n: u64) -> Golden {
        let mut g = self.clone();
        if let Some(json) = g.json.as_mut() {
            bump(json, "update_id", n);
            for key in ["message", "edited_message"] {
                if let Some(m) = json.get_mut(key) {
                    bump(m, "message_id", n);
                }
            }
            if let Some(id) = json
                .get_mut("event_id")
                .and_then(|v| v.as_str().map(str::to_string))
            {
                json["event_id"] = serde_json::Value::String(format!("{id}-{n}"));
            }
            if let Some(q) = json.get_mut("callback_query")
                && let Some(id) = q["id"].as_str().map(str::to_string)
            {
                q["id"] = serde_json::Value::String(format!("{id}-{n}"));
            }
        }
        if let Some(form) = g.form.as_mut() {
            for key in ["MessageSid", "SmsMessageSid", "SmsSid"] {
                if let Some(v) = form.get_mut(key) {
                    v.push_str(&format!("{n:x}"));
                }
            }
        }
        g
    }

    /// The request as the provider would send it to `base` (the daemon's
    /// URL), signed with the configured secrets. `public_url` is the base
    /// the daemon believes it is reached at (Twilio signs the full URL).
    /// The channel's adapter signs, with the configured secrets.
    pub fn sign(
        &self,
        base: &str,
        public_url: Option<&str>,
        config: &Config,
        now_secs: i64,
    ) -> Result<SignedRequest, GoldenError> {
        let path = format!("/webhook/{}", self.channel);
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let body = self.body();
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let content_type = if self.form.is_some() {
            "application/x-www-form-urlencoded"
        } else {
            "application/json"
        };
        if !headers.iter().any(|(k, _)| k == "content-type") {
            headers.push(("content-type".into(), content_type.into()));
        }
        let adapter =
            registry::adapter(config, self.channel).ok_or_else(|| GoldenError::MissingSecret {
                channel: self.channel,
                missing: registry::spec(self.channel)
                    .map_or_else(|| "a webhook channel".into(), |s| s.secrets_hint()),
            })?;
        // Twilio signs the URL it called: the public one, if any.
        let signed_url = match public_url {
            Some(p) => format!("{}{path}", p.trim_end_matches('/')),
            None => url.clone(),
        };
        headers.extend(adapter.sign(&signed_url, &body, now_secs));
        Ok(SignedRequest { url, headers, body })
    }
}

fn bump(value: &mut serde_json::Value, key: &str, n: u64) {
    if let Some(v) = value.get(key).and_then(|v| v.as_i64()) {
        value[key] = serde_json::Value::from(v + n as i64 * 1_000);
    }
}

/// Files named on the command line are taken as they are; in folders,
/// only `.json` files.
fn collect(path: &Path, named: bool, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), false, out)?;
        }
    } else if named || path.extension().is_some_and(|e| e == "json") {
        out.push(path.to_path_buf());
    }
    Ok(())
}
