//! The original Armoricore app's topics.
//!
//! | topic                  | client → server                          | server → clients |
//! |------------------------|------------------------------------------|------------------|
//! | `chat:room:{id}`       | `new_message {content}` → `{id, offset}`, `typing_start`, `typing_stop`, `history {before, limit}` → `{messages, more}` | `new_message`, `user_typing`, `msg_deleted`, presence |
//! | `comments:stream:{id}` | `new_comment {content}` → `{id, offset}`, `history {before, limit}` | `new_comment`, `msg_deleted` |
//! | `presence:room:{id}`   | `update_status {status}`                 | presence |
//! | `user:{id}`            | —                                        | server pushes only |

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::{Channel, ChannelCtx, ChannelError, Reply};
use crate::ai::moderation::{Mode, Moderator, Verdict};
use crate::history::Published;

/// Statuses a presence may announce.
const STATUSES: &[&str] = &["online", "away", "busy"];

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn unknown_event(event: &str) -> Result<Option<Reply>, ChannelError> {
    Ok(Some(Reply::error(format!("unknown event {event:?}"))))
}

/// The presence meta of a joining user: status, join time, and the token's name/meta.
fn presence_meta(ctx: &ChannelCtx<'_>) -> Map<String, Value> {
    let mut meta = Map::new();
    meta.insert("status".into(), json!("online"));
    let online_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    meta.insert("online_at".into(), json!(online_at));
    if let Some(name) = &ctx.user.name {
        meta.insert("name".into(), json!(name));
    }
    if let Some(m) = &ctx.user.meta {
        meta.insert("meta".into(), m.clone());
    }
    meta
}

