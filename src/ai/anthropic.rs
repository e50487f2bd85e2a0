//! Anthropic's Messages API: `POST /v1/messages` with `x-api-key` and
//! `anthropic-version`, `max_tokens` required.

use std::time::Duration;

use serde_json::json;

use super::openai::read;
use super::{AiError, Usage, from_http, http_client};
use crate::config::AnthropicConfig;

#[derive(Clone)]
pub struct Anthropic {
    http: reqwest::Client,
    base: String,
    key: String,
    version: String,
    pub model: String,
    max_tokens: u32,
}

impl Anthropic {
    pub fn new(c: &AnthropicConfig, timeout: Duration) -> Result<Anthropic, AiError> {
        let http = http_client(timeout)?;
        Ok(Anthropic {
            http,
            base: c.base_url.trim_end_matches('/').to_string(),
            key: c.api_key.clone(),
            version: c.version.clone(),
            model: c.model.clone(),
            max_tokens: c.max_tokens,
        })
    }

    /// One message exchange; the reply's text and token usage.
    pub async fn message(&self, system: &str, user: &str) -> Result<(String, Usage), AiError> {
        let request = json!({
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "system": system,
            "messages": [{"role": "user", "content": user}],
        });
        let response = self
            .http
            .post(format!("{}/v1/messages", self.base))
            .header("x-api-key", &self.key)
            .header("anthropic-version", &self.version)
            .json(&request)
            .send()
            .await
            .map_err(|e| from_http("anthropic", &e))?;
        let body = read(response, "anthropic").await?;
        if body["stop_reason"] == "max_tokens" {
            return Err(AiError::Truncated(
                "anthropic: the reply was cut at max_tokens".into(),
            ));
        }
        let text: String = body["content"]
            .as_array()
            .map(|blocks| {
                blocks
                    .iter()
                    .filter(|b| b["type"] == "text")
                    .filter_map(|b| b["text"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        if text.is_empty() {
            return Err(AiError::Mismatch(format!(
                "anthropic: no text in the reply: {body}"
            )));
        }
        let usage = Usage {
            input: body["usage"]["input_tokens"].as_u64().unwrap_or(0),
            output: body["usage"]["output_tokens"].as_u64().unwrap_or(0),
        };
        Ok((text, usage))
    }
}
