//! Channels: what a topic does when a client joins it and pushes to it.
//!
//! A [`Channel`] runs inside its connection's Session actor (no task per joined
//! channel). The session contains its failures: a panic or an error returned from
//! `handle_in` ends that channel with `phx_error` (the client rejoins, as with a
//! crashed Phoenix channel) and the connection carries on.
//!
//! The [`Router`] maps topic prefixes to channels and says who may join them; the
//! standard routes are the original Armoricore app's topics (see `rooms`). Tests add
//! their own routes the same way an application would.

pub mod admin;
pub mod call;
pub mod rooms;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use crate::actors::presence::StateTarget;
use crate::config::Config;
use crate::hub::Hub;
use crate::protocols::jwt::{Claims, topic_matches};
use crate::protocols::phoenix::{self, Vsn};
use crate::pubsub::{Outbox, SessionId, offer};

/// A reply to a push: `phx_reply` with status `ok` or `error`.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ok(Value),
    Error(Value),
}

impl Reply {
    /// An error reply `{reason}`.
    pub fn error(reason: impl Into<String>) -> Reply {
        Reply::Error(json!({ "reason": reason.into() }))
    }
}

/// A channel failing (rather than refusing a request, which is a [`Reply::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// This channel cannot go on: it is closed with `phx_error`, the connection stays.
    #[error("channel failed: {0}")]
    Failed(String),
    /// The connection cannot go on: its Session fails and the socket is closed (1011).
    #[error("session failed: {0}")]
    Fatal(String),
}

/// What a channel sees of its connection.
pub struct ChannelCtx<'a> {
    pub topic: &'a str,
    pub join_ref: Option<&'a str>,
    pub user: &'a Claims,
    pub session: SessionId,
    pub vsn: Vsn,
    pub outbox: &'a Outbox,
    pub hub: &'a Arc<Hub>,
}

impl ChannelCtx<'_> {
    /// Broadcast to every subscriber of this topic, this connection included.
    pub fn broadcast(&self, event: &str, payload: &Value) {
        self.hub.pubsub.broadcast(self.topic, event, payload, None);
    }

    /// Broadcast to every subscriber of this topic but this connection.
    pub fn broadcast_from(&self, event: &str, payload: &Value) {
        self.hub
            .pubsub
            .broadcast(self.topic, event, payload, Some(self.session));
    }

    /// Push an event to this connection only.
    pub fn push(&self, event: &str, payload: &Value) {
        let frame = phoenix::encode(self.vsn, self.join_ref, None, self.topic, event, payload);
        offer(self.outbox, frame, &self.hub.metrics);
    }

    /// Track this connection's user in the topic's presence, with `meta`
    /// (`phx_ref` is added). The joiner receives `presence_state`, everyone a diff.
    pub fn track(&self, meta: Map<String, Value>) {
        let target = StateTarget {
            outbox: self.outbox.clone(),
            vsn: self.vsn,
            join_ref: self.join_ref.map(str::to_string),
        };
        self.hub
            .presence
            .track(self.topic, self.session, &self.user.user_id, meta, target);
    }

    /// Change fields of this connection's presence meta in the topic.
    pub fn update_presence(&self, changes: &Map<String, Value>) {
        self.hub.presence.update(self.topic, self.session, changes);
    }
}

/// The behaviour of a family of topics.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// Accept a join (the response goes into the `ok` reply) or refuse it with an
    /// error payload. Access rules were already checked by the [`Router`].
    async fn join(&self, ctx: &ChannelCtx<'_>, payload: &Value) -> Result<Value, Value> {
        let _ = (ctx, payload);
        Ok(json!({}))
    }

    /// Runs once the join reply is queued (Phoenix's `:after_join`): presence.
    async fn after_join(&self, ctx: &ChannelCtx<'_>) -> Result<(), ChannelError> {
        let _ = ctx;
        Ok(())
    }

    /// A client event. `Ok(None)` sends no reply.
    async fn handle_in(
        &self,
        ctx: &ChannelCtx<'_>,
        event: &str,
        payload: Value,
    ) -> Result<Option<Reply>, ChannelError>;

    /// The connection is no longer in this topic: it left, the channel crashed,
    /// or the connection ended (Phoenix's `terminate`). Runs synchronously, so
    /// it only hands work off.
    fn terminate(&self, hub: &Arc<Hub>, topic: &str, session: SessionId) {
        let _ = (hub, topic, session);
    }
}