/// Validate `content`, then broadcast `event {id, offset, user_id, content, timestamp}`
/// to the whole topic (sender included) and reply `{id, offset}`. A retry with the
/// same `idempotency_key` gets the same reply and broadcasts nothing.
async fn post(ctx: &ChannelCtx<'_>, event: &str, payload: &Value, max_chars: usize) -> Reply {
    let content = match payload.get("content").and_then(Value::as_str) {
        Some(c) if c.contains('\0') => {
            return Reply::error("content must not contain NUL characters");
        }
        Some(c) if !c.trim().is_empty() && c.chars().count() <= max_chars => c,
        _ => {
            return Reply::error(format!(
                "content must be a non-empty string of at most {max_chars} characters"
            ));
        }
    };
    let key = match payload.get("idempotency_key") {
        None => None,
        Some(Value::String(k)) if !k.is_empty() && k.len() <= 128 => Some(k.as_str()),
        Some(_) => return Reply::error("idempotency_key must be a string of 1 to 128 bytes"),
    };
    let moderator = ctx.hub.moderation.as_ref().filter(|m| m.covers(ctx.topic));
    if let Some(m) = moderator
        && m.mode == Mode::Before
    {
        match m.check(content).await {
            Ok(v) if v.flagged => {
                report_flagged(ctx, None, content, &v, m.withhold);
                if m.withhold {
                    return Reply::Error(json!({
                        "reason": "message flagged by moderation",
                        "categories": v.categories,
                    }));
                }
            }
            Ok(_) => {}
            Err(e) if m.fail_open => {
                tracing::warn!(topic = ctx.topic, error = %e, "moderation check failed: message published unchecked");
            }
            Err(e) => return Reply::error(format!("moderation unavailable: {e}")),
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let timestamp = now_rfc3339();
    let published = match ctx
        .hub
        .history
        .publish_any(
            ctx.topic,
            event,
            key.map(|k| (ctx.user.user_id.as_str(), k)),
            |offset| {
                json!({
                    "id": id,
                    "offset": offset,
                    "user_id": ctx.user.user_id,
                    "content": content,
                    "timestamp": timestamp,
                })
            },
            |sent| json!({"id": sent["id"], "offset": sent["offset"]}),
        )
        .await
    {
        Ok(published) => published,
        // Not stored, so not sent: the client may retry (with its idempotency key).
        Err(e) => return Reply::error(e.to_string()),
    };
    if let Published::New { offset, .. } = &published
        && let Some(m) = moderator
        && m.mode == Mode::After
    {
        check_after(ctx, m.clone(), id.clone(), *offset, content.to_string());
    }
    if let Published::New { offset, .. } = &published
        && let Some(room) = ctx.topic.strip_prefix("chat:room:")
        && ctx.hub.config.bus.publish_chat
    {
        let message = json!({
            "message_id": id, "room_id": room, "user_id": ctx.user.user_id,
            "content": content, "timestamp": timestamp, "topic": ctx.topic, "offset": offset,
        });
        if let Value::Object(payload) = message {
            ctx.hub
                .outlet
                .emit(crate::bus::events::CHAT_MESSAGE, payload);
        }
    }
    Reply::Ok(published.reply())
}

/// Check a published message in the background; a flagged one is reported and
/// (withhold) deleted, which tells the topic `msg_deleted {id, offset}`.
fn check_after(ctx: &ChannelCtx<'_>, m: Arc<Moderator>, id: String, offset: u64, content: String) {
    let hub = ctx.hub.clone();
    let (topic, user_id) = (ctx.topic.to_string(), ctx.user.user_id.clone());
    tokio::spawn(async move {
        let v = match m.check(&content).await {
            Ok(v) if v.flagged => v,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(topic, error = %e, "moderation check failed: message left as it is");
                return;
            }
        };
        let mut withheld = false;
        if m.withhold {
            match hub.history.delete(&id).await {
                Ok(found) => withheld = found.is_some(),
                Err(e) => {
                    tracing::warn!(topic, id, error = %e, "a flagged message could not be deleted")
                }
            }
        }
        let payload = flagged_payload(
            &topic,
            &user_id,
            Some((&id, offset)),
            &content,
            &v,
            withheld,
            "after",
        );
        hub.outlet
            .emit(crate::bus::events::MODERATION_FLAGGED, payload);
    });
}

/// `moderation.flagged` for a message refused before it was published.
fn report_flagged(
    ctx: &ChannelCtx<'_>,
    at: Option<(&str, u64)>,
    content: &str,
    v: &Verdict,
    withheld: bool,
) {
    let payload = flagged_payload(
        ctx.topic,
        &ctx.user.user_id,
        at,
        content,
        v,
        withheld,
        "before",
    );
    ctx.hub
        .outlet
        .emit(crate::bus::events::MODERATION_FLAGGED, payload);
}

fn flagged_payload(
    topic: &str,
    user_id: &str,
    at: Option<(&str, u64)>,
    content: &str,
    v: &Verdict,
    withheld: bool,
    mode: &str,
) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("topic".into(), json!(topic));
    p.insert("user_id".into(), json!(user_id));
    if let Some((id, offset)) = at {
        p.insert("message_id".into(), json!(id));
        p.insert("offset".into(), json!(offset));
    }
    p.insert("content".into(), json!(content));
    p.insert("categories".into(), json!(v.categories));
    p.insert("score".into(), json!(v.score));
    p.insert("withheld".into(), json!(withheld));
    p.insert("mode".into(), json!(mode));
    p
}

/// `history {before?, limit?}` → `{messages: [...], more}`: a page of older
/// messages, oldest first (`before`: an offset; absent: the newest).
async fn history(ctx: &ChannelCtx<'_>, payload: &Value) -> Reply {
    let before = match payload.get("before") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(b) => Some(b),
            None => return Reply::error("before must be an offset (a non-negative integer)"),
        },
    };
    let limit = match payload.get("limit") {
        None | Some(Value::Null) => 50,
        Some(v) => match v.as_u64() {
            Some(l) if l >= 1 => l.min(u32::MAX as u64) as usize,
            _ => return Reply::error("limit must be a positive integer"),
        },
    };
    match ctx.hub.history.page(ctx.topic, before, limit).await {
        Ok(page) => {
            let more = page.len() >= limit.min(ctx.hub.config.database.page_max);
            let messages: Vec<Value> = page
                .into_iter()
                .map(|m| std::sync::Arc::unwrap_or_clone(m.payload))
                .collect();
            Reply::Ok(json!({"messages": messages, "more": more}))
        }
        Err(e) => Reply::error(e.to_string()),
    }
}

/// `chat:room:{id}`: messages, typing indicators, presence.
pub struct ChatRoom {
    pub max_chars: usize,
}

#[async_trait]
impl Channel for ChatRoom {
    async fn after_join(&self, ctx: &ChannelCtx<'_>) -> Result<(), ChannelError> {
        ctx.track(presence_meta(ctx));
        Ok(())
    }

