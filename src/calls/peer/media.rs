//! A Peer's media: publishing what its client sends (fan-out to subscribers),
//! writing what it subscribes to, keyframe requests, mutes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use str0m::format::CodecConfig;
use str0m::media::{KeyframeRequestKind, MediaKind, Mid, Pt, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Ssrc};

use super::{
    ArcExt, Forwarded, MAX_BACKLOG, MAX_PUBLISHED, OutState, PeerMsg, PeerState, Published,
    Subscriber,
};
use crate::actors::call::CallMsg;
use crate::calls::arc::codec::ArcCodec;
use crate::calls::{CallError, TrackId, TrackInfo, next_track_id};
use crate::metrics::Metrics;

impl PeerState {
    pub(super) fn publish(&mut self, mid: Mid, kind: MediaKind) {
        if self.published.len() >= MAX_PUBLISHED {
            tracing::warn!(participant = %self.participant, %mid, "too many published tracks; this one is not forwarded");
            return;
        }
        let id = next_track_id();
        self.published.insert(
            mid,
            Published {
                id,
                kind,
                subscribers: Vec::new(),
                last_keyframe_request: None,
                keyframe_due: None,
                paused: false,
                layer: None,
            },
        );
        self.calls.metrics.rtc_tracks.inc();
        // The codec the client lists first on this m-line (what it sends unless it switches).
        let codec = self.rtc.media(mid).and_then(|m| {
            let first = *m.remote_pts().first()?;
            let params = self.rtc.codec_config().find(|c| c.pt() == first)?;
            ArcCodec::of(params)
        });
        let _ = self.call.cast(CallMsg::Published(TrackInfo {
            id,
            participant: self.participant.clone(),
            user_id: self.user_id.clone(),
            kind,
            mid,
            codec,
            publisher: self.myself.clone(),
        }));
    }

    pub(super) fn unpublish(&mut self, mid: Mid) {
        if let Some(p) = self.published.remove(&mid) {
            self.calls.metrics.rtc_tracks.dec();
            let _ = self.call.cast(CallMsg::Unpublished(p.id));
        }
    }

