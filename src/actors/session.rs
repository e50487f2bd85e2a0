//! Session: one actor per client connection, whatever its transport.
//!
//! Supervised by the SessionSupervisor with the `Temporary` policy: a session that
//! fails is not restarted (its socket is closed with 1011 and the client reconnects,
//! as phoenix.js does by itself). It owns the connection's joined channels, runs
//! their handlers, and contains their failures: a channel that panics or fails gets
//! `phx_error` and is dropped; the other channels and the connection carry on.
//!
//! Its mailbox carries decoded inbound frames (each acknowledged, so a fast client
//! cannot queue without bound) and control messages. Outbound frames never pass
//! through it: they go to the connection's [`Outbox`].

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde_json::{Value, json};

use crate::channels::{Channel, ChannelCtx, ChannelError, Reply, RouteError};
use crate::history::{Since, join_response, last_from_join};
use crate::hub::{Hub, SessionEntry};
use crate::limits::TokenBucket;
use crate::protocols::jwt::Claims;
use crate::protocols::phoenix::{self, Frame, Message, Vsn, events};
use crate::pubsub::{Outbox, SessionId, Subscriber, offer};

/// The session actor.
pub struct Session;

pub struct SessionArgs {
    pub hub: Arc<Hub>,
    pub user: Arc<Claims>,
    pub vsn: Vsn,
    pub outbox: Outbox,
    /// `websocket` or `longpoll` (a metrics label).
    pub transport: &'static str,
}

pub enum SessionMsg {
    /// A decoded client frame; the port is answered once it has been handled.
    Inbound(Message, RpcReplyPort<()>),
}

struct Joined {
    join_ref: Option<String>,
    channel: Arc<dyn Channel>,
}

pub struct SessionState {
    /// Set by `post_stop`: the session ended normally.
    stopped: bool,
    id: SessionId,
    hub: Arc<Hub>,
    user: Arc<Claims>,
    vsn: Vsn,
    outbox: Outbox,
    channels: HashMap<String, Joined>,
    joins: TokenBucket,
    /// Client events allowed to this connection.
    events: TokenBucket,
}

