//! Twilio messaging, shared by the channels that go through it (WhatsApp,
//! SMS; each is a [`Flavor`] in its own file). Inbound: form-encoded
//! webhooks signed with `X-Twilio-Signature` = base64(HMAC-SHA1(auth
//! token, URL + each POST parameter name and value, sorted by name)) over
//! the URL Twilio called. Outbound: the Messages API (`POST
//! /2010-04-01/Accounts/{sid}/Messages.json`, basic auth), from the
//! configured number or else the one the person wrote to, error codes
//! mapped to retry or dead letter.

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::{http_client, secure_eq, send_error};
use crate::config::Config;
use crate::core::channel::{
    ChannelAdapter, Inbound, Registration, SendError, Sent, WebhookError, WebhookRequest,
};
use crate::core::llm::BoxFuture;
use crate::core::message::{
    Attachment, AttachmentKind, Channel, ConversationKey, CorrelationId, InboundMessage,
    SENDER_NAME,
};

pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";
/// Where Twilio serves typing indicators. A configured `api_base` (a proxy,
/// or a local fake in tests) serves both.
pub const DEFAULT_MESSAGING_API_BASE: &str = "https://messaging.twilio.com";
/// Twilio's limit for one message body (WhatsApp and SMS alike).
pub const MAX_BODY: usize = 1600;

/// What differs between the channels Twilio carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flavor {
    pub channel: Channel,
    /// How this channel writes a number: `whatsapp:` + E.164, or plain E.164.
    pub address_prefix: &'static str,
    /// The variable that sets the number replies go from.
    pub from_variable: &'static str,
    /// Twilio's typing indicator exists for this channel.
    pub typing: bool,
    /// `convagent tunnel` sets the configured number's inbound URL for
    /// this channel (one channel may own a number's `SmsUrl`).
    pub owns_number_url: bool,
    /// Where in Twilio's console the webhook URL is pasted by hand.
    pub console_hint: &'static str,
}

impl Flavor {
    /// `number` as this channel addresses it: `+1415…` and
    /// `whatsapp:+1415…` both become `whatsapp:+1415…` for WhatsApp.
    pub fn address(&self, number: &str) -> String {
        let bare = number.trim();
        let bare = bare.strip_prefix("whatsapp:").unwrap_or(bare);
        format!("{}{bare}", self.address_prefix)
    }
}

#[derive(Debug, Clone)]
pub struct TwilioSettings {
    pub flavor: Flavor,
    pub account_sid: String,
    pub auth_token: String,
    /// The number we send from; unset: the number each person wrote to.
    pub from: Option<String>,
    /// The phone number's SID (PN…): lets `convagent tunnel` set its inbound URL.
    pub phone_number_sid: Option<String>,
    pub api_base: String,
    pub max_body_bytes: usize,
}

pub struct Twilio {
    settings: TwilioSettings,
    client: reqwest::Client,
}

/// The variables that enable the Twilio channels.
pub const SECRETS: &[&str] = &["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"];

pub fn present(config: &Config) -> Vec<bool> {
    let t = &config.channels.twilio;
    vec![t.account_sid.is_some(), t.auth_token.is_some()]
}

impl Twilio {
    /// The `flavor` channel, if the Twilio secrets are configured.
    pub fn from_config(config: &Config, flavor: Flavor, from: Option<String>) -> Option<Self> {
        let t = &config.channels.twilio;
        Some(Twilio::new(TwilioSettings {
            flavor,
            account_sid: t.account_sid.clone()?,
            auth_token: t.auth_token.clone()?,
            from,
            phone_number_sid: t.phone_number_sid.clone(),
            api_base: t
                .api_base
                .clone()
                .unwrap_or_else(|| DEFAULT_API_BASE.into()),
            max_body_bytes: t.max_body_bytes,
        }))
    }

    pub fn new(settings: TwilioSettings) -> Self {
        Twilio {
            settings,
            client: http_client(),
        }
    }

