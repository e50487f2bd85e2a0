//! Bus events: the envelope every event travels in and the payload schema of every
//! subject (docs/events.md is the same contract, for backend developers).
//!
//! ```text
//! {"event_id": "0190...", "event_type": "media.uploaded", "timestamp": "2025-01-15T10:30:00Z",
//!  "source": "php-backend", "payload": {"media_id": "...", ...}}
//! ```
//!
//! The envelope is the original Armoricore's, and payloads accept the original's fields
//! as they are. Validation reads the payload without changing it: what is forwarded is
//! the map that came in, unknown fields and numeric ids included.

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// The subjects, as `event_type` names them (on the wire: after `bus.subject_prefix`).
pub const MEDIA_UPLOADED: &str = "media.uploaded";
pub const MEDIA_READY: &str = "media.ready";
pub const MEDIA_PROGRESS: &str = "media.progress";
pub const MEDIA_FAILED: &str = "media.failed";
pub const MEDIA_CANCEL: &str = "media.cancel";
pub const NOTIFICATION_REQUESTED: &str = "notification.requested";
pub const NOTIFICATION_SENT: &str = "notification.sent";
pub const NOTIFICATION_FAILED: &str = "notification.failed";
pub const NOTIFICATION_TOKEN_INVALID: &str = "notification.token_invalid";
pub const TRANSCRIPTION_REQUESTED: &str = "transcription.requested";
pub const TRANSCRIPTION_COMPLETE: &str = "transcription.complete";
pub const TRANSCRIPTION_FAILED: &str = "transcription.failed";
pub const TRANSLATION_REQUESTED: &str = "translation.requested";
pub const TRANSLATION_COMPLETE: &str = "translation.complete";
pub const TRANSLATION_FAILED: &str = "translation.failed";
pub const CAPTIONING_COMPLETE: &str = "captioning.complete";
pub const CHAT_MESSAGE: &str = "chat.message";
pub const PRESENCE_UPDATE: &str = "presence.update";
pub const MODERATION_FLAGGED: &str = "moderation.flagged";
pub const CALL_STARTED: &str = "call.started";
pub const CALL_ENDED: &str = "call.ended";
pub const CALL_PARTICIPANT_JOINED: &str = "call.participant_joined";
pub const CALL_PARTICIPANT_LEFT: &str = "call.participant_left";

/// Work subjects: queued (JetStream), acknowledged when the job ends, redelivered until then.
pub const WORK_SUBJECTS: [&str; 4] = [
    MEDIA_UPLOADED,
    NOTIFICATION_REQUESTED,
    TRANSCRIPTION_REQUESTED,
    TRANSLATION_REQUESTED,
];

/// Results the bridge turns into WebSocket pushes (`user:{id}`, `media:{id}`).
pub const RESULT_SUBJECTS: &[&str] = &[
    MEDIA_READY,
    MEDIA_PROGRESS,
    MEDIA_FAILED,
    NOTIFICATION_SENT,
    TRANSCRIPTION_COMPLETE,
    TRANSLATION_COMPLETE,
    CAPTIONING_COMPLETE,
];

/// The subject that reports the failure of a job asked for on `work_subject`.
pub fn failed_subject(work_subject: &str) -> Option<&'static str> {
    match work_subject {
        MEDIA_UPLOADED => Some(MEDIA_FAILED),
        NOTIFICATION_REQUESTED => Some(NOTIFICATION_FAILED),
        TRANSCRIPTION_REQUESTED => Some(TRANSCRIPTION_FAILED),
        TRANSLATION_REQUESTED => Some(TRANSLATION_FAILED),
        _ => None,
    }
}

/// Whether `subject` has a schema here (an unknown one carries any object payload).
pub fn is_known(subject: &str) -> bool {
    schema(subject).is_some()
}

/// One event as it travels on the bus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// Unique per event: handlers use it to skip a redelivery they already handled.
    pub event_id: String,
    /// The subject, without the configured prefix.
    pub event_type: String,
    /// RFC 3339, as sent.
    pub timestamp: String,
    /// Who published it ("unknown" when the publisher did not say).
    pub source: String,
    pub payload: Map<String, Value>,
}

impl Envelope {
    /// A new event: `event_id` a UUID v7 (time-ordered), `timestamp` now.
    pub fn new(event_type: &str, source: &str, payload: Map<String, Value>) -> Envelope {
        Envelope {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type: event_type.to_string(),
            timestamp: now(),
            source: source.to_string(),
            payload,
        }
    }