impl SessionState {
    fn ctx<'a>(&'a self, topic: &'a str, join_ref: Option<&'a str>) -> ChannelCtx<'a> {
        ChannelCtx {
            topic,
            join_ref,
            user: &self.user,
            session: self.id,
            vsn: self.vsn,
            outbox: &self.outbox,
            hub: &self.hub,
        }
    }

    fn send(&self, frame: Frame) {
        offer(&self.outbox, frame, &self.hub.metrics);
    }

    fn reply(&self, m: &Message, reply: Reply) {
        let (ok, response) = match reply {
            Reply::Ok(v) => (true, v),
            Reply::Error(v) => (false, v),
        };
        self.send(phoenix::reply(
            self.vsn,
            m.join_ref.as_deref(),
            m.ref_.as_deref(),
            &m.topic,
            ok,
            response,
        ));
    }

    /// A channel-level event with the channel's join_ref as both refs
    /// (`phx_close`, `phx_error`), as Phoenix sends them.
    fn channel_event(&self, topic: &str, join_ref: Option<&str>, event: &str) {
        self.send(phoenix::encode(
            self.vsn,
            join_ref,
            join_ref,
            topic,
            event,
            &json!({}),
        ));
    }

    /// Forget a channel's subscription and presence, and tell the channel.
    fn teardown(&self, topic: &str, joined: &Joined) {
        self.hub.pubsub.unsubscribe(topic, self.id);
        self.hub.presence.untrack(topic, self.id);
        terminate(&self.hub, topic, self.id, joined);
    }

    /// A channel failed: tell the client (`phx_error`; phoenix.js rejoins) and drop it.
    fn crash_channel(&mut self, topic: &str, why: &str) {
        if let Some(joined) = self.channels.remove(topic) {
            tracing::error!(session = self.id, topic, reason = why, "channel crashed");
            self.teardown(topic, &joined);
            self.channel_event(topic, joined.join_ref.as_deref(), events::ERROR);
            self.hub
                .metrics
                .restarts
                .with_label_values(&["channels"])
                .inc();
        }
    }

    async fn dispatch(&mut self, m: Message) -> Result<(), ActorProcessingErr> {
        if m.topic == events::HEARTBEAT_TOPIC && m.event == events::HEARTBEAT {
            self.reply(&m, Reply::Ok(json!({})));
            return Ok(());
        }
        match m.event.as_str() {
            events::JOIN => {
                self.join(m).await;
                Ok(())
            }
            events::LEAVE => {
                self.leave(&m);
                Ok(())
            }
            _ => {
                // Connection first, then the user's bucket shared by all their sockets.
                if !self.events.take() || !self.hub.user_limits.take(&self.user.user_id) {
                    self.hub.metrics.rate_limited.inc();
                    self.reply(&m, Reply::error("rate_limited"));
                    return Ok(());
                }
                self.handle_in(m).await
            }
        }
    }

    async fn join(&mut self, m: Message) {
        let topic = m.topic.clone();
        if let Some(old) = self.channels.remove(&topic) {
            // Duplicate join: close the existing channel, then join anew (Phoenix does the same).
            self.teardown(&topic, &old);
            self.channel_event(&topic, old.join_ref.as_deref(), events::CLOSE);
        }
        let refused = |this: &Self, reason: String| {
            this.hub.metrics.joins.with_label_values(&["error"]).inc();
            this.reply(&m, Reply::error(reason));
        };
        let max = self.hub.config.socket.max_channels;
        if self.channels.len() >= max {
            return refused(
                self,
                format!("too many channels (at most {max} per connection)"),
            );
        }
        if !self.joins.take() {
            return refused(self, "join rate exceeded, retry later".into());
        }
        let channel = match self.hub.router.authorize(&topic, &self.user) {
            Ok(route) => route.channel.clone(),
            Err(RouteError::Unmatched) => return refused(self, "unmatched topic".into()),
            Err(RouteError::Unauthorized) => return refused(self, "unauthorized".into()),
        };
        let ctx = self.ctx(&topic, m.join_ref.as_deref());
        let joined = AssertUnwindSafe(channel.join(&ctx, &m.payload))
            .catch_unwind()
            .await;
        match joined {
            Ok(Ok(response)) => {
                self.hub.metrics.joins.with_label_values(&["ok"]).inc();
                // Subscribe, reply {offset, epoch, recovered?} and replay what the
                // client missed, atomically (see crate::history).
                let since = Since::from_join(&m.payload);
                let last = last_from_join(&m.payload);
                let subscriber = Subscriber {
                    session: self.id,
                    vsn: self.vsn,
                    outbox: self.outbox.clone(),
                };
                let vsn = self.vsn;
                self.hub
                    .history
                    .join_any(
                        &topic,
                        subscriber,
                        since.as_ref(),
                        last,
                        &self.hub.metrics,
                        |state| {
                            let response = join_response(response, state);
                            phoenix::reply(
                                vsn,
                                m.join_ref.as_deref(),
                                m.ref_.as_deref(),
                                &topic,
                                true,
                                response,
                            )
                        },
                    )
                    .await;
                let after = AssertUnwindSafe(channel.after_join(&ctx))
                    .catch_unwind()
                    .await;
                self.channels.insert(
                    topic.clone(),
                    Joined {
                        join_ref: m.join_ref.clone(),
                        channel,
                    },
                );
                match after {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => self.crash_channel(&topic, &e.to_string()),
                    Err(panic) => self.crash_channel(&topic, &panic_message(&panic)),
                }
            }
            Ok(Err(response)) => {
                self.hub.metrics.joins.with_label_values(&["error"]).inc();
                self.reply(&m, Reply::Error(response));
            }
            Err(panic) => {
                tracing::error!(session = self.id, topic, reason = %panic_message(&panic), "join crashed");
                self.hub
                    .metrics
                    .restarts
                    .with_label_values(&["channels"])
                    .inc();
                refused(self, "join crashed".into());
            }
        }
    }

    fn leave(&mut self, m: &Message) {
        let joined = self.channels.remove(&m.topic);
        if let Some(joined) = &joined {
            self.teardown(&m.topic, joined);
        }
        self.reply(m, Reply::Ok(json!({})));
        if let Some(joined) = joined {
            self.channel_event(&m.topic, joined.join_ref.as_deref(), events::CLOSE);
        }
    }

    async fn handle_in(&mut self, m: Message) -> Result<(), ActorProcessingErr> {
        let Some(joined) = self.channels.get(&m.topic) else {
            self.reply(&m, Reply::error("unmatched topic"));
            return Ok(());
        };
        let channel = joined.channel.clone();
        let join_ref = joined.join_ref.clone();
        let Message {
            join_ref: msg_join_ref,
            ref_,
            topic,
            event,
            payload,
        } = m;
        let ctx = self.ctx(&topic, join_ref.as_deref());
        let outcome = AssertUnwindSafe(channel.handle_in(&ctx, &event, payload))
            .catch_unwind()
            .await;
        match outcome {
            Ok(Ok(Some(reply))) => {
                let m = Message {
                    join_ref: msg_join_ref,
                    ref_,
                    topic,
                    event,
                    payload: Value::Null,
                };
                self.reply(&m, reply);
            }
            Ok(Ok(None)) => {}
            Ok(Err(ChannelError::Failed(why))) => self.crash_channel(&topic, &why),
            Err(panic) => self.crash_channel(&topic, &panic_message(&panic)),
            Ok(Err(ChannelError::Fatal(why))) => {
                return Err(format!("channel {topic}: {why}").into());
            }
        }
        Ok(())
    }
}

