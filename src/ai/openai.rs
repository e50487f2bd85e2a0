//! An OpenAI-compatible API: `POST /v1/audio/transcriptions` (multipart) and
//! `POST /v1/chat/completions`. The base URL is configurable, so local servers
//! speaking the same API (whisper.cpp's server, faster-whisper-server, vLLM,
//! llama.cpp, Ollama's `/v1`) work unchanged; the key is optional for them.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::captions::Segment;
use super::{AiError, Usage, classify, from_http, http_client};
use crate::config::OpenAiConfig;

/// What a transcription request gives back for one audio chunk.
#[derive(Debug, Clone)]
pub struct Transcript {
    pub text: String,
    /// As the server names it: `verbose_json` gives a name ("english"), some
    /// servers a code; `None` when it says nothing.
    pub language: Option<String>,
    /// Seconds from the start of the chunk.
    pub segments: Vec<Segment>,
    /// The server gave no segments (plain `json`): one segment spans the chunk.
    pub coarse: bool,
    pub duration: Option<f64>,
}

#[derive(Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    base: String,
    key: String,
    organization: String,
    pub transcription_model: String,
    pub chat_model: String,
    response_format: String,
}

impl OpenAi {
    pub fn new(c: &OpenAiConfig, timeout: Duration) -> Result<OpenAi, AiError> {
        let http = http_client(timeout)?;
        Ok(OpenAi {
            http,
            base: c.base_url.trim_end_matches('/').to_string(),
            key: c.api_key.clone(),
            organization: c.organization.clone(),
            transcription_model: c.transcription_model.clone(),
            chat_model: c.chat_model.clone(),
            response_format: c.response_format.clone(),
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.post(format!("{}{path}", self.base));
        if !self.key.is_empty() {
            r = r.bearer_auth(&self.key);
        }
        if !self.organization.is_empty() {
            r = r.header("OpenAI-Organization", &self.organization);
        }
        r
    }

    /// Transcribe the audio file `audio` (one chunk). `prompt`: the text before
    /// it, which keeps words and style consistent across chunks.
    pub async fn transcribe(
        &self,
        audio: &Path,
        mime: &'static str,
        language: Option<&str>,
        prompt: Option<&str>,
    ) -> Result<Transcript, AiError> {
        let bytes = tokio::fs::read(audio)
            .await
            .map_err(|e| AiError::Input(format!("{}: {e}", audio.display())))?;
        let name = audio
            .file_name()
            .map_or("audio".into(), |n| n.to_string_lossy().into_owned());
        let file = reqwest::multipart::Part::bytes(bytes)
            .file_name(name)
            .mime_str(mime)
            .map_err(|e| AiError::Permanent {
                reason: format!("openai: {e}"),
            })?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", self.transcription_model.clone())
            .text("response_format", self.response_format.clone())
            .text("temperature", "0");
        if self.response_format == "verbose_json" {
            form = form.text("timestamp_granularities[]", "segment");
        }
        if let Some(l) = language {
            form = form.text("language", l.to_string());
        }
        if let Some(p) = prompt.filter(|p| !p.is_empty()) {
            form = form.text("prompt", p.to_string());
        }
        let response = self
            .post("/v1/audio/transcriptions")
            .multipart(form)
            .send()
            .await
            .map_err(|e| from_http("openai", &e))?;
        let body = read(response, "openai").await?;
        parse_transcript(&body)
    }

    /// One chat completion asking for a JSON object; its text and token usage.
    pub async fn chat_json(&self, system: &str, user: &str) -> Result<(String, Usage), AiError> {
        let request = json!({
            "model": self.chat_model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
        });
        let response = self
            .post("/v1/chat/completions")
            .json(&request)
            .send()
            .await
            .map_err(|e| from_http("openai", &e))?;
        let body = read(response, "openai").await?;
        let choice = &body["choices"][0];
        if choice["finish_reason"] == "length" {
            return Err(AiError::Truncated(
                "openai: the reply was cut at the token limit".into(),
            ));
        }
        let text = choice["message"]["content"]
            .as_str()
            .ok_or_else(|| AiError::Mismatch(format!("openai: no message content in {body}")))?;
        let usage = Usage {
            input: body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output: body["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        };
        Ok((text.to_string(), usage))
    }
}

/// The JSON body of a successful answer, or the error it stands for.
pub(super) async fn read(response: reqwest::Response, provider: &str) -> Result<Value, AiError> {
    let status = response.status().as_u16();
    let retry_after = crate::notify::retry_after(response.headers());
    let text = response.text().await.map_err(|e| from_http(provider, &e))?;
    if (200..300).contains(&status) {
        return serde_json::from_str(&text).map_err(|e| {
            AiError::Mismatch(format!(
                "{provider}: the answer is not JSON ({e}): {}",
                text.chars().take(200).collect::<String>()
            ))
        });
    }
    Err(classify(provider, status, &text, retry_after))
}

/// A transcription answer: `verbose_json` (`text`, `language`, `duration`,
/// `segments[]`) or plain `json` (`text` only).
pub fn parse_transcript(body: &Value) -> Result<Transcript, AiError> {
    let text = body["text"]
        .as_str()
        .ok_or_else(|| AiError::Mismatch(format!("transcription: no text in {body}")))?
        .trim()
        .to_string();
    let segments: Vec<Segment> = body["segments"]
        .as_array()
        .map(|s| {
            s.iter()
                .filter_map(|s| {
                    Some(Segment {
                        start: s["start"].as_f64()?,
                        end: s["end"].as_f64()?,
                        text: s["text"].as_str()?.trim().to_string(),
                    })
                })
                .filter(|s| !s.text.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Ok(Transcript {
        coarse: body["segments"].as_array().is_none(),
        segments,
        language: body["language"].as_str().map(str::to_string),
        duration: body["duration"].as_f64(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbose_json_and_plain_json_are_read() {
        let verbose = json!({"task": "transcribe", "language": "english", "duration": 8.47,
            "text": "Hello there. General Kenobi.",
            "segments": [
                {"id": 0, "seek": 0, "start": 0.0, "end": 3.2, "text": " Hello there.",
                 "tokens": [50364, 2425], "temperature": 0.0, "avg_logprob": -0.2,
                 "compression_ratio": 0.8, "no_speech_prob": 0.01},
                {"id": 1, "seek": 0, "start": 3.2, "end": 8.4, "text": " General Kenobi.",
                 "tokens": [50524], "temperature": 0.0, "avg_logprob": -0.3,
                 "compression_ratio": 0.8, "no_speech_prob": 0.02}]});
        let t = parse_transcript(&verbose).unwrap();
        assert_eq!(t.language.as_deref(), Some("english"));
        assert_eq!(t.segments.len(), 2);
        assert_eq!(t.segments[1].text, "General Kenobi.");
        assert!(!t.coarse);
        let plain = parse_transcript(&json!({"text": "Hello."})).unwrap();
        assert!(plain.coarse && plain.segments.is_empty());
        assert!(parse_transcript(&json!({"error": "x"})).is_err());
    }
}
