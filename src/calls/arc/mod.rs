//! ArcRTC: the native media protocol (docs/arcrtc.md is the specification).
//! RTP/RTCP over UDP, SRTP-protected with keys the node hands out over the
//! call's signaling channel, one UDP port demultiplexed by SSRC.
//!
//! ```text
//! arc_join ─▶ Call ─spawns─▶ ArcPeer (one per ArcRTC participant, in place of its WebRTC Peer)
//! UDP ─▶ ArcNet (SSRC → session) ─▶ ArcPeer: SRTP check ─▶ Arc<Forwarded> ─▶ subscribers (Peer or ArcPeer)
//! ```

pub mod client;
pub mod codec;
pub mod media_file;
pub mod net;
pub mod peer;
pub mod receiver;
pub mod rtp;
pub mod srtp;
pub mod wire;