    /// The event of a typed payload, checked like [`build`].
    pub fn from_payload<T: Payload>(source: &str, payload: &T) -> Result<Envelope, Invalid> {
        match serde_json::to_value(payload) {
            Ok(Value::Object(map)) => build(T::SUBJECT, source, map),
            _ => Err(Invalid::new("payload: not a JSON object")),
        }
    }

    /// The JSON body to publish.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a JSON map always serializes"))
    }

    /// The payload as `T` (refused with the same reason as [`parse`] gives).
    pub fn payload_as<T: Payload>(&self) -> Result<T, Invalid> {
        serde_path_to_error::deserialize(&self.payload).map_err(|e| path_error(Some("payload"), e))
    }
}

/// Why an event was refused (goes to the dead-letter subject). Display = the reason.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct Invalid {
    pub reason: String,
}

impl Invalid {
    /// A refusal for `reason`.
    pub fn new(reason: impl Into<String>) -> Invalid {
        Invalid {
            reason: reason.into(),
        }
    }
}

/// Parse and validate an event that arrived on `subject` (already stripped of any
/// configured prefix). The reason of a refusal names the field, e.g.
/// `payload.file_size: invalid type: string "big", expected u64`.
pub fn parse(subject: &str, body: &[u8]) -> Result<Envelope, Invalid> {
    /// The envelope as sent; other fields are ignored.
    #[derive(Deserialize)]
    struct Raw {
        event_id: String,
        event_type: String,
        timestamp: Option<String>,
        source: Option<String>,
        payload: Map<String, Value>,
    }
    // Via a Value, so that field errors carry no "at line 1 column 80" noise.
    let object: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| Invalid::new(format!("not a JSON object: {e}")))?;
    let raw: Raw =
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| path_error(None, e))?;
    // The dedupe key (and JetStream's Nats-Msg-Id): bounded.
    if raw.event_id.is_empty() || raw.event_id.len() > 200 {
        return Err(Invalid::new("event_id: must be 1 to 200 bytes"));
    }
    if raw.event_type != subject {
        return Err(Invalid::new(format!(
            "event_type {:?} does not match subject {subject:?}",
            raw.event_type
        )));
    }
    if let Some(ts) = &raw.timestamp {
        check_rfc3339(ts)
            .map_err(|e| Invalid::new(format!("timestamp: {ts:?} is not RFC 3339 ({e})")))?;
    }
    if let Some(check) = schema(subject) {
        check(&raw.payload)?;
        one_of(subject, &raw.payload)?;
    }
    Ok(Envelope {
        event_id: raw.event_id,
        event_type: raw.event_type,
        timestamp: raw.timestamp.unwrap_or_else(now),
        source: raw.source.unwrap_or_else(|| "unknown".to_string()),
        payload: raw.payload,
    })
}

/// The envelope of an event we publish, checked against the schema of `subject` so we
/// never emit what our own [`parse`] refuses.
pub fn build(
    subject: &str,
    source: &str,
    payload: Map<String, Value>,
) -> Result<Envelope, Invalid> {
    if let Some(check) = schema(subject) {
        check(&payload)?;
        one_of(subject, &payload)?;
    }
    Ok(Envelope::new(subject, source, payload))
}

/// Fields of which a payload needs at least one (the first is named when none is
/// there): a translation of a `text` or of `segments`.
fn one_of(subject: &str, payload: &Map<String, Value>) -> Result<(), Invalid> {
    let fields: &[&str] = match subject {
        TRANSLATION_REQUESTED => &["text", "segments"],
        _ => return Ok(()),
    };
    if fields
        .iter()
        .any(|f| payload.get(*f).is_some_and(|v| !v.is_null()))
    {
        return Ok(());
    }
    Err(Invalid::new(format!(
        "payload: missing field `{}`",
        fields[0]
    )))
}

/// A typed payload: the subject it travels on and its schema check.
pub trait Payload: Serialize + DeserializeOwned {
    const SUBJECT: &'static str;
    /// Refuse a payload with a required field missing or a field of the wrong type.
    fn check(payload: &Map<String, Value>) -> Result<(), Invalid> {
        serde_path_to_error::deserialize::<_, Self>(payload)
            .map(drop)
            .map_err(|e| path_error(Some("payload"), e))
    }
}

