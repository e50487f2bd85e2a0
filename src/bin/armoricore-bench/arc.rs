//! The ArcRTC side of the `calls` scenario: native clients (the library's SRTP
//! and RTP, one UDP socket each) in one call through the node, publishing the
//! same packets as the WebRTC clients (send time and sender in the payload).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use armoricore::calls::arc::rtp::{self, Rtp};
use armoricore::calls::arc::srtp::{Keys, Profile, Session};
use armoricore::calls::arc::wire::{Packet, classify};
use armoricore::calls::peer::ArcExt;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::calls::Meter;

/// Join `call` over the Phoenix socket with `arc_join`; the reply, and a task
/// holding the WebSocket open until `stop`.
async fn join(
    addr: SocketAddr,
    token: &str,
    call: &str,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(Value, tokio::task::JoinHandle<()>)> {
    let url = format!("ws://{addr}/socket/websocket?vsn=2.0.0&token={token}");
    let (ws, _) = tokio_tungstenite::connect_async(url).await?;
    let (mut sink, mut stream) = ws.split();
    let topic = format!("signaling:call:{call}");
    let frame = |r: u64, event: &str, payload: Value| {
        WsMessage::text(json!(["1", r.to_string(), topic, event, payload]).to_string())
    };
    sink.send(frame(1, "phx_join", json!({}))).await?;
    sink.send(frame(
        2,
        "arc_join",
        json!({"version": 1, "codecs": ["opus"], "publish": [{"kind": "audio", "codec": "opus"}],
               "srtp": ["AEAD_AES_128_GCM"], "receive": true}),
    ))
    .await?;
    let reply = loop {
        let Some(Ok(WsMessage::Text(text))) = stream.next().await else {
            anyhow::bail!("the node closed the signaling socket");
        };
        let f: Value = serde_json::from_str(text.as_str())?;
        if f[3] == "phx_reply" {
            anyhow::ensure!(f[4]["status"] == "ok", "refused: {}", f[4]);
            if f[1] == "2" {
                break f[4]["response"].clone();
            }
        }
    };
    let keep = tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_secs(20));
        loop {
            tokio::select! {
                m = stream.next() => if m.is_none() { return },
                _ = beat.tick() => {
                    let hb = json!([null, "hb", "phoenix", "heartbeat", {}]).to_string();
                    if sink.send(WsMessage::text(hb)).await.is_err() { return }
                }
                _ = stop.changed() => return,
            }
        }
    });
    Ok((reply, keep))
}

/// One native participant: publishes `pps` packets of `size` bytes, records
/// the latency of what it receives, until `stop`.
pub async fn participant(
    index: usize,
    addr: SocketAddr,
    token: String,
    meter: Meter,
    epoch: Instant,
    (pps, size): (u32, usize),
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (reply, _signaling) = join(addr, &token, "bench-arc", stop.clone()).await?;
    let keys = |who: &str| Keys::from_json(&reply["srtp"][who]);
    let mut srtp = Session::new(Profile::AeadAes128Gcm, &keys("client")?, &keys("node")?)?;
    let ssrc = reply["publish"][0]["ssrc"].as_u64().context("ssrc")? as u32;
    let rtcp_ssrc = reply["rtcp_ssrc"].as_u64().context("rtcp_ssrc")? as u32;
    let e = &reply["endpoint"];
    let endpoint: SocketAddr =
        format!("{}:{}", e["host"].as_str().context("host")?, e["port"]).parse()?;
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(endpoint).await?;
    let hello = rtp::receiver_report(rtcp_ssrc, Vec::new());
    let mut flowing = false;
    let mut seq: u16 = rand::random_range(0..32_768);
    let mut buf = vec![0u8; 2048];
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(pps)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut hello_every = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            r = socket.recv(&mut buf) => {
                let Ok(n) = r else { continue };
                match classify(&buf[..n]) {
                    Some(Packet::Rtp { .. }) => {
                        let Ok(clear) = srtp.unprotect_rtp(&buf[..n]) else { continue };
                        if let Some(p) = Rtp::parse(&clear) {
                            meter.record(index, &p.payload, epoch);
                        }
                    }
                    Some(Packet::Rtcp { .. }) => {
                        flowing |= srtp.unprotect_rtcp(&buf[..n]).is_ok();
                    }
                    None => {}
                }
            }
            _ = hello_every.tick(), if !flowing => {
                socket.send(&srtp.protect_rtcp(&hello)?).await?;
            }
            _ = ticker.tick(), if flowing => {
                let payload = super::calls::stamped(index, size, epoch);
                seq = seq.wrapping_add(1);
                let packet = Rtp {
                    pt: 111,
                    seq,
                    timestamp: u32::from(seq).wrapping_mul(960),
                    ssrc,
                    marker: false,
                    ext: ArcExt::default(),
                    payload: Bytes::from(payload),
                };
                let _ = socket.try_send(&srtp.protect_rtp(&packet.to_bytes())?);
            }
            _ = stop.changed() => return Ok(()),
        }
    }
}
