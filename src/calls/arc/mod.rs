//! ArcRTC: the native media protocol (docs/arcrtc.md is the specification).
//! RTP/RTCP over UDP, SRTP-protected with keys the node hands out over the
//! call's signaling channel, one UDP port demultiplexed by SSRC.
//!
//! Built so far: the wire details ([`wire`]: packet classification, the hints
//! and send-time header extensions) and the per-session SRTP state ([`srtp`]).

pub mod srtp;
pub mod wire;
