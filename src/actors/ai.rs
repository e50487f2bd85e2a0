//! The AI jobs: `transcription.requested` and `translation.requested`, each run
//! in its own actor under the AI [`TaskSupervisor`](crate::supervisors::tasks).
//!
//! ```text
//! transcription.requested → fetch → audio → chunks → transcribe each → stitch
//!     → captions/{lang}.vtt|.srt stored → captioning.complete (each language)
//!     → transcription.complete {media_id, transcription, language, segments,
//!                               duration, timings, captions}
//! translation.requested   → translate (segments kept apart, timing kept)
//!     → translation.complete {original_text, translated_text, from_language,
//!                             to_language, segments?}
//! a provider keeps failing → *.failed {reason} (+ dead letter); retried by the
//!                            bus first when the failure may pass (429, 5xx, timeouts)
//! the actor panics        → counted, and the bus delivers the job again
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::ai::anthropic::Anthropic;
use crate::ai::audio::{self, Format};
use crate::ai::captions::{self, CueRules, Segment};
use crate::ai::openai::OpenAi;
use crate::ai::translate::{self, Chat};
use crate::ai::{AiError, Meter, Retry};
use crate::config::{AiConfig, Config};
use crate::jobs::{Job, JobHandler, Outcome};
use crate::media::source::Fetcher;
use crate::media::storage::Storage;
use crate::media::{WorkDir, safe_id};
use crate::metrics::Metrics;
use crate::supervisors::tasks::Tasks;

/// The node's AI work: providers, media access, and the task supervisor's handle.
pub struct AiService {
    config: AiConfig,
    ffmpeg: String,
    ffprobe: String,
    fetcher: Fetcher,
    storage: Storage,
    work_root: PathBuf,
    format: Format,
    openai: Option<OpenAi>,
    anthropic: Option<Anthropic>,
    meter: Meter,
    retry: Retry,
    pub tasks: Tasks<Outcome>,
}

