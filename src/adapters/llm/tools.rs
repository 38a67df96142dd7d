//! Native tool calling on the wire, for the providers that have it: the
//! `tools` array (the same for Ollama's `/api/chat` and OpenAI's chat
//! completions) and the conversation with a turn's tool rounds appended,
//! in each API's own shape.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{Value, json};

use crate::core::llm::LlmRequest;
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
/// one `tool` message per result. Written straight from the request.
pub struct Messages<'a>(pub &'a LlmRequest, pub Dialect);

/// The id a call goes by: the provider's, or one made from its position.
fn call_id(call: &ToolCall, round: usize, i: usize) -> String {
    call.id
        .clone()
        .unwrap_or_else(|| format!("call_{round}_{i}"))
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Messages(request, dialect) = self;
        let mut seq = s.serialize_seq(None)?;
        for m in &request.messages {
            seq.serialize_element(m)?;
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
    use crate::core::llm::ChatMessage;
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

    #[test]
    fn ollama_rounds_carry_objects_and_tool_names() {
        let v = serde_json::to_value(Messages(&request(), Dialect::Ollama)).unwrap();
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
        let v = serde_json::to_value(Messages(&request(), Dialect::OpenAi)).unwrap();
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