/// Run a channel's `terminate`, containing a panic (it may run in `Drop`).
fn terminate(hub: &Arc<Hub>, topic: &str, session: SessionId, joined: &Joined) {
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
        joined.channel.terminate(hub, topic, session)
    }));
    if let Err(panic) = run {
        tracing::error!(session, topic, reason = %panic_message(&panic), "channel terminate crashed");
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let id = myself.get_id().pid();
        let socket = &args.hub.config.socket;
        let joins = TokenBucket::new(socket.join_rate_per_s, socket.join_burst);
        let limits = &args.hub.config.limits;
        let events = TokenBucket::new(
            limits.connection_events_per_s,
            limits.connection_events_burst,
        );
        args.hub.register_session(
            id,
            SessionEntry {
                outbox: args.outbox.clone(),
                transport: args.transport,
                user_id: Arc::from(args.user.user_id.as_str()),
            },
        );
        if args.hub.is_shutting_down() {
            // Registered after shutdown closed every socket: close this one too.
            args.outbox.close(1001, "server shutting down");
        }
        Ok(SessionState {
            stopped: false,
            id,
            hub: args.hub,
            user: args.user,
            vsn: args.vsn,
            outbox: args.outbox,
            channels: HashMap::new(),
            joins,
            events,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Inbound(m, ack) => {
                state.hub.metrics.messages_in.inc();
                let result = state.dispatch(m).await;
                let _ = ack.send(());
                result
            }
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.stopped = true;
        Ok(())
    }
}

/// Cleanup runs when the state is dropped, which happens on every way out: a
/// normal stop, a failure (ractor then skips `post_stop`), a kill, or a start
/// that failed after `pre_start`.
impl Drop for SessionState {
    fn drop(&mut self) {
        for (topic, joined) in &self.channels {
            self.hub.pubsub.unsubscribe(topic, self.id);
            terminate(&self.hub, topic, self.id, joined);
        }
        self.hub.presence.untrack_session(self.id);
        self.hub.forget_session(self.id);
        if self.hub.is_shutting_down() {
            self.outbox.close(1001, "server shutting down");
        } else if self.stopped {
            // The transport ended the session: its client is gone or being closed.
            self.outbox.close(1000, "");
        } else {
            self.outbox.close_now(1011, "internal error");
        }
    }
}