impl AiService {
    /// The AI service `config` describes; `None` when no provider is configured.
    pub fn from_config(
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> Result<Option<AiService>, AiError> {
        let ai = &config.ai;
        if !ai.openai_on() && !ai.anthropic_on() {
            return Ok(None);
        }
        let timeout = Duration::from_secs(ai.timeout_s.max(1));
        let openai = ai
            .openai_on()
            .then(|| OpenAi::new(&ai.openai, timeout))
            .transpose()?;
        let anthropic = ai
            .anthropic_on()
            .then(|| Anthropic::new(&ai.anthropic, timeout))
            .transpose()?;
        let format = Format::parse(&ai.audio_format).ok_or_else(|| {
            AiError::Input(format!(
                "ai.audio_format: {:?} is not mp3, ogg, flac or wav",
                ai.audio_format
            ))
        })?;
        let storage = Storage::from_config(&config.storage, &config.server.data_dir)?;
        let work_root = if config.media.work_dir.is_empty() {
            config.server.data_dir.join("ai-work")
        } else {
            PathBuf::from(&config.media.work_dir).join("ai")
        };
        // What jobs of an earlier run left behind (the node died mid-job).
        if let Ok(entries) = std::fs::read_dir(&work_root) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        Ok(Some(AiService {
            config: ai.clone(),
            ffmpeg: config.media.ffmpeg.clone(),
            ffprobe: config.media.ffprobe.clone(),
            fetcher: Fetcher::new(&config.media)?,
            storage,
            work_root,
            format,
            openai,
            anthropic,
            meter: Meter { metrics },
            retry: Retry {
                attempts: ai.max_attempts.max(1),
                initial: Duration::from_millis(ai.retry_initial_ms),
                max: Duration::from_millis(ai.retry_max_ms),
                retry_after_max: Duration::from_secs(ai.retry_after_max_s),
            },
            tasks: Tasks::default(),
        }))
    }

    /// The providers configured (for the log and `/ready`).
    pub fn providers(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.openai.is_some() {
            out.push("openai");
        }
        if self.anthropic.is_some() {
            out.push("anthropic");
        }
        out
    }

    /// The chat model for a translation: the one named, or the configured default.
    fn chat(&self, name: Option<&str>) -> Result<Chat, AiError> {
        let name = name.unwrap_or(&self.config.translation_provider);
        match name {
            "openai" => self.openai.clone().map(Chat::OpenAi),
            "anthropic" => self.anthropic.clone().map(Chat::Anthropic),
            other => {
                return Err(AiError::Input(format!(
                    "provider: {other:?} is not openai or anthropic"
                )));
            }
        }
        .ok_or_else(|| AiError::NotConfigured(format!("{name} is not configured on this node")))
    }

    fn rules(&self) -> CueRules {
        CueRules {
            max_line_chars: self.config.caption_max_line_chars,
            max_lines: self.config.caption_max_lines,
            max_cue_s: self.config.caption_max_cue_s,
            min_cue_s: self.config.caption_min_cue_s,
        }
    }

    /// Run `job` through `work` in its own actor.
    async fn run_task<F, Fut>(self: &Arc<Self>, job: Job, work: F) -> Outcome
    where
        F: FnOnce(Arc<AiService>, Job) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Map<String, Value>, AiError>> + Send + 'static,
    {
        let service = self.clone();
        let task = Box::pin(async move {
            match work(service, job).await {
                Ok(payload) => Outcome::Done(payload),
                Err(e) => failed(e),
            }
        });
        self.tasks.run(task).await.unwrap_or(Outcome::Failed {
            reason: "AI job actor crashed".into(),
            retry: true,
        })
    }

    /// A transcription job, start to end.
    async fn transcribe(self: Arc<Self>, job: Job) -> Result<Map<String, Value>, AiError> {
        let p = &job.event.payload;
        let media_id =
            id(p, "media_id").ok_or_else(|| AiError::Input("media_id is required".into()))?;
        let file_path = p
            .get("file_path")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| AiError::Input("file_path is required".into()))?;
        let hint = text(p, "language");
        let openai = self.openai.clone().ok_or_else(|| {
            AiError::NotConfigured(
                "transcription needs ai.openai (an API key or a base_url)".into(),
            )
        })?;
        let safe = safe_id(&media_id);
        if safe.is_empty() {
            return Err(AiError::Input("media_id is empty".into()));
        }
        let dir = self
            .work_root
            .join(format!("{safe}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| AiError::Input(format!("{}: {e}", dir.display())))?;
        let _cleanup = WorkDir(dir.clone());

        let input = self.fetcher.fetch(&self.storage, file_path, &dir).await?;
        let audio_file = dir.join(format!("audio.{}", self.format.extension()));
        let duration = audio::extract(
            &self.ffmpeg,
            &self.ffprobe,
            &input,
            &audio_file,
            self.format,
        )
        .await?;
        let upload_max = (self.config.openai.upload_max_mb << 20) as f64;
        let max_s =
            (self.config.chunk_max_s as f64).min(upload_max / self.format.bytes_per_s() * 0.95);
        let chunks = if duration > max_s {
            let silences = audio::silences(
                &self.ffmpeg,
                &audio_file,
                self.config.silence_noise_db,
                self.config.silence_min_ms as f64 / 1000.0,
            )
            .await?;
            audio::plan(
                duration,
                &silences,
                max_s,
                self.config.silence_search_s as f64,
            )
        } else {
            vec![(0.0, duration)]
        };

        let mut segments = Vec::new();
        let mut texts = Vec::new();
        let mut language = hint.clone();
        let mut coarse = false;
        for (i, &(start, end)) in chunks.iter().enumerate() {
            let path = if chunks.len() == 1 {
                audio_file.clone()
            } else {
                audio::cut(
                    &self.ffmpeg,
                    &audio_file,
                    (start, end),
                    &dir,
                    i,
                    self.format,
                )
                .await?
            };
            let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if size as f64 > upload_max {
                return Err(AiError::Input(format!(
                    "an audio chunk of {size} bytes is above ai.openai.upload_max_mb"
                )));
            }
            // The text so far keeps names and style consistent across chunks.
            let prompt = tail(&texts.join(" "), 200);
            let t = self
                .meter
                .retrying(&self.retry, "openai", "transcribe", || {
                    openai.transcribe(&path, self.format.mime(), hint.as_deref(), Some(&prompt))
                })
                .await?;
            if language.is_none() {
                language = t.language.as_deref().map(language_code);
            }
            coarse |= t.coarse;
            if t.coarse {
                if !t.text.is_empty() {
                    segments.push(Segment {
                        start,
                        end,
                        text: t.text.clone(),
                    });
                }
            } else {
                segments.extend(t.segments.iter().map(|s| Segment {
                    start: (start + s.start).min(end),
                    end: (start + s.end).min(end),
                    text: s.text.clone(),
                }));
            }
            if !t.text.is_empty() {
                texts.push(t.text);
            }
        }
        let language = language.unwrap_or_else(|| "und".into());
        let user_id = id(p, "user_id");

        let mut caption_list = Vec::new();
        let wants_captions = p
            .get("captions")
            .and_then(Value::as_bool)
            .unwrap_or(self.config.captions);
        if wants_captions && !segments.is_empty() {
            let targets: Vec<String> = match p.get("caption_languages").and_then(Value::as_array) {
                Some(list) => list
                    .iter()
                    .filter_map(|l| l.as_str().map(str::to_string))
                    .collect(),
                None => self.config.caption_languages.clone(),
            };
            let made = self
                .caption(
                    &job,
                    &media_id,
                    user_id.as_deref(),
                    &language,
                    &segments,
                    None,
                    &dir,
                )
                .await?;
            caption_list.push(made);
            for target in targets.iter().filter(|t| **t != language) {
                let chat = self.chat(None)?;
                let originals: Vec<String> = segments.iter().map(|s| s.text.clone()).collect();
                let translated = translate::translate(
                    &chat,
                    &self.meter,
                    &self.retry,
                    &originals,
                    Some(&language),
                    target,
                    self.config.translation_batch,
                    self.config.translation_batch_chars,
                )
                .await?;
                let timed: Vec<Segment> = segments
                    .iter()
                    .zip(translated.texts)
                    .map(|(s, text)| Segment { text, ..s.clone() })
                    .collect();
                let made = self
                    .caption(
                        &job,
                        &media_id,
                        user_id.as_deref(),
                        target,
                        &timed,
                        Some(&language),
                        &dir,
                    )
                    .await?;
                caption_list.push(made);
            }
        }

        let mut out = Map::new();
        out.insert(
            "media_id".into(),
            p.get("media_id").cloned().unwrap_or(json!(media_id)),
        );
        if let Some(u) = p.get("user_id") {
            out.insert("user_id".into(), u.clone());
        }
        out.insert("transcription".into(), json!(texts.join(" ")));
        out.insert("language".into(), json!(language));
        out.insert("segments".into(), json!(segments));
        out.insert(
            "duration".into(),
            json!((duration * 1000.0).round() / 1000.0),
        );
        out.insert(
            "timings".into(),
            json!(if coarse { "coarse" } else { "segment" }),
        );
        out.insert("chunks".into(), json!(chunks.len()));
        out.insert("model".into(), json!(openai.transcription_model));
        if !caption_list.is_empty() {
            out.insert("captions".into(), Value::Array(caption_list));
        }
        Ok(out)
    }

    /// Write, store and announce the captions of `segments` in `language`.
    #[allow(clippy::too_many_arguments)]
    async fn caption(
        &self,
        job: &Job,
        media_id: &str,
        user_id: Option<&str>,
        language: &str,
        segments: &[Segment],
        translated_from: Option<&str>,
        dir: &Path,
    ) -> Result<Value, AiError> {
        let cues = captions::cues(segments, &self.rules())
            .map_err(|e| AiError::Mismatch(format!("captions: {e}")))?;
        let lang = safe_id(language);
        let mut urls = Map::new();
        for (ext, body) in [("vtt", captions::vtt(&cues)), ("srt", captions::srt(&cues))] {
            let file = dir.join(format!("{lang}.{ext}"));
            std::fs::write(&file, body)
                .map_err(|e| AiError::Input(format!("{}: {e}", file.display())))?;
            let key = format!("media/{}/captions/{lang}.{ext}", safe_id(media_id));
            self.storage.upload_file(&file, &key).await?;
            urls.insert(format!("{ext}_url"), json!(self.storage.url(&key)));
        }
        let mut event = Map::new();
        event.insert("media_id".into(), json!(media_id));
        if let Some(u) = user_id {
            event.insert("user_id".into(), json!(u));
        }
        event.insert("language".into(), json!(language));
        event.extend(urls);
        event.insert("cues".into(), json!(cues.len()));
        if let Some(from) = translated_from {
            event.insert("translated_from".into(), json!(from));
        }
        job.outlet
            .emit(crate::bus::events::CAPTIONING_COMPLETE, event.clone());
        Ok(Value::Object(event))
    }

    /// A translation job.
    async fn translate(self: Arc<Self>, job: Job) -> Result<Map<String, Value>, AiError> {
        let p = &job.event.payload;
        let to = text(p, "to_language")
            .ok_or_else(|| AiError::Input("to_language is required".into()))?;
        let from = text(p, "from_language");
        let chat = self.chat(text(p, "provider").as_deref())?;
        let segments: Option<Vec<Segment>> = match p.get("segments") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| AiError::Input(format!("segments: {e}")))?,
            ),
        };
        let original = match (&segments, text(p, "text")) {
            (_, Some(t)) => t,
            (Some(s), None) => s
                .iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            (None, None) => return Err(AiError::Input("text or segments is required".into())),
        };
        let texts: Vec<String> = match &segments {
            Some(s) => s.iter().map(|s| s.text.clone()).collect(),
            None => vec![original.clone()],
        };
        let translated = translate::translate(
            &chat,
            &self.meter,
            &self.retry,
            &texts,
            from.as_deref(),
            &to,
            self.config.translation_batch,
            self.config.translation_batch_chars,
        )
        .await?;
        let mut out = Map::new();
        for key in ["user_id", "media_id", "request_id"] {
            if let Some(v) = p.get(key) {
                out.insert(key.into(), v.clone());
            }
        }
        out.insert("original_text".into(), json!(original));
        out.insert("translated_text".into(), json!(translated.texts.join(" ")));
        out.insert(
            "from_language".into(),
            json!(from.unwrap_or_else(|| "auto".into())),
        );
        out.insert("to_language".into(), json!(to));
        if let Some(segments) = segments {
            let timed: Vec<Segment> = segments
                .into_iter()
                .zip(translated.texts)
                .map(|(s, text)| Segment { text, ..s })
                .collect();
            out.insert("segments".into(), json!(timed));
        }
        out.insert("provider".into(), json!(chat.provider()));
        out.insert("model".into(), json!(chat.model()));
        out.insert(
            "usage".into(),
            json!({"input_tokens": translated.usage.input, "output_tokens": translated.usage.output,
                "requests": translated.requests}),
        );
        Ok(out)
    }
}