/// Declares the payload structs and [`schema`]. In each, fields before `;` are required,
/// those after it optional (`Option<T>`, left out of the JSON when `None`); `extra`
/// keeps the fields the schema does not name (serde reads the named ones directly,
/// so an error still carries its field's path).
macro_rules! payloads {
    ($($(#[$doc:meta])* $name:ident = $subject:ident {
        $($(#[$rm:meta])* $req:ident: $rty:ty,)* ; $($(#[$om:meta])* $opt:ident: $oty:ty,)*
    })*) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
            pub struct $name {
                $($(#[$rm])* pub $req: $rty,)*
                $($(#[$om])* #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $opt: Option<$oty>,)*
                /// Fields this schema does not name, kept as they came.
                #[serde(flatten)]
                pub extra: Map<String, Value>,
            }

            impl Payload for $name {
                const SUBJECT: &'static str = $subject;
            }
        )*

        /// The schema check of `subject`, if it has one.
        fn schema(subject: &str) -> Option<fn(&Map<String, Value>) -> Result<(), Invalid>> {
            match subject {
                $($subject => Some(<$name as Payload>::check),)*
                _ => None,
            }
        }
    };
}

payloads! {
    /// A file to transcode: `file_path` is a local path, an `http(s)://` URL or a storage
    /// key; `profile` names a transcoding profile.
    MediaUploaded = MEDIA_UPLOADED {
        media_id: Id, user_id: Id, file_path: String, content_type: String, file_size: u64,
        ; metadata: Map<String, Value>, profile: String,
    }
    /// A transcode finished (`duration` in seconds).
    MediaReady = MEDIA_READY {
        media_id: Id, user_id: Id, playback_urls: PlaybackUrls,
        ; thumbnail_urls: Vec<String>, duration: f64, resolutions: Vec<String>,
    }
    /// How far a transcode is: `progress` in percent, 0 to 100.
    MediaProgress = MEDIA_PROGRESS {
        media_id: Id, user_id: Id, #[serde(deserialize_with = "percent")] progress: f64,
        ; stage: String,
    }
    /// A transcode failed (or was cancelled).
    MediaFailed = MEDIA_FAILED { media_id: Id, reason: String, ; user_id: Id, }
    /// Stop a transcode.
    MediaCancel = MEDIA_CANCEL { media_id: Id, ; user_id: Id, }
    /// Send a push or an email: to the original's `data.device_token` (with
    /// `data.platform`) or `data.email`, or to our `tokens` / `email`.
    NotificationRequested = NOTIFICATION_REQUESTED {
        user_id: Id, notification_type: NotificationType, title: String, body: String,
        ; data: Map<String, Value>, notification_id: Id, tokens: Vec<DeviceToken>, email: EmailTo,
        priority: Priority, ttl_s: u64, collapse_key: String,
    }
    /// A notification was handed to its provider(s).
    NotificationSent = NOTIFICATION_SENT {
        user_id: Id, notification_id: Id, notification_type: String, sent_at: String,
        ; provider_ids: Vec<Value>, attempts: u32, failed: Vec<Value>,
    }
    /// A notification could not be sent.
    NotificationFailed = NOTIFICATION_FAILED {
        user_id: Id, reason: String, ; notification_id: Id, notification_type: String,
        attempts: u32, failed: Vec<Value>,
    }
    /// A provider says this device token is gone: stop using it.
    NotificationTokenInvalid = NOTIFICATION_TOKEN_INVALID {
        user_id: Id, token: String, ; platform: String, notification_id: Id,
    }
    /// Transcribe a media file (`file_path` as in [`MediaUploaded`]).
    TranscriptionRequested = TRANSCRIPTION_REQUESTED {
        media_id: Id, file_path: String,
        ; language: String, user_id: Id, captions: bool, caption_languages: Vec<String>,
    }
    /// A transcript. The original sent `segments: null` when it had none: read as `[]`.
    TranscriptionComplete = TRANSCRIPTION_COMPLETE {
        media_id: Id, transcription: String, language: String,
        #[serde(deserialize_with = "null_as_empty")] segments: Vec<Segment>,
        ; user_id: Id, duration: f64, timings: String, chunks: u32, model: String,
        captions: Vec<Value>,
    }
    /// A transcription failed.
    TranscriptionFailed = TRANSCRIPTION_FAILED { reason: String, ; media_id: Id, user_id: Id, }
    /// Translate a text, or timed segments one by one (no `from_language`: detect
    /// it). One of `text` and `segments` is needed (the job says so when neither).
    TranslationRequested = TRANSLATION_REQUESTED {
        to_language: String,
        ; text: String, from_language: String, user_id: Id, media_id: Id, request_id: String,
        segments: Vec<Segment>, provider: String,
    }
    /// A translation.
    TranslationComplete = TRANSLATION_COMPLETE {
        original_text: String, translated_text: String, from_language: String, to_language: String,
        ; user_id: Id, media_id: Id, request_id: String, segments: Vec<Segment>, provider: String,
        model: String, usage: Value,
    }
    /// A translation failed.
    TranslationFailed = TRANSLATION_FAILED {
        reason: String, ; user_id: Id, media_id: Id, request_id: String,
    }
    /// Captions (SRT and WebVTT) are stored for a media.
    CaptioningComplete = CAPTIONING_COMPLETE {
        media_id: Id, ; user_id: Id, language: String, srt_url: String, vtt_url: String,
        cues: u32, translated_from: String,
    }
    /// A chat message accepted on `chat:room:{room_id}` (for moderation, analytics).
    ChatMessage = CHAT_MESSAGE {
        message_id: Id, room_id: Id, user_id: Id, content: String, timestamp: String,
        ; topic: String, offset: u64,
    }
    /// Moderation flagged a chat message (`withheld`: refused, or deleted after
    /// its broadcast).
    ModerationFlagged = MODERATION_FLAGGED {
        topic: String, user_id: Id, content: String, withheld: bool, mode: String,
        ; message_id: String, offset: u64, categories: Vec<String>, score: f64,
    }
    /// A call began on `node` (its first participant joined).
    CallStarted = CALL_STARTED { call_id: String, node: String, ; }
    /// A call ended (`duration_s`; every participant who ever joined).
    CallEnded = CALL_ENDED {
        call_id: String, node: String, duration_s: f64, participants_total: u64, ;
    }
    /// Someone joined a call.
    CallParticipantJoined = CALL_PARTICIPANT_JOINED {
        call_id: String, node: String, participant_id: String, user_id: Id, ;
    }
    /// Someone left a call: `reason` is `left`, `connection_closed`, `ice_timeout`,
    /// `connect_timeout`, `failed`...
    CallParticipantLeft = CALL_PARTICIPANT_LEFT {
        call_id: String, node: String, participant_id: String, user_id: Id, reason: String, ;
    }
    /// A user's presence in a room changed.
    PresenceUpdate = PRESENCE_UPDATE {
        user_id: Id, room_id: Id, status: PresenceStatus, timestamp: String, ; topic: String,
    }
}

/// Where a transcoded media can be played.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PlaybackUrls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dash: Option<String>,
    /// By rendition: `{"720p": url, ...}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mp4: Option<std::collections::BTreeMap<String, String>>,
}

/// A timed piece of a transcript (seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
}

/// `"push"` or `"email"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotificationType {
    Push,
    Email,
}

/// One device of `notification.requested`'s `tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceToken {
    pub platform: DevicePlatform,
    pub token: String,
}

