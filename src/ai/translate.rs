//! Translation of numbered texts through a chat model, keeping each one apart.
//!
//! The texts go in batches as `{"segments": [{"id", "text"}]}` and must come
//! back as the same ids in the same order, one translation each: a reply that
//! drops, merges, adds or renames one is asked again (then the job fails) and
//! never published. Timing is never asked of the model: the caller keeps each
//! segment's `start`/`end` and puts the translated text in it. A reply cut at the
//! token limit is asked again as two halves.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use serde_json::{Value, json};

use super::anthropic::Anthropic;
use super::openai::OpenAi;
use super::{AiError, Meter, Retry, Usage};

/// A chat model that answers with JSON.
#[derive(Clone)]
pub enum Chat {
    OpenAi(OpenAi),
    Anthropic(Anthropic),
}

impl Chat {
    pub fn provider(&self) -> &'static str {
        match self {
            Chat::OpenAi(_) => "openai",
            Chat::Anthropic(_) => "anthropic",
        }
    }

    pub fn model(&self) -> &str {
        match self {
            Chat::OpenAi(o) => &o.chat_model,
            Chat::Anthropic(a) => &a.model,
        }
    }

    async fn ask(&self, system: &str, user: &str) -> Result<(String, Usage), AiError> {
        match self {
            Chat::OpenAi(o) => o.chat_json(system, user).await,
            Chat::Anthropic(a) => a.message(system, user).await,
        }
    }
}

/// What one translation took.
#[derive(Debug, Default)]
pub struct Translated {
    pub texts: Vec<String>,
    pub usage: Usage,
    pub requests: u32,
}

/// The instructions for one batch.
pub fn system_prompt(from: Option<&str>, to: &str) -> String {
    let from = from.map_or_else(
        || "the language it is in".to_string(),
        |f| format!("\"{f}\""),
    );
    format!(
        "You translate subtitles and messages. Translate the \"text\" of every item from \
         {from} into \"{to}\" (a language name or an ISO 639-1 code). Reply with only a JSON \
         object {{\"segments\": [{{\"id\": <the item's id>, \"text\": \"<its translation>\"}}]}} \
         holding exactly one item per input item, with the same ids in the same order. Never \
         merge, split, drop or add items, even when a sentence runs across items; keep each \
         translation within its own item. Do not translate the ids. Keep names, numbers and \
         markup as they are."
    )
}

/// Translate `texts` (in batches of at most `batch` texts and `batch_chars`
/// characters) from `from` (or whatever they are in) into `to`.
#[allow(clippy::too_many_arguments)]
pub async fn translate(
    chat: &Chat,
    meter: &Meter,
    retry: &Retry,
    texts: &[String],
    from: Option<&str>,
    to: &str,
    batch: usize,
    batch_chars: usize,
) -> Result<Translated, AiError> {
    let system = system_prompt(from, to);
    let mut out = Translated::default();
    let requests = AtomicU32::new(0);
    // Every answered request counts, a refused reply too: it was paid for.
    let (input, output) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut pending: Vec<std::ops::Range<usize>> = batches(texts, batch.max(1), batch_chars)
        .into_iter()
        .rev()
        .collect();
    while let Some(range) = pending.pop() {
        let items = &texts[range.clone()];
        let user = json!({"segments": items.iter().enumerate()
            .map(|(i, t)| json!({"id": range.start + i, "text": t})).collect::<Vec<_>>()})
        .to_string();
        let ids: Vec<usize> = range.clone().collect();
        let answer = meter
            .retrying(retry, chat.provider(), "translate", || async {
                requests.fetch_add(1, Ordering::Relaxed);
                let (reply, usage) = chat.ask(&system, &user).await?;
                meter.tokens(chat.provider(), usage);
                input.fetch_add(usage.input, Ordering::Relaxed);
                output.fetch_add(usage.output, Ordering::Relaxed);
                check(&reply, &ids)
            })
            .await;
        match answer {
            Ok(translated) => out.texts.extend(translated),
            // Too long for one reply: the two halves, first half first.
            Err(AiError::Truncated(_)) if range.len() > 1 => {
                let mid = range.start + range.len() / 2;
                pending.push(mid..range.end);
                pending.push(range.start..mid);
            }
            Err(e) => return Err(e),
        }
    }
    out.requests = requests.into_inner();
    out.usage = Usage {
        input: input.into_inner(),
        output: output.into_inner(),
    };
    Ok(out)
}