/// The job's end from an error: retried by the bus when it may pass.
fn failed(e: AiError) -> Outcome {
    let retry = match &e {
        AiError::Transient { .. } => true,
        AiError::Media(m) => m.retryable(),
        _ => false,
    };
    Outcome::Failed {
        reason: e.to_string(),
        retry,
    }
}

/// A JSON id (string or number) as text.
fn id(p: &Map<String, Value>, key: &str) -> Option<String> {
    match p.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text(p: &Map<String, Value>, key: &str) -> Option<String> {
    p.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The last `n` characters of `s`, from a word start.
fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count <= n {
        return s.to_string();
    }
    let cut: String = s.chars().skip(count - n).collect();
    match cut.find(' ') {
        Some(i) => cut[i + 1..].to_string(),
        None => cut,
    }
}

/// Whisper names languages in `verbose_json` ("english"); captions and
/// translations want ISO 639-1 codes. Names not listed are kept as they are.
pub fn language_code(name: &str) -> String {
    const CODES: &[(&str, &str)] = &[
        ("english", "en"),
        ("chinese", "zh"),
        ("german", "de"),
        ("spanish", "es"),
        ("russian", "ru"),
        ("korean", "ko"),
        ("french", "fr"),
        ("japanese", "ja"),
        ("portuguese", "pt"),
        ("turkish", "tr"),
        ("polish", "pl"),
        ("catalan", "ca"),
        ("dutch", "nl"),
        ("arabic", "ar"),
        ("swedish", "sv"),
        ("italian", "it"),
        ("indonesian", "id"),
        ("hindi", "hi"),
        ("finnish", "fi"),
        ("vietnamese", "vi"),
        ("hebrew", "he"),
        ("ukrainian", "uk"),
        ("greek", "el"),
        ("malay", "ms"),
        ("czech", "cs"),
        ("romanian", "ro"),
        ("danish", "da"),
        ("hungarian", "hu"),
        ("tamil", "ta"),
        ("norwegian", "no"),
        ("thai", "th"),
        ("urdu", "ur"),
        ("croatian", "hr"),
        ("bulgarian", "bg"),
        ("lithuanian", "lt"),
        ("latin", "la"),
        ("maori", "mi"),
        ("malayalam", "ml"),
        ("welsh", "cy"),
        ("slovak", "sk"),
        ("telugu", "te"),
        ("persian", "fa"),
        ("latvian", "lv"),
        ("bengali", "bn"),
        ("serbian", "sr"),
        ("azerbaijani", "az"),
        ("slovenian", "sl"),
        ("kannada", "kn"),
        ("estonian", "et"),
        ("macedonian", "mk"),
        ("breton", "br"),
        ("basque", "eu"),
        ("icelandic", "is"),
        ("armenian", "hy"),
        ("nepali", "ne"),
        ("mongolian", "mn"),
        ("bosnian", "bs"),
        ("kazakh", "kk"),
        ("albanian", "sq"),
        ("swahili", "sw"),
        ("galician", "gl"),
        ("marathi", "mr"),
        ("punjabi", "pa"),
        ("sinhala", "si"),
        ("khmer", "km"),
        ("shona", "sn"),
        ("yoruba", "yo"),
        ("somali", "so"),
        ("afrikaans", "af"),
        ("occitan", "oc"),
        ("georgian", "ka"),
        ("belarusian", "be"),
        ("tajik", "tg"),
        ("sindhi", "sd"),
        ("gujarati", "gu"),
        ("amharic", "am"),
        ("yiddish", "yi"),
        ("lao", "lo"),
        ("uzbek", "uz"),
        ("faroese", "fo"),
        ("haitian creole", "ht"),
        ("pashto", "ps"),
        ("turkmen", "tk"),
        ("nynorsk", "nn"),
        ("maltese", "mt"),
        ("sanskrit", "sa"),
        ("luxembourgish", "lb"),
        ("myanmar", "my"),
        ("tibetan", "bo"),
        ("tagalog", "tl"),
        ("malagasy", "mg"),
        ("assamese", "as"),
        ("tatar", "tt"),
        ("hawaiian", "haw"),
        ("lingala", "ln"),
        ("hausa", "ha"),
        ("bashkir", "ba"),
        ("javanese", "jw"),
        ("sundanese", "su"),
        ("cantonese", "yue"),
    ];
    let lower = name.trim().to_ascii_lowercase();
    CODES
        .iter()
        .find(|(n, _)| *n == lower)
        .map_or(lower.clone(), |(_, code)| code.to_string())
}

/// The `transcription.requested` handler.
pub struct TranscriptionJobs(pub Arc<AiService>);

#[async_trait]
impl JobHandler for TranscriptionJobs {
    fn capacity(&self) -> Option<usize> {
        Some(self.0.config.concurrency.max(1))
    }

    async fn run(&self, job: Job) -> Outcome {
        self.0.run_task(job, AiService::transcribe).await
    }
}

/// The `translation.requested` handler.
pub struct TranslationJobs(pub Arc<AiService>);

#[async_trait]
impl JobHandler for TranslationJobs {
    fn capacity(&self) -> Option<usize> {
        Some(self.0.config.concurrency.max(1))
    }

    async fn run(&self, job: Job) -> Outcome {
        self.0.run_task(job, AiService::translate).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whisper_language_names_become_codes() {
        assert_eq!(language_code("english"), "en");
        assert_eq!(language_code("French"), "fr");
        assert_eq!(language_code("fr"), "fr");
        assert_eq!(language_code("klingon"), "klingon");
    }

    #[test]
    fn the_prompt_is_the_end_of_the_text_from_a_word_start() {
        assert_eq!(tail("short", 200), "short");
        assert_eq!(tail("one two three four", 9), "four");
    }
}