    async fn handle_in(
        &self,
        ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        match event {
            "new_message" => Ok(Some(
                post(ctx, "new_message", &payload, self.max_chars).await,
            )),
            "history" => Ok(Some(history(ctx, &payload).await)),
            "typing_start" | "typing_stop" => {
                let typing = event == "typing_start";
                ctx.broadcast_from(
                    "user_typing",
                    &json!({"user_id": ctx.user.user_id, "typing": typing}),
                );
                Ok(Some(Reply::Ok(json!({}))))
            }
            other => unknown_event(other),
        }
    }
}

/// `comments:stream:{id}`: live comments.
pub struct CommentStream {
    pub max_chars: usize,
}

#[async_trait]
impl Channel for CommentStream {
    async fn handle_in(
        &self,
        ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        match event {
            "new_comment" => Ok(Some(
                post(ctx, "new_comment", &payload, self.max_chars).await,
            )),
            "history" => Ok(Some(history(ctx, &payload).await)),
            other => unknown_event(other),
        }
    }
}

/// `presence:room:{id}`: presence only, with a status.
pub struct PresenceRoom;

#[async_trait]
impl Channel for PresenceRoom {
    async fn after_join(&self, ctx: &ChannelCtx<'_>) -> Result<(), ChannelError> {
        ctx.track(presence_meta(ctx));
        Ok(())
    }

    async fn handle_in(
        &self,
        ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        match event {
            "update_status" => {
                let status = payload.get("status").and_then(Value::as_str);
                match status {
                    Some(s) if STATUSES.contains(&s) => {
                        let mut changes = Map::new();
                        changes.insert("status".into(), json!(s));
                        ctx.update_presence(&changes);
                        Ok(Some(Reply::Ok(json!({}))))
                    }
                    _ => Ok(Some(Reply::error(
                        "status must be one of online, away, busy",
                    ))),
                }
            }
            other => unknown_event(other),
        }
    }
}

/// `media:{media_id}`: the server pushes a media's progress and results. Joined by
/// the media's owner (the `user_id` of its `media.uploaded` event, as seen by this
/// node) or by a token whose `channels` claim names the topic.
pub struct MediaTopic;

#[async_trait]
impl Channel for MediaTopic {
    async fn join(&self, ctx: &ChannelCtx<'_>, _payload: &Value) -> Result<Value, Value> {
        let media_id = ctx.topic.strip_prefix("media:").unwrap_or_default();
        let claimed = ctx.user.channels.as_ref().is_some_and(|patterns| {
            patterns
                .iter()
                .any(|p| crate::protocols::jwt::topic_matches(p, ctx.topic))
        });
        if claimed || ctx.hub.media_owners.is_owner(media_id, &ctx.user.user_id) {
            Ok(json!({}))
        } else {
            Err(json!({"reason": "unauthorized"}))
        }
    }

    async fn handle_in(
        &self,
        _ctx: &ChannelCtx<'_>,
        event: &str,
        _payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        unknown_event(event)
    }
}

/// Who owns each media (from `media.uploaded` and media result events), so
/// `media:{id}` can be joined by its owner. Bounded: past `MAX` entries the oldest
/// half is forgotten (those owners then need a `channels` claim).
#[derive(Default)]
pub struct MediaOwners {
    owners: parking_lot::Mutex<indexmap::IndexMap<String, String>>,
}

impl MediaOwners {
    const MAX: usize = 100_000;

    pub fn record(&self, media_id: &str, user_id: &str) {
        let mut owners = self.owners.lock();
        if owners.len() >= Self::MAX {
            owners.drain(..Self::MAX / 2);
        }
        owners.insert(media_id.to_string(), user_id.to_string());
    }

    pub fn is_owner(&self, media_id: &str, user_id: &str) -> bool {
        self.owners
            .lock()
            .get(media_id)
            .is_some_and(|owner| owner == user_id)
    }
}

/// `user:{id}`: a private topic the server pushes to (notifications, media events).
pub struct UserTopic;

#[async_trait]
impl Channel for UserTopic {
    async fn handle_in(
        &self,
        _ctx: &ChannelCtx<'_>,
        event: &str,
        _payload: Value,
    ) -> Result<Option<Reply>, ChannelError> {
        unknown_event(event)
    }
}