    /// The signature Twilio computes for `url` and form `params`.
    pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
        let mut sorted: Vec<&(String, String)> = params.iter().collect();
        sorted.sort();
        let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
        mac.update(url.as_bytes());
        for (k, v) in sorted {
            mac.update(k.as_bytes());
            mac.update(v.as_bytes());
        }
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }
}

/// The URL as called, with and without its scheme's default port: Twilio
/// may sign either form.
fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let port = match scheme {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let (authority, path) = rest
        .find('/')
        .map_or((rest, ""), |i| (&rest[..i], &rest[i..]));
    if let Some(host) = authority.strip_suffix(&format!(":{port}")) {
        out.push(format!("{scheme}://{host}{path}"));
    } else if !authority.contains(':') {
        out.push(format!("{scheme}://{authority}:{port}{path}"));
    }
    out
}

fn form(body: &[u8]) -> Result<Vec<(String, String)>, WebhookError> {
    serde_urlencoded::from_bytes(body)
        .map_err(|e| WebhookError::BadRequest(format!("invalid form body: {e}")))
}

impl ChannelAdapter for Twilio {
    fn channel(&self) -> Channel {
        self.settings.flavor.channel
    }

    fn verify(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookError> {
        if !request.has_media_type("application/x-www-form-urlencoded") {
            return Err(WebhookError::UnsupportedMediaType(
                "Twilio webhooks are application/x-www-form-urlencoded".into(),
            ));
        }
        let given = request.header("x-twilio-signature").ok_or_else(|| {
            WebhookError::Unauthorized("missing X-Twilio-Signature header".into())
        })?;
        let params = form(request.body)?;
        let valid = url_variants(request.url).iter().any(|url| {
            secure_eq(
                &Self::signature(&self.settings.auth_token, url, &params),
                given,
            )
        });
        if valid {
            Ok(())
        } else {
            Err(WebhookError::Unauthorized(
                "X-Twilio-Signature does not match (check the auth token and the public URL)"
                    .into(),
            ))
        }
    }

    fn parse(&self, request: &WebhookRequest<'_>) -> Result<Inbound, WebhookError> {
        let params: BTreeMap<String, String> = form(request.body)?.into_iter().collect();
        let get = |k: &str| params.get(k).map(String::as_str).filter(|v| !v.is_empty());
        if get("MessageStatus").is_some() {
            return Ok(Inbound::Ignore("status callback"));
        }
        let Some(sid) = get("MessageSid").or(get("SmsMessageSid")).or(get("SmsSid")) else {
            return Ok(Inbound::Ignore("no MessageSid: not a message"));
        };
        let Some(from) = get("From") else {
            return Ok(Inbound::Ignore("message without `From`"));
        };
        // NumMedia says how many MediaUrlN follow; count what is there.
        // The kind is the MIME type's (a WhatsApp voice note is audio/ogg).
        let mut attachments: Vec<Attachment> = (0..10)
            .map_while(|i| {
                let content_type = get(&format!("MediaContentType{i}")).map(str::to_string);
                Some(Attachment {
                    url: get(&format!("MediaUrl{i}"))?.to_string(),
                    ..Attachment::new(AttachmentKind::of_mime(
                        content_type.as_deref().unwrap_or_default(),
                    ))
                    .with_content_type(content_type)
                })
            })
            .collect();
        // A shared location (WhatsApp): coordinates, and for a place its
        // address and label.
        let coordinate = |k: &str| get(k).and_then(|v| v.parse::<f64>().ok());
        if let (Some(latitude), Some(longitude)) = (coordinate("Latitude"), coordinate("Longitude"))
        {
            attachments.push(Attachment {
                latitude: Some(latitude),
                longitude: Some(longitude),
                address: get("Address").map(str::to_string),
                name: get("Label").map(str::to_string),
                ..Attachment::new(AttachmentKind::Location)
            });
        }
        let text = get("Body").unwrap_or_default().to_string();
        if text.trim().is_empty() && attachments.is_empty() {
            return Ok(Inbound::Ignore("no text"));
        }
        let mut metadata = BTreeMap::new();
        // `OptOutType` (STOP, START, HELP): Twilio's Advanced Opt-Out says
        // which of its keywords the message was.
        for k in ["To", "ProfileName", "WaId", "AccountSid", "OptOutType"] {
            if let Some(v) = get(k) {
                metadata.insert(k.to_string(), v.to_string());
            }
        }
        if let Some(name) = get("ProfileName") {
            metadata.insert(SENDER_NAME.into(), name.to_string());
        }
        Ok(Inbound::Message(InboundMessage {
            // The number written to is part of the conversation: replies
            // go from it, and one person may write to two of our numbers.
            key: ConversationKey::new(
                self.settings.flavor.channel,
                from,
                get("To").unwrap_or_default(),
            ),
            text,
            provider_message_id: sid.to_string(),
            provider_ts: None,
            received_at: request.now_ms,
            attachments,
            metadata,
            correlation_id: CorrelationId::generate(),
        }))
    }

    fn sign(&self, url: &str, body: &[u8], _now_secs: i64) -> Vec<(String, String)> {
        let params = form(body).unwrap_or_default();
        vec![(
            "x-twilio-signature".into(),
            Self::signature(&self.settings.auth_token, url, &params),
        )]
    }

    fn register<'a>(&'a self, webhook_url: &'a str) -> BoxFuture<'a, Registration> {
        Box::pin(async move {
            let s = &self.settings;
            match &s.phone_number_sid {
                Some(sid) if s.flavor.owns_number_url => {
                    match self.set_inbound_url(sid, webhook_url).await {
                        Ok(()) => Registration::Registered(format!(
                            "number {sid} now posts incoming messages to {webhook_url}"
                        )),
                        Err(e) => Registration::Failed(format!(
                            "{e}\n             paste by hand instead: {webhook_url}"
                        )),
                    }
                }
                _ => Registration::Manual(format!(
                    "in Twilio, {} (HTTP POST) to:\n             {webhook_url}",
                    s.flavor.console_hint
                )),
            }
        })
    }

    fn check_credentials(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move { self.fetch_account().await.map(|a| format!("account {a}")) })
    }