/// Who may join a route's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any token whose `channels` claim matches the topic (or has no such claim).
    Public,
    /// Only the user named by the topic's suffix (`user:{id}`), and the `channels`
    /// claim must also allow it when present.
    OwnUser,
    /// Only operators: tokens with `armoricore_admin: true` (the dashboard's own tokens).
    Admin,
}

/// One topic prefix and its channel.
#[derive(Clone)]
pub struct Route {
    pub prefix: String,
    pub access: Access,
    pub channel: Arc<dyn Channel>,
}

/// Topic prefix → channel.
#[derive(Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

/// Why a join was refused before reaching the channel.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    Unmatched,
    Unauthorized,
}

impl Router {
    /// The original Armoricore topics: chat rooms, comment streams, presence rooms
    /// and private user topics.
    pub fn standard(config: &Config) -> Router {
        let max = config.channels.max_content_chars;
        Router::default()
            .route(
                "chat:room:",
                Access::Public,
                rooms::ChatRoom { max_chars: max },
            )
            .route(
                "comments:stream:",
                Access::Public,
                rooms::CommentStream { max_chars: max },
            )
            .route("presence:room:", Access::Public, rooms::PresenceRoom)
            .route("user:", Access::OwnUser, rooms::UserTopic)
            .route("media:", Access::Public, rooms::MediaTopic)
            .route(
                crate::calls::TOPIC_PREFIX,
                Access::Public,
                call::CallSignaling,
            )
            .route("admin:", Access::Admin, admin::AdminChannel)
    }

    /// Add a route; a topic goes to the longest matching prefix.
    pub fn route(mut self, prefix: &str, access: Access, channel: impl Channel) -> Router {
        self.routes.push(Route {
            prefix: prefix.to_string(),
            access,
            channel: Arc::new(channel),
        });
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        self
    }

    /// The route for `topic`, if `user` may join it.
    pub fn authorize(&self, topic: &str, user: &Claims) -> Result<&Route, RouteError> {
        let route = self
            .routes
            .iter()
            .find(|r| topic.len() > r.prefix.len() && topic.starts_with(&r.prefix))
            .ok_or(RouteError::Unmatched)?;
        let claim_ok = match &user.channels {
            None => true,
            Some(patterns) => patterns.iter().any(|p| topic_matches(p, topic)),
        };
        let owner_ok = match route.access {
            Access::Public => true,
            Access::OwnUser => topic[route.prefix.len()..] == user.user_id,
            Access::Admin => user.admin,
        };
        if claim_ok && owner_ok {
            Ok(route)
        } else {
            Err(RouteError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, channels: Option<Vec<&str>>) -> Claims {
        Claims {
            user_id: id.into(),
            channels: channels.map(|c| c.into_iter().map(String::from).collect()),
            name: None,
            meta: None,
            admin: false,
        }
    }

    #[test]
    fn routing_and_access() {
        let r = Router::standard(&Config::defaults());
        let alice = user("alice", None);
        assert!(r.authorize("chat:room:1", &alice).is_ok());
        assert_eq!(
            r.authorize("chat:room:", &alice).err(),
            Some(RouteError::Unmatched)
        );
        assert_eq!(
            r.authorize("nope:1", &alice).err(),
            Some(RouteError::Unmatched)
        );
        assert!(r.authorize("user:alice", &alice).is_ok());
        assert_eq!(
            r.authorize("user:bob", &alice).err(),
            Some(RouteError::Unauthorized)
        );
        let scoped = user("alice", Some(vec!["chat:room:1"]));
        assert!(r.authorize("chat:room:1", &scoped).is_ok());
        assert_eq!(
            r.authorize("chat:room:2", &scoped).err(),
            Some(RouteError::Unauthorized)
        );
        assert_eq!(
            r.authorize("user:alice", &scoped).err(),
            Some(RouteError::Unauthorized)
        );
        // admin: topics need the admin claim, and the channels claim still applies.
        assert_eq!(
            r.authorize("admin:dashboard", &alice).err(),
            Some(RouteError::Unauthorized)
        );
        let operator = Claims {
            admin: true,
            ..user("ops", None)
        };
        assert!(r.authorize("admin:dashboard", &operator).is_ok());
        let scoped_operator = Claims {
            admin: true,
            ..user("ops", Some(vec!["chat:*"]))
        };
        assert_eq!(
            r.authorize("admin:dashboard", &scoped_operator).err(),
            Some(RouteError::Unauthorized)
        );
    }
}
