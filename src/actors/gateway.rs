//! Gateway: the HTTP listener (WebSocket and long-poll endpoints, ops routes).
//!
//! Supervised by the RootSupervisor (permanent). It serves on a clone of the
//! listening socket it was given, so a restart keeps the same address. When the
//! server task ends with an error the actor fails and is restarted; on shutdown
//! it stops accepting.

use std::sync::Arc;

use axum::serve::ListenerExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::hub::Hub;

pub struct Gateway;

pub struct GatewayArgs {
    pub hub: Arc<Hub>,
    pub listener: Arc<std::net::TcpListener>,
}

pub enum GatewayMsg {
    /// The server task ended.
    Stopped(Result<(), String>),
}

pub struct GatewayState {
    server: JoinHandle<()>,
}

impl Actor for Gateway {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        let std_listener = args.listener.try_clone()?;
        std_listener.set_nonblocking(true)?;
        // TCP_NODELAY: a burst of small frames (a replay, a fan-out) must not wait
        // for the client's delayed ACK (Nagle: ~40 ms stalls were measured).
        let listener = tokio::net::TcpListener::from_std(std_listener)?.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let app = crate::http::app(args.hub.clone());
        let hub = args.hub;
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move { hub.shutting_down().await })
                .await
                .map_err(|e| e.to_string());
            let _ = myself.cast(GatewayMsg::Stopped(result));
        });
        Ok(GatewayState { server })
    }

    async fn handle(
        &self,
        myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        _state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::Stopped(Ok(())) => {
                myself.stop(Some("listener closed".into()));
                Ok(())
            }
            GatewayMsg::Stopped(Err(e)) => Err(format!("HTTP server failed: {e}").into()),
        }
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GatewayMsg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        state.server.abort();
        Ok(())
    }
}