    /// A `MediaUrlN` with the account's Basic auth; Twilio answers with a
    /// redirect to the file, which is followed (reqwest drops the auth on
    /// the way to another host).
    fn fetch<'a>(
        &'a self,
        attachment: &'a crate::core::message::Attachment,
        max_bytes: u64,
    ) -> Option<BoxFuture<'a, Result<Vec<u8>, crate::core::channel::FetchError>>> {
        if attachment.url.is_empty() {
            return None;
        }
        let s = &self.settings;
        let request = self
            .client
            .get(&attachment.url)
            .basic_auth(&s.account_sid, Some(&s.auth_token));
        Some(Box::pin(async move {
            super::download(request, max_bytes)
                .await
                .map_err(|e| e.context("Twilio media"))
        }))
    }

    fn replies_from(&self) -> Option<String> {
        let s = &self.settings;
        Some(match &s.from {
            Some(n) => format!(
                "replies from {} ({})",
                s.flavor.address(n),
                s.flavor.from_variable
            ),
            None => format!(
                "replies from the number each person wrote to ({} unset)",
                s.flavor.from_variable
            ),
        })
    }

    /// Twilio's WhatsApp typing indicator (`POST /v2/Indicators/Typing.json`
    /// with the inbound message's SID): marks it read and shows "typing…"
    /// for up to 25 seconds or until the reply arrives.
    fn typing<'a>(
        &'a self,
        _to: &'a ConversationKey,
        replying_to: &'a InboundMessage,
    ) -> Option<BoxFuture<'a, Result<(), SendError>>> {
        let sid = &replying_to.provider_message_id;
        if !self.settings.flavor.typing || !(sid.starts_with("SM") || sid.starts_with("MM")) {
            return None;
        }
        Some(Box::pin(async move {
            let s = &self.settings;
            let base = if s.api_base == DEFAULT_API_BASE {
                DEFAULT_MESSAGING_API_BASE
            } else {
                s.api_base.trim_end_matches('/')
            };
            let response = self
                .client
                .post(format!("{base}/v2/Indicators/Typing.json"))
                .basic_auth(&s.account_sid, Some(&s.auth_token))
                .form(&[("messageId", sid.as_str()), ("channel", "whatsapp")])
                .send()
                .await
                .map_err(|e| SendError::Transient(format!("Twilio: {}", super::unanswered(e))))?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(SendError::Permanent {
                    code: response.status().as_u16().to_string(),
                    detail: "Twilio typing indicator refused".into(),
                })
            }
        }))
    }

    fn typing_lasts(&self) -> std::time::Duration {
        std::time::Duration::from_secs(25)
    }

    fn max_body_bytes(&self) -> usize {
        self.settings.max_body_bytes
    }

    fn max_message_len(&self) -> usize {
        MAX_BODY
    }

    fn send<'a>(
        &'a self,
        to: &'a ConversationKey,
        text: &'a str,
    ) -> BoxFuture<'a, Result<Sent, SendError>> {
        Box::pin(async move {
            let s = &self.settings;
            let from = self.reply_from(to).ok_or_else(|| SendError::Permanent {
                code: "config".into(),
                detail: format!(
                    "{} is not set and the conversation does not say which number was written to",
                    s.flavor.from_variable
                ),
            })?;
            let url = format!(
                "{}/2010-04-01/Accounts/{}/Messages.json",
                s.api_base.trim_end_matches('/'),
                s.account_sid
            );
            let response = self
                .client
                .post(&url)
                .basic_auth(&s.account_sid, Some(&s.auth_token))
                .form(&[
                    ("To", s.flavor.address(&to.sender).as_str()),
                    ("From", from.as_str()),
                    ("Body", text),
                ])
                .send()
                .await
                .map_err(|e| SendError::Transient(format!("Twilio: {}", super::unanswered(e))))?;
            let status = response.status();
            let retry_after = super::retry_after_header(&response);
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            if status.is_success() {
                return Ok(Sent {
                    provider_message_id: body["sid"].as_str().map(str::to_string),
                });
            }
            let code = body["code"]
                .as_i64()
                .map_or_else(|| status.as_u16().to_string(), |c| c.to_string());
            let detail = body["message"].as_str().unwrap_or("no message").to_string();
            Err(send_error(
                status.as_u16(),
                retry_after,
                code,
                format!("Twilio: {detail}"),
            ))
        })
    }
}