/// Where a device token is delivered: FCM (`android`, `web`) or APNs (`ios`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DevicePlatform {
    Android,
    Ios,
    Web,
}

/// `notification.requested`'s `email`: an address, or `{to, subject?, text?, html?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmailTo {
    Address(String),
    Message {
        to: Value,
        #[serde(default)]
        subject: Option<String>,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        html: Option<String>,
    },
}

/// A notification's delivery priority (FCM/APNs `high` wakes the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Normal,
    High,
}

/// A user's status in a room (`offline` when their last connection left).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    Offline,
}

/// An identifier: a non-empty JSON string, or an integer (PHP backends send numbers),
/// held and written as a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Id(pub String);

impl Id {
    /// The id as a topic segment or a log field.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Id {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Id, D::Error> {
        struct IdVisitor;
        impl Visitor<'_> for IdVisitor {
            type Value = Id;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-empty string or an integer")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Id, E> {
                if s.is_empty() {
                    return Err(E::invalid_value(Unexpected::Str(s), &self));
                }
                Ok(Id(s.to_string()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Id, E> {
                Ok(Id(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Id, E> {
                Ok(Id(n.to_string()))
            }
        }
        d.deserialize_any(IdVisitor)
    }
}

/// A number from 0 to 100.
fn percent<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let p = f64::deserialize(d)?;
    if !(0.0..=100.0).contains(&p) {
        return Err(de::Error::invalid_value(
            Unexpected::Float(p),
            &"a number from 0 to 100",
        ));
    }
    Ok(p)
}

/// An array, `null` read as empty.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// `missing field \`x\`` at the top, `<prefix>.<path>: <error>` below it.
fn path_error(prefix: Option<&str>, e: serde_path_to_error::Error<serde_json::Error>) -> Invalid {
    let path = e.path().to_string();
    let inner = e.into_inner();
    Invalid::new(match (prefix, path.as_str()) {
        (None, ".") => inner.to_string(),
        (None, path) => format!("{path}: {inner}"),
        (Some(prefix), ".") => format!("{prefix}: {inner}"),
        (Some(prefix), path) => format!("{prefix}.{path}: {inner}"),
    })
}

/// Whether `ts` is an RFC 3339 date-time. humantime reads UTC ones (`Z`, `+00:00`);
/// another offset (PHP's `date('c')` on a server not in UTC) is checked as a time of day
/// and the rest handed to humantime. Only validity matters: the string is kept as sent.
fn check_rfc3339(ts: &str) -> Result<(), humantime::TimestampError> {
    let offset = ts
        .len()
        .checked_sub(6)
        .and_then(|i| Some((ts.get(..i)?, ts.get(i..)?)));
    if let Some((base, offset)) = offset
        && let Some(hh_mm) = offset.strip_prefix(['+', '-'])
    {
        humantime::parse_rfc3339(&format!("2000-01-01T{hh_mm}:00Z"))?;
        return humantime::parse_rfc3339_weak(base).map(drop);
    }
    humantime::parse_rfc3339_weak(ts).map(drop)
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The body of an event on `subject` carrying `payload`.
    fn event(subject: &str, payload: Value) -> Vec<u8> {
        let e = json!({"event_id": "e1", "event_type": subject, "source": "php-backend",
            "timestamp": "2025-01-15T10:30:00Z", "payload": payload});
        e.to_string().into_bytes()
    }

    /// Parse `payload` on its subject, check it is kept as sent, and decode it.
    fn accept<T: Payload>(payload: Value) -> T {
        let e = parse(T::SUBJECT, &event(T::SUBJECT, payload.clone())).unwrap();
        assert_eq!(Value::Object(e.payload.clone()), payload);
        e.payload_as().unwrap()
    }

    fn reason(subject: &str, payload: Value) -> String {
        parse(subject, &event(subject, payload)).unwrap_err().reason
    }

    /// Every subject with only its required fields.
    #[rustfmt::skip]
    fn minimal() -> [(&'static str, Value); 18] {
        let t = "2025-01-15T10:30:00Z";
        [
            (MEDIA_UPLOADED, json!({"media_id": "m1", "user_id": "u1", "file_path": "a.mp4",
                "content_type": "video/mp4", "file_size": 10})),
            (MEDIA_READY, json!({"media_id": "m1", "user_id": "u1", "playback_urls": {}})),
            (MEDIA_PROGRESS, json!({"media_id": "m1", "user_id": "u1", "progress": 50})),
            (MEDIA_FAILED, json!({"media_id": "m1", "reason": "no video stream"})),
            (MEDIA_CANCEL, json!({"media_id": "m1"})),
            (NOTIFICATION_REQUESTED, json!({"user_id": "u1", "notification_type": "push",
                "title": "t", "body": "b"})),
            (NOTIFICATION_SENT, json!({"user_id": "u1", "notification_id": "n1",
                "notification_type": "push", "sent_at": t})),
            (NOTIFICATION_FAILED, json!({"user_id": "u1", "reason": "unregistered"})),
            (NOTIFICATION_TOKEN_INVALID, json!({"user_id": "u1", "token": "tok"})),
            (TRANSCRIPTION_REQUESTED, json!({"media_id": "m1", "file_path": "a.mp4"})),
            (TRANSCRIPTION_COMPLETE, json!({"media_id": "m1", "transcription": "hi",
                "language": "en", "segments": [{"start": 0, "end": 1.5, "text": "hi"}]})),
            (TRANSCRIPTION_FAILED, json!({"reason": "timeout"})),
            (TRANSLATION_REQUESTED, json!({"text": "hello", "to_language": "fr"})),
            (TRANSLATION_COMPLETE, json!({"original_text": "hello", "translated_text": "salut",
                "from_language": "en", "to_language": "fr"})),
            (TRANSLATION_FAILED, json!({"reason": "quota"})),
            (CAPTIONING_COMPLETE, json!({"media_id": "m1"})),
            (CHAT_MESSAGE, json!({"message_id": "x1", "room_id": "r1", "user_id": "u1",
                "content": "hi", "timestamp": t})),
            (PRESENCE_UPDATE, json!({"user_id": "u1", "room_id": "r1", "status": "away",
                "timestamp": t})),
        ]
    }

    #[test]
    fn original_events_are_accepted_as_sent() {
        let body = br#"{"event_id":"550e8400-e29b-41d4-a716-446655440000","event_type":"media.uploaded","timestamp":"2025-01-15T10:30:00Z","source":"php-backend","payload":{"media_id":"550e8400-e29b-41d4-a716-446655440001","user_id":"550e8400-e29b-41d4-a716-446655440002","file_path":"s3://bucket/uploads/video.mp4","content_type":"video/mp4","file_size":104857600}}"#;
        let e = parse(MEDIA_UPLOADED, body).unwrap();
        let sent: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(serde_json::to_value(&e).unwrap(), sent);
        let m: MediaUploaded = e.payload_as().unwrap();
        assert_eq!(m.user_id.as_str(), "550e8400-e29b-41d4-a716-446655440002");
        assert_eq!((m.file_size, m.metadata), (104857600, None));

        let n: NotificationRequested = accept(json!({"user_id": "u1",
            "notification_type": "push", "title": "New message", "body": "You have a new message",
            "data": {"device_token": "fcm-token-123", "platform": "android"}}));
        assert_eq!(n.notification_type, NotificationType::Push);
        assert_eq!(n.data.unwrap()["device_token"], "fcm-token-123");
        let n: NotificationRequested = accept(json!({"user_id": "u1",
            "notification_type": "email", "title": "Welcome", "body": "Hello",
            "data": {"email": "user@example.com"}}));
        assert_eq!(n.notification_type, NotificationType::Email);

        let t: TranscriptionRequested = accept(json!({"media_id": "m1",
            "file_path": "https://cdn.example.com/a.mp4", "language": "en"}));
        assert_eq!(t.language.as_deref(), Some("en"));
        let t: TranslationRequested =
            accept(json!({"text": "Hello, world!", "from_language": "en", "to_language": "es"}));
        assert_eq!(t.to_language, "es");
        // Ours: timed segments instead of a text.
        let t: TranslationRequested = accept(json!({"to_language": "de",
            "segments": [{"start": 0.0, "end": 1.5, "text": "Good morning."}]}));
        assert_eq!(t.segments.unwrap()[0].text, "Good morning.");
        // The original ai-workers wrote `segments: null` when the API gave none.
        let c: TranscriptionComplete = accept(json!({"media_id": "m1", "transcription": "",
            "language": "unknown", "segments": null}));
        assert!(c.segments.is_empty());
    }

    #[test]
    fn numeric_ids_and_unknown_fields_are_kept() {
        let m: MediaUploaded = accept(json!({"media_id": 17, "user_id": -42, "file_path": "a.mp4",
            "content_type": "video/mp4", "file_size": 1, "tenant": {"id": 3}}));
        assert_eq!((m.media_id.as_str(), m.user_id.as_str()), ("17", "-42"));
        assert_eq!(m.extra["tenant"], json!({"id": 3}));
        let out = serde_json::to_value(&m).unwrap();
        assert_eq!(out["media_id"], "17");
        assert_eq!(out["tenant"], json!({"id": 3}));
    }

    #[test]
    fn every_required_field_is_required_and_typed() {
        for (subject, payload) in minimal() {
            assert!(is_known(subject), "{subject}");
            parse(subject, &event(subject, payload.clone())).unwrap();
            for field in payload.as_object().unwrap().keys() {
                let mut p = payload.clone();
                p.as_object_mut().unwrap().remove(field);
                let missing = format!("payload: missing field `{field}`");
                assert_eq!(reason(subject, p), missing);
                p = payload.clone();
                p[field] = json!(true);
                let r = reason(subject, p);
                let mistyped = format!("payload.{field}: invalid type: boolean `true`");
                assert!(r.starts_with(&mistyped), "{r}");
            }
        }
    }

    #[test]
    #[rustfmt::skip]
    fn wrong_values_are_refused_naming_the_field() {
        let [upload, .., cancel, notify, _, _, _, _, transcript, _, _, _, _, _, _, presence] = minimal()
            .map(|(_, p)| p);
        let with = |p: &Value, k: &str, v: Value| { let mut p = p.clone(); p[k] = v; p };
        let cases = [
            (MEDIA_UPLOADED, with(&upload, "file_size", json!("big")),
                r#"payload.file_size: invalid type: string "big", expected u64"#),
            (MEDIA_UPLOADED, with(&upload, "metadata", json!([])),
                "payload.metadata: invalid type: sequence, expected a map"),
            (MEDIA_CANCEL, with(&cancel, "media_id", json!(1.5)),
                "payload.media_id: invalid type: floating point `1.5`, expected a non-empty string or an integer"),
            (MEDIA_CANCEL, with(&cancel, "media_id", json!("")),
                r#"payload.media_id: invalid value: string "", expected a non-empty string or an integer"#),
            (NOTIFICATION_REQUESTED, with(&notify, "notification_type", json!("sms")),
                "payload.notification_type: unknown variant `sms`, expected `push` or `email`"),
            (NOTIFICATION_REQUESTED, with(&notify, "priority", json!("urgent")),
                "payload.priority: unknown variant `urgent`, expected `normal` or `high`"),
            (NOTIFICATION_REQUESTED, with(&notify, "tokens", json!([{"platform": "android", "token": 2}])),
                "payload.tokens[0].token: invalid type: integer `2`, expected a string"),
            (NOTIFICATION_REQUESTED, with(&notify, "tokens", json!([{"platform": "sms", "token": "t"}])),
                "payload.tokens[0].platform: unknown variant `sms`, expected one of `android`, `ios`, `web`"),
            (MEDIA_PROGRESS, json!({"media_id": "m1", "user_id": "u1", "progress": 150}),
                "payload.progress: invalid value: floating point `150.0`, expected a number from 0 to 100"),
            (MEDIA_PROGRESS, json!({"media_id": "m1", "user_id": "u1", "progress": -1}),
                "payload.progress: invalid value: floating point `-1.0`, expected a number from 0 to 100"),
            (TRANSCRIPTION_COMPLETE, with(&transcript, "segments", json!([{"start": 0, "end": "2", "text": "b"}])),
                r#"payload.segments[0].end: invalid type: string "2", expected f64"#),
            (TRANSCRIPTION_COMPLETE, with(&transcript, "segments", json!([{"start": 0, "end": 2}])),
                "payload.segments[0]: missing field `text`"),
            (MEDIA_READY, json!({"media_id": "m1", "user_id": "u1", "playback_urls": {"mp4": {"720p": 1}}}),
                "payload.playback_urls.mp4.720p: invalid type: integer `1`, expected a string"),
            (PRESENCE_UPDATE, with(&presence, "status", json!("gone")),
                "payload.status: unknown variant `gone`, expected one of `online`, `away`, `busy`, `offline`"),
        ];
        for (subject, payload, expected) in cases {
            assert_eq!(reason(subject, payload), expected);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn envelope_rules() {
        let valid: Value = serde_json::from_slice(&event(MEDIA_CANCEL, json!({"media_id": 1}))).unwrap();
        // The event with field `k` set to `v` (or removed).
        let with = |k: &str, v: Option<Value>| {
            let mut e = valid.clone();
            match v {
                Some(v) => e[k] = v,
                None => drop(e.as_object_mut().unwrap().remove(k)),
            }
            parse(MEDIA_CANCEL, e.to_string().as_bytes())
        };
        let refusals = [
            ("event_id", None, "missing field `event_id`"),
            ("event_id", Some(json!(7)), "event_id: invalid type: integer `7`, expected a string"),
            ("event_id", Some(json!("")), "event_id: must be 1 to 200 bytes"),
            ("event_id", Some(json!("x".repeat(201))), "event_id: must be 1 to 200 bytes"),
            ("event_type", None, "missing field `event_type`"),
            ("event_type", Some(json!("media.ready")), r#"event_type "media.ready" does not match subject "media.cancel""#),
            ("payload", None, "missing field `payload`"),
            ("payload", Some(json!("x")), r#"payload: invalid type: string "x", expected a map"#),
            ("timestamp", Some(json!("yesterday")), r#"timestamp: "yesterday" is not RFC 3339 (timestamp format is invalid)"#),
            ("timestamp", Some(json!("2025-13-01T00:00:00Z")), r#"timestamp: "2025-13-01T00:00:00Z" is not RFC 3339 (numeric component is out of range)"#),
            ("timestamp", Some(json!("2025-01-15T10:30:00+24:00")), r#"timestamp: "2025-01-15T10:30:00+24:00" is not RFC 3339 (numeric component is out of range)"#),
            ("source", Some(json!(1)), "source: invalid type: integer `1`, expected a string"),
        ];
        for (k, v, expected) in refusals {
            assert_eq!(with(k, v).unwrap_err().reason, expected);
        }
        let refused = |b: &[u8]| parse(MEDIA_CANCEL, b).unwrap_err().reason;
        assert_eq!(refused(b"nope"), "not a JSON object: expected ident at line 1 column 2");
        assert_eq!(refused(b"[1]"), "not a JSON object: invalid type: sequence, expected a map at line 1 column 0");
        for ok in ["2025-01-15T10:30:00.123456789Z", "2025-01-15T10:30:00+00:00", "2025-01-15T05:30:00.5-05:00"] {
            assert_eq!(with("timestamp", Some(json!(ok))).unwrap().timestamp, ok);
        }
        humantime::parse_rfc3339(&with("timestamp", None).unwrap().timestamp).unwrap();
        assert_eq!(with("source", None).unwrap().source, "unknown");
        assert!(with("trace_id", Some(json!(1))).is_ok());
        // No schema for a subject we do not know, but still an object payload.
        let e = parse("billing.paid", &event("billing.paid", json!({"any": [1]}))).unwrap();
        assert_eq!((is_known("billing.paid"), &e.payload["any"]), (false, &json!([1])));
        assert!(parse("billing.paid", &event("billing.paid", json!([1]))).is_err());
    }

    #[test]
    fn build_checks_and_round_trips() {
        let mut p = minimal()[1].1.as_object().unwrap().clone();
        p.remove("user_id");
        let refused = build(MEDIA_READY, "armoricore", p).unwrap_err();
        assert_eq!(refused.to_string(), "payload: missing field `user_id`");
        let p = json!({"media_id": "m1", "user_id": 5, "progress": 12.5, "stage": "encode"});
        let e = build(MEDIA_PROGRESS, "armoricore", p.as_object().unwrap().clone()).unwrap();
        assert_eq!(e.event_type, MEDIA_PROGRESS);
        assert_eq!(e.source, "armoricore");
        let id = uuid::Uuid::parse_str(&e.event_id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(parse(MEDIA_PROGRESS, &e.to_bytes()).unwrap(), e);

        let urls = PlaybackUrls {
            hls: Some("https://cdn/m1.m3u8".into()),
            ..Default::default()
        };
        let ready = MediaReady {
            media_id: Id("m1".into()),
            user_id: Id("u1".into()),
            playback_urls: urls,
            thumbnail_urls: None,
            duration: Some(3.5),
            resolutions: None,
            extra: Map::new(),
        };
        let e = Envelope::from_payload("armoricore", &ready).unwrap();
        let expected = json!({"media_id": "m1", "user_id": "u1", "duration": 3.5,
            "playback_urls": {"hls": "https://cdn/m1.m3u8"}});
        assert_eq!(Value::Object(e.payload.clone()), expected);
        let back = parse(MEDIA_READY, &e.to_bytes()).unwrap();
        assert_eq!(back.payload_as::<MediaReady>().unwrap(), ready);
    }

    #[test]
    fn subject_groups() {
        let failed = WORK_SUBJECTS.map(|s| failed_subject(s).unwrap());
        let expected = [MEDIA_FAILED, NOTIFICATION_FAILED];
        assert_eq!(failed[..2], expected);
        assert_eq!(failed[2..], [TRANSCRIPTION_FAILED, TRANSLATION_FAILED]);
        let all = failed.iter().chain(&WORK_SUBJECTS).chain(RESULT_SUBJECTS);
        assert!(all.copied().all(is_known));
        assert!(RESULT_SUBJECTS.iter().all(|s| failed_subject(s).is_none()));
        assert_eq!(failed_subject(MEDIA_CANCEL), None);
    }
}