    fn mid_of(&mut self, ssrc: Ssrc) -> Option<(Mid, Option<Rid>)> {
        if let Some(found) = self.ssrc_mids.get(&ssrc) {
            return Some(*found);
        }
        let found = self
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid()))?;
        self.ssrc_mids.insert(ssrc, found);
        Some(found)
    }

    /// A packet from our client on a published track: one `Arc` for every
    /// subscriber, unless its mailbox is full.
    pub(super) fn publish_rtp(&mut self, p: RtpPacket) {
        if p.payload.is_empty() {
            // Padding (bandwidth probing): nothing for subscribers.
            return;
        }
        let Some((mid, rid)) = self.mid_of(p.header.ssrc) else {
            return;
        };
        let Some(track) = self.published.get_mut(&mid) else {
            return;
        };
        self.calls.metrics.rtc_packets_in.inc();
        // Simulcast: one layer reaches subscribers (no layer switching yet).
        if let Some(rid) = rid
            && *track.layer.get_or_insert(rid) != rid
        {
            return;
        }
        if track.subscribers.is_empty() {
            return;
        }
        let pt = p.header.payload_type;
        let Some(params) = self.rtc.codec_config().find(|c| c.pt() == pt).copied() else {
            self.calls
                .metrics
                .rtc_dropped
                .with_label_values(&["unknown_pt"])
                .inc();
            return;
        };
        let ext = &p.header.ext_vals;
        let forwarded = Arc::new(Forwarded {
            track: track.id,
            kind: track.kind,
            params,
            ssrc: *p.header.ssrc,
            seq: *p.seq_no,
            time: p.header.timestamp,
            marker: p.header.marker,
            ext: ExtensionValues {
                audio_level: ext.audio_level,
                voice_activity: ext.voice_activity,
                video_orientation: ext.video_orientation,
                video_content_type: ext.video_content_type,
                ..Default::default()
            },
            arc: ArcExt::default(),
            payload: p.payload,
            received: p.timestamp,
        });
        fan_out(&track.subscribers, &forwarded, &self.calls.metrics);
    }

    pub(super) fn unsubscribe(&mut self, id: TrackId) {
        let Some(s) = self.subscribed.get_mut(&id) else {
            return;
        };
        match s.state {
            OutState::ToOpen => {
                self.subscribed.remove(&id);
            }
            OutState::Negotiating(m) | OutState::Open(m) => s.state = OutState::ToStop(m),
            OutState::ToStop(_) | OutState::NegotiatingStop(_) => {}
        }
    }

    /// The payload type our client negotiated on `mid` for the publisher's codec.
    fn pt_for(&self, mid: Mid, f: &Forwarded) -> Option<Pt> {
        let ours = self.rtc.media(mid)?.remote_pts();
        let offered: Vec<_> = self
            .rtc
            .codec_config()
            .params()
            .iter()
            .filter(|p| ours.contains(&p.pt()))
            .copied()
            .collect();
        CodecConfig::new_from_payload_params(offered)
            .match_params(f.params)
            .map(|p| p.pt())
    }

    /// Write a publisher's packet on our m-line for its track.
    pub(super) fn forward(&mut self, f: &Forwarded) {
        let Some(sub) = self.subscribed.get(&f.track) else {
            return;
        };
        let OutState::Open(mid) = sub.state else {
            return;
        };
        let in_pt = *f.params.pt();
        let pt = match sub.pts.iter().find(|(p, _)| *p == in_pt) {
            Some((_, pt)) => *pt,
            None => {
                let pt = self.pt_for(mid, f);
                if let Some(sub) = self.subscribed.get_mut(&f.track) {
                    sub.pts.push((in_pt, pt));
                }
                pt
            }
        };
        let Some(pt) = pt else {
            self.calls
                .metrics
                .rtc_dropped
                .with_label_values(&["codec"])
                .inc();
            return;
        };
        let Some(sub) = self.subscribed.get_mut(&f.track) else {
            return;
        };
        let Some(seq) = sub.seq.out(f.ssrc, f.seq) else {
            return;
        };
        let mut api = self.rtc.direct_api();
        let Some(tx) = api.stream_tx_by_mid(mid, None) else {
            return;
        };
        let write = RtpWrite::new(pt, seq.into(), f.time, f.received, f.payload.clone())
            .marker(f.marker)
            .ext_vals(f.ext.clone())
            .nackable(f.kind == MediaKind::Video);
        tx.write_rtp(write);
        let m = &self.calls.metrics;
        m.rtc_packets_forwarded.inc();
        m.rtc_bytes_forwarded.inc_by(f.payload.len() as u64);
    }

    /// Ask the publisher of a track we receive for a keyframe (video only).
    pub(super) fn want_keyframe(&self, id: TrackId) {
        if let Some(s) = self.subscribed.get(&id)
            && s.info.kind == MediaKind::Video
            && matches!(s.state, OutState::Open(_))
        {
            let _ = s
                .info
                .publisher
                .cast(PeerMsg::Keyframe(s.info.mid, KeyframeRequestKind::Pli));
        }
    }

    /// A subscriber wants a keyframe of our track on `mid`: ask our client now,
    /// or as soon as `calls.keyframe_interval_ms` since the last request allows.
    pub(super) fn keyframe(&mut self, mid: Mid, kind: KeyframeRequestKind) {
        if let Some(track) = self.published.get_mut(&mid)
            && track.kind == MediaKind::Video
        {
            track.keyframe_due = Some(merge_keyframe(track.keyframe_due, kind));
        }
        self.flush_keyframes(Instant::now());
    }

    fn keyframe_interval(&self) -> Duration {
        Duration::from_millis(self.calls.config.keyframe_interval_ms)
    }

    /// Send the keyframe requests whose time has come.
    pub(super) fn flush_keyframes(&mut self, now: Instant) {
        let interval = self.keyframe_interval();
        for (mid, track) in &mut self.published {
            let Some(kind) = track.keyframe_due else {
                continue;
            };
            if track
                .last_keyframe_request
                .is_some_and(|t| now.duration_since(t) < interval)
            {
                continue;
            }
            track.keyframe_due = None;
            track.last_keyframe_request = Some(now);
            let mut api = self.rtc.direct_api();
            if let Some(rx) = api.stream_rx_by_mid(*mid, track.layer) {
                rx.request_keyframe(kind);
                self.calls.metrics.rtc_keyframe_requests.inc();
            }
        }
    }

    /// When the next delayed keyframe request is due.
    pub(super) fn keyframe_wake(&self) -> Option<Instant> {
        let interval = self.keyframe_interval();
        self.published
            .values()
            .filter(|t| t.keyframe_due.is_some())
            .map(|t| {
                t.last_keyframe_request
                    .map_or(Instant::now(), |l| l + interval)
            })
            .min()
    }

    pub(super) fn on_mute(
        &mut self,
        kind: Option<MediaKind>,
        mid: Option<&str>,
        muted: bool,
    ) -> Result<(), CallError> {
        let tracks = self.published.iter().filter(|(m, track)| {
            kind.is_none_or(|k| k == track.kind) && mid.is_none_or(|x| x == m.to_string())
        });
        client_muted(&self.call, tracks.map(|(_, t)| t.id), muted)
    }
}