impl Twilio {
    /// The number a reply in `to` goes from: the configured one, else the
    /// one the person wrote to (the conversation's thread).
    pub fn reply_from(&self, to: &ConversationKey) -> Option<String> {
        let s = &self.settings;
        s.from
            .as_deref()
            .or(Some(to.thread.as_str()))
            .filter(|n| !n.trim().is_empty())
            .map(|n| s.flavor.address(n))
    }

    fn account_url(&self, rest: &str) -> String {
        let s = &self.settings;
        format!(
            "{}/2010-04-01/Accounts/{}{rest}",
            s.api_base.trim_end_matches('/'),
            s.account_sid
        )
    }

    async fn checked(
        response: Result<reqwest::Response, reqwest::Error>,
        what: &str,
    ) -> Result<serde_json::Value, String> {
        let response = response.map_err(|e| format!("Twilio {what}: {}", super::unanswered(e)))?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            Err(format!(
                "Twilio {what}: HTTP {} {}: {}",
                status.as_u16(),
                body["code"],
                body["message"].as_str().unwrap_or("no message")
            ))
        }
    }

    /// Fetches the account: proves the SID and token work.
    pub async fn fetch_account(&self) -> Result<String, String> {
        let s = &self.settings;
        let response = self
            .client
            .get(self.account_url(".json"))
            .basic_auth(&s.account_sid, Some(&s.auth_token))
            .send()
            .await;
        let body = Self::checked(response, "account fetch").await?;
        Ok(format!(
            "{} ({})",
            body["friendly_name"].as_str().unwrap_or("?"),
            body["status"].as_str().unwrap_or("?")
        ))
    }

    /// Points a phone number's inbound messages at `url` (HTTP POST).
    pub async fn set_inbound_url(&self, phone_number_sid: &str, url: &str) -> Result<(), String> {
        let s = &self.settings;
        let response = self
            .client
            .post(self.account_url(&format!("/IncomingPhoneNumbers/{phone_number_sid}.json")))
            .basic_auth(&s.account_sid, Some(&s.auth_token))
            .form(&[("SmsUrl", url), ("SmsMethod", "POST")])
            .send()
            .await;
        Self::checked(response, "phone number update")
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::channels::leniency::request;

    fn twilio() -> Twilio {
        Twilio::new(TwilioSettings {
            flavor: super::super::whatsapp::FLAVOR,
            account_sid: "ACx".into(),
            auth_token: "t".into(),
            from: None,
            phone_number_sid: None,
            api_base: DEFAULT_API_BASE.into(),
            max_body_bytes: 1 << 20,
        })
    }

    #[test]
    fn a_form_missing_any_one_parameter_is_never_refused() {
        let full = [
            ("MessageSid", "SM1"),
            ("SmsMessageSid", "SM1"),
            ("AccountSid", "ACx"),
            ("From", "whatsapp:+14155550123"),
            ("To", "whatsapp:+14155238886"),
            ("Body", "hi"),
            ("NumMedia", "1"),
            ("MediaUrl0", "https://m.example/1"),
            ("MediaContentType0", "image/jpeg"),
            ("ProfileName", "Ada"),
            ("WaId", "14155550123"),
        ];
        let headers = vec![(
            "content-type".to_string(),
            "application/x-www-form-urlencoded; charset=UTF-8".to_string(),
        )];
        for skip in 0..full.len() {
            let form: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            let body = serde_urlencoded::to_string(&form).unwrap();
            let parsed = twilio().parse(&request(&headers, body.as_bytes()));
            assert!(parsed.is_ok(), "without `{}`: {parsed:?}", full[skip].0);
        }
        let body = serde_urlencoded::to_string(full).unwrap();
        let Ok(Inbound::Message(m)) = twilio().parse(&request(&headers, body.as_bytes())) else {
            panic!("a message");
        };
        assert_eq!(m.metadata[SENDER_NAME], "Ada");
        assert_eq!(m.attachments.len(), 1);
        assert_eq!(m.key.thread, "whatsapp:+14155238886");
    }

    #[test]
    fn replies_go_from_the_configured_number_or_the_one_written_to() {
        let mut t = twilio();
        let key = ConversationKey::new(Channel::Whatsapp, "whatsapp:+1555", "whatsapp:+1415");
        assert_eq!(t.reply_from(&key).as_deref(), Some("whatsapp:+1415"));
        let old = ConversationKey::new(Channel::Whatsapp, "whatsapp:+1555", "");
        assert_eq!(t.reply_from(&old), None, "nothing to reply from");
        // With or without the prefix, as people write it.
        t.settings.from = Some("+14155238886".into());
        assert_eq!(t.reply_from(&old).as_deref(), Some("whatsapp:+14155238886"));
        let sms = super::super::sms::FLAVOR;
        assert_eq!(sms.address("whatsapp:+1415"), "+1415");
        assert_eq!(sms.address("+1415"), "+1415");
    }

    #[test]
    fn default_ports_are_tried_both_ways() {
        assert_eq!(
            url_variants("https://x.example/webhook/whatsapp?a=1"),
            [
                "https://x.example/webhook/whatsapp?a=1",
                "https://x.example:443/webhook/whatsapp?a=1"
            ]
        );
        assert_eq!(
            url_variants("https://x.example:443/w"),
            ["https://x.example:443/w", "https://x.example/w"]
        );
        assert_eq!(url_variants("http://h:8080/w"), ["http://h:8080/w"]);
    }

    #[test]
    fn signature_matches_twilios_documented_example() {
        // From Twilio's "Webhooks security" documentation.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let sig = Twilio::signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
        );
        assert_eq!(sig, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=");
    }
}
