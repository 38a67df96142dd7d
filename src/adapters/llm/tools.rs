//! Native tool calling on the wire, for the providers that have it: the
//! `tools` array (the same for Ollama's `/api/chat` and OpenAI's chat
//! completions) and the conversation with a turn's tool rounds appended,
//! in each API's own shape.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{Value, json};

use crate::core::llm::{ChatMessage, LlmRequest};
use crate::core::tools::{ToolCall, ToolSpec};

/// `{"type": "function", "function": {name, description, parameters}}` each.
pub struct Tools<'a>(pub &'a [ToolSpec]);

impl Tools<'_> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for Tools<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for tool in self.0 {
            seq.serialize_element(&json!({ "type": "function", "function": tool }))?;
        }
        seq.end()
    }
}

/// Which API's shape the tool rounds take.
#[derive(Clone, Copy)]
pub enum Dialect {
    /// Arguments as an object; a result names its tool (`tool_name`).
    Ollama,
    /// Arguments as a JSON string; a result names its call (`tool_call_id`).
    OpenAi,
}

/// The request's messages, then each tool round: the assistant's calls and
/// one `tool` message per result. Written straight from the request; the
/// messages' images only for a model that sees (the last field), in the
/// API's shape: Ollama's `images` (base64) beside the content, OpenAI's
/// content parts (`text`, then an `image_url` with a data URL each).
pub struct Messages<'a>(pub &'a LlmRequest, pub Dialect, pub bool);

/// One message with its images, in `dialect`'s shape.
struct Seen<'a>(&'a ChatMessage, Dialect);

impl Serialize for Seen<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        let Seen(m, dialect) = self;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let value = match dialect {
            Dialect::Ollama => json!({
                "role": m.role,
                "content": m.content,
                "images": m.images.iter().map(|i| encode(&i.bytes)).collect::<Vec<_>>(),
            }),
            Dialect::OpenAi => {
                let mut parts = vec![json!({ "type": "text", "text": m.content })];
                parts.extend(m.images.iter().map(|i| {
                    json!({
                        "type": "image_url",
                        "image_url": { "url": format!("data:{};base64,{}", i.mime, encode(&i.bytes)) }
                    })
                }));
                json!({ "role": m.role, "content": parts })
            }
        };
        value.serialize(s)
    }
}

/// The id a call goes by: the provider's, or one made from its position.
fn call_id(call: &ToolCall, round: usize, i: usize) -> String {
    call.id
        .clone()
        .unwrap_or_else(|| format!("call_{round}_{i}"))
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Messages(request, dialect, sees) = self;
        let mut seq = s.serialize_seq(None)?;
        for m in &request.messages {
            if *sees && !m.images.is_empty() {
                seq.serialize_element(&Seen(m, *dialect))?;
            } else {
                seq.serialize_element(m)?;
            }
        }
        for (round, exchange) in request.exchanges.iter().enumerate() {
            let calls: Vec<Value> = exchange
                .calls
                .iter()
                .enumerate()
                .map(|(i, c)| match dialect {
                    Dialect::Ollama => json!({
                        "function": { "name": c.name, "arguments": c.arguments }
                    }),
                    Dialect::OpenAi => json!({
                        "id": call_id(c, round, i),
                        "type": "function",
                        "function": { "name": c.name, "arguments": c.arguments.to_string() }
                    }),
                })
                .collect();
            seq.serialize_element(&json!({
                "role": "assistant",
                "content": exchange.text,
                "tool_calls": calls,
            }))?;
            for (i, (call, result)) in exchange.calls.iter().zip(&exchange.results).enumerate() {
                let message = match dialect {
                    Dialect::Ollama => json!({
                        "role": "tool", "tool_name": call.name, "content": result.text
                    }),
                    Dialect::OpenAi => json!({
                        "role": "tool", "tool_call_id": call_id(call, round, i),
                        "content": result.text
                    }),
                };
                seq.serialize_element(&message)?;
            }
        }
        seq.end()
    }
}

/// Arguments as a provider sent them: an object, or a string holding one
/// (an unreadable string is passed on as it is, for the tool to refuse).
pub fn arguments(value: Value) -> Value {
    match value {
        Value::String(text) if text.trim().is_empty() => json!({}),
        Value::String(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
        Value::Null => json!({}),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::message::Role;
    use crate::core::tools::{ToolExchange, ToolResult};

    fn request() -> LlmRequest {
        let mut r = LlmRequest::new(vec![ChatMessage::new(Role::User, "time?")], 64);
        r.exchanges.push(ToolExchange {
            text: String::new(),
            calls: vec![ToolCall {
                id: None,
                name: "get_current_time".into(),
                arguments: json!({ "timezone": "UTC" }),
            }],
            results: vec![ToolResult {
                text: "12:00".into(),
                failed: false,
            }],
        });
        r
    }

    fn with_photo() -> LlmRequest {
        let mut m = ChatMessage::new(Role::User, "[photo, image/png]\nwhat is it?");
        m.images.push(crate::core::llm::Image {
            mime: "image/png".into(),
            bytes: std::sync::Arc::from(&b"\x89PNG"[..]),
        });
        LlmRequest::new(vec![m], 64)
    }

    #[test]
    fn images_go_in_each_apis_shape_to_a_model_that_sees_and_not_otherwise() {
        let ollama = serde_json::to_value(Messages(&with_photo(), Dialect::Ollama, true)).unwrap();
        assert_eq!(ollama[0]["images"], json!(["iVBORw=="]));
        assert_eq!(ollama[0]["content"], "[photo, image/png]\nwhat is it?");
        let openai = serde_json::to_value(Messages(&with_photo(), Dialect::OpenAi, true)).unwrap();
        assert_eq!(
            openai[0]["content"],
            json!([
                { "type": "text", "text": "[photo, image/png]\nwhat is it?" },
                { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw==" } }
            ])
        );
        for dialect in [Dialect::Ollama, Dialect::OpenAi] {
            let blind = serde_json::to_value(Messages(&with_photo(), dialect, false)).unwrap();
            assert_eq!(
                blind[0],
                json!({ "role": "user", "content": "[photo, image/png]\nwhat is it?" })
            );
        }
    }

    #[test]
    fn ollama_rounds_carry_objects_and_tool_names() {
        let v = serde_json::to_value(Messages(&request(), Dialect::Ollama, false)).unwrap();
        assert_eq!(
            v[1]["tool_calls"][0]["function"]["arguments"]["timezone"],
            "UTC"
        );
        assert_eq!(
            v[2],
            json!({"role": "tool", "tool_name": "get_current_time", "content": "12:00"})
        );
    }

    #[test]
    fn openai_rounds_carry_strings_and_call_ids() {
        let v = serde_json::to_value(Messages(&request(), Dialect::OpenAi, false)).unwrap();
        let call = &v[1]["tool_calls"][0];
        assert_eq!(call["function"]["arguments"], r#"{"timezone":"UTC"}"#);
        assert_eq!(v[2]["tool_call_id"], call["id"]);
    }

    #[test]
    fn arguments_are_read_from_either_form() {
        assert_eq!(arguments(json!("{\"a\":1}")), json!({"a": 1}));
        assert_eq!(arguments(json!({"a": 1})), json!({"a": 1}));
        assert_eq!(arguments(json!("")), json!({}));
        assert_eq!(arguments(json!("not json")), json!("not json"));
    }
}