/// Split `texts` into runs of at most `max` items and `max_chars` characters
/// (a single longer text is a batch of its own).
fn batches(texts: &[String], max: usize, max_chars: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut chars) = (0, 0);
    for (i, t) in texts.iter().enumerate() {
        let len = t.chars().count();
        if i > start && (i - start >= max || chars + len > max_chars) {
            out.push(start..i);
            (start, chars) = (i, 0);
        }
        chars += len;
    }
    if start < texts.len() {
        out.push(start..texts.len());
    }
    out
}

/// The translations in `reply`, if it answers exactly `ids`, in order.
pub fn check(reply: &str, ids: &[usize]) -> Result<Vec<String>, AiError> {
    let json = extract_json(reply).ok_or_else(|| {
        AiError::Mismatch(format!(
            "the reply is not JSON: {}",
            reply.chars().take(120).collect::<String>()
        ))
    })?;
    let items = json
        .get("segments")
        .and_then(Value::as_array)
        .or_else(|| json.as_array())
        .ok_or_else(|| AiError::Mismatch("the reply has no \"segments\" list".into()))?;
    let got: Vec<Option<usize>> = items
        .iter()
        .map(|item| match &item["id"] {
            Value::Number(n) => n.as_u64().map(|n| n as usize),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .collect();
    if got.len() != ids.len() || got.iter().zip(ids).any(|(g, id)| *g != Some(*id)) {
        let missing: Vec<usize> = ids
            .iter()
            .filter(|id| !got.contains(&Some(**id)))
            .copied()
            .collect();
        return Err(AiError::Mismatch(format!(
            "the reply does not keep the segments: {} items for {}{}",
            got.len(),
            ids.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(", missing ids {missing:?}")
            }
        )));
    }
    items
        .iter()
        .map(|item| {
            item["text"]
                .as_str()
                .map(|t| t.trim().to_string())
                .ok_or_else(|| AiError::Mismatch(format!("item {} has no text", item["id"])))
        })
        .collect()
}

/// The JSON in a model's reply: the whole reply, or what is inside a code fence
/// or between the first `{`/`[` and the last `}`/`]`.
fn extract_json(reply: &str) -> Option<Value> {
    let trimmed = reply.trim();
    if let Ok(v) = serde_json::from_str(trimmed) {
        return Some(v);
    }
    let start = trimmed.find(['{', '['])?;
    let end = trimmed.rfind(['}', ']'])?;
    serde_json::from_str(trimmed.get(start..=end)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_must_keep_every_segment() {
        let ok = r#"{"segments": [{"id": 3, "text": " Bonjour "}, {"id": "4", "text": "Salut"}]}"#;
        assert_eq!(check(ok, &[3, 4]).unwrap(), vec!["Bonjour", "Salut"]);
        let fenced =
            "Here you go:\n```json\n{\"segments\": [{\"id\": 0, \"text\": \"Hola\"}]}\n```";
        assert_eq!(check(fenced, &[0]).unwrap(), vec!["Hola"]);
        let dropped = r#"{"segments": [{"id": 3, "text": "Bonjour et salut"}]}"#;
        let e = check(dropped, &[3, 4]).unwrap_err().to_string();
        assert!(e.contains("1 items for 2, missing ids [4]"), "{e}");
        let swapped = r#"{"segments": [{"id": 4, "text": "b"}, {"id": 3, "text": "a"}]}"#;
        assert!(check(swapped, &[3, 4]).is_err());
        assert!(check("Je ne peux pas", &[0]).is_err());
        let no_text = r#"{"segments": [{"id": 0}]}"#;
        assert!(check(no_text, &[0]).is_err());
    }

    #[test]
    fn batches_respect_count_and_size() {
        let texts: Vec<String> = ["a", "bb", "ccc", "dddd", "e"].map(String::from).to_vec();
        assert_eq!(batches(&texts, 2, 100), vec![0..2, 2..4, 4..5]);
        assert_eq!(batches(&texts, 10, 5), vec![0..2, 2..3, 3..5]);
        assert_eq!(batches(&texts[..1], 10, 0), vec![0..1]);
        assert!(batches(&[], 10, 10).is_empty());
    }
}