/// The client muted or unmuted these tracks of its own: the call tells the
/// others. None of them: `NoSuchTrack`.
pub(crate) fn client_muted(
    call: &ActorRef<CallMsg>,
    tracks: impl Iterator<Item = TrackId>,
    muted: bool,
) -> Result<(), CallError> {
    let mut any = false;
    for track in tracks {
        any = true;
        let _ = call.cast(CallMsg::Muted {
            track,
            muted,
            reason: "client",
        });
    }
    if any {
        Ok(())
    } else {
        Err(CallError::NoSuchTrack)
    }
}

/// Two keyframe requests waiting together: one FIR if either is a FIR.
pub(crate) fn merge_keyframe(
    due: Option<KeyframeRequestKind>,
    kind: KeyframeRequestKind,
) -> KeyframeRequestKind {
    match (due, kind) {
        (Some(KeyframeRequestKind::Fir), _) | (_, KeyframeRequestKind::Fir) => {
            KeyframeRequestKind::Fir
        }
        _ => KeyframeRequestKind::Pli,
    }
}

/// Add a subscriber to a track's list, once.
pub(crate) fn add_subscriber(list: &mut Vec<Subscriber>, subscriber: Subscriber) {
    if !list
        .iter()
        .any(|s| s.peer.get_id() == subscriber.peer.get_id())
    {
        list.push(subscriber);
    }
}

/// Hand one packet to every subscriber, unless its mailbox is full.
pub(crate) fn fan_out(subscribers: &[Subscriber], forwarded: &Arc<Forwarded>, metrics: &Metrics) {
    for s in subscribers {
        if s.backlog.load(Ordering::Relaxed) >= MAX_BACKLOG {
            metrics
                .rtc_dropped
                .with_label_values(&["slow_subscriber"])
                .inc();
            continue;
        }
        s.backlog.fetch_add(1, Ordering::Relaxed);
        if s.peer.cast(PeerMsg::Rtp(forwarded.clone())).is_err() {
            s.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Maps a publisher's sequence numbers to ours on one forwarded track.
#[derive(Debug, Default)]
pub(crate) struct SeqMap {
    /// The publisher SSRC being forwarded, and what is added to its numbers.
    source: Option<(u32, i64)>,
    /// The highest number we sent.
    last_out: Option<u64>,
    /// Numbers up to this were used by an earlier source: never again (the
    /// receiver's SRTP would see one index twice).
    floor: Option<u64>,
    /// Earlier sources: their late packets are dropped.
    retired: Vec<u32>,
}

impl SeqMap {
    /// Our sequence number for the publisher's packet `seq` from SSRC `ssrc`:
    /// the first source starts at rollover 0 (where the receiver's SRTP
    /// starts), a new source (the publisher replaced its track) continues
    /// right after the last number sent. Gaps stay gaps. None: too old.
    pub(crate) fn out(&mut self, ssrc: u32, seq: u64) -> Option<u64> {
        let offset = match self.source {
            Some((s, offset)) if s == ssrc => offset,
            _ if self.retired.contains(&ssrc) => return None,
            previous => {
                if let Some((old, _)) = previous {
                    if self.retired.len() == 8 {
                        self.retired.remove(0);
                    }
                    self.retired.push(old);
                }
                self.floor = self.last_out;
                let offset = match self.last_out {
                    None => -((seq & !0xffff) as i64),
                    Some(last) => last as i64 + 1 - seq as i64,
                };
                self.source = Some((ssrc, offset));
                offset
            }
        };
        let out = u64::try_from(seq as i64 + offset).ok()?;
        if self.floor.is_some_and(|f| out <= f) {
            return None;
        }
        self.last_out = Some(self.last_out.map_or(out, |l| l.max(out)));
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_start_in_the_first_rollover_and_continue_across_sources() {
        let mut s = SeqMap::default();
        // A long-running publisher (rollover 3) starts at rollover 0 for us.
        assert_eq!(s.out(1, 3 * 65536 + 100), Some(100));
        assert_eq!(s.out(1, 3 * 65536 + 103), Some(103)); // a gap stays a gap
        assert_eq!(s.out(1, 3 * 65536 + 101), Some(101)); // late, still numbered
        assert_eq!(s.out(1, 3 * 65536 - 5), None); // before our start
        // The publisher replaced its track: a new SSRC, numbers go on from 104.
        assert_eq!(s.out(2, 7), Some(104));
        assert_eq!(s.out(2, 8), Some(105));
        // Late packets of the old source, and the new one's from before its
        // first, would reuse numbers already sent: dropped.
        assert_eq!(s.out(1, 3 * 65536 + 102), None);
        assert_eq!(s.out(2, 6), None);
        assert_eq!(s.out(2, 9), Some(106));
    }
}
