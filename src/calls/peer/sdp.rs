//! A Peer's negotiation: the client's offers and answers, trickled candidates,
//! and the server's own offers that add and remove forwarded tracks.
//!
//! One server offer at a time; the server is the polite side of glare. Any
//! offer that dies (glare, a refused SDP, no answer within [`OFFER_TIMEOUT`])
//! puts its changes back to be offered again.

use std::time::{Duration, Instant};

use serde_json::json;
use str0m::Candidate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::Direction;

use super::{OutState, PeerState};
use crate::calls::{CallError, kind_name};

/// A server offer not answered within this is dropped and made again.
pub(super) const OFFER_TIMEOUT: Duration = Duration::from_secs(10);

/// The server offer waiting for the client's answer.
pub(super) struct Pending {
    pub id: u64,
    pub offer: SdpPendingOffer,
    pub at: Instant,
}

fn sdp_error(e: impl std::fmt::Display) -> CallError {
    CallError::Sdp(e.to_string())
}

impl PeerState {
    pub(super) fn on_offer(&mut self, sdp: &str) -> Result<(), CallError> {
        let offer = SdpOffer::from_sdp_string(sdp).map_err(sdp_error)?;
        // str0m drops a pending server offer on any accept_offer, even a failed one.
        self.abandon_offer();
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(sdp_error)?;
        // An ICE restart brings new local credentials: route checks by them.
        let ufrag = self.rtc.direct_api().local_ice_credentials().ufrag;
        self.endpoint.set_ufrag(&ufrag);
        self.negotiated = true;
        self.signal.push(
            "call_answer",
            &json!({"sdp": answer.to_sdp_string(), "type": "answer"}),
        );
        Ok(())
    }

    pub(super) fn on_answer(&mut self, sdp: &str, offer_id: Option<u64>) -> Result<(), CallError> {
        let Some(pending) = &self.pending else {
            return Err(CallError::NoPendingOffer);
        };
        if let Some(got) = offer_id
            && got != pending.id
        {
            return Err(CallError::StaleAnswer {
                got,
                pending: pending.id,
            });
        }
        let answer = SdpAnswer::from_sdp_string(sdp).map_err(sdp_error)?;
        let pending = self.pending.take().expect("checked above");
        if let Err(e) = self.rtc.sdp_api().accept_answer(pending.offer, answer) {
            self.revert_negotiating();
            return Err(sdp_error(e));
        }
        let mut opened = Vec::new();
        self.subscribed.retain(|id, s| match s.state {
            OutState::Negotiating(m) => {
                s.state = OutState::Open(m);
                s.pts.clear();
                opened.push(*id);
                true
            }
            OutState::NegotiatingStop(_) => false,
            _ => true,
        });
        for id in opened {
            self.want_keyframe(id);
        }
        Ok(())
    }

    pub(super) fn on_candidate(&mut self, candidate: &str) -> Result<(), CallError> {
        let line = candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            // End of candidates.
            return Ok(());
        }
        let c =
            Candidate::from_sdp_string(line).map_err(|e| CallError::Candidate(e.to_string()))?;
        self.rtc.add_remote_candidate(c);
        Ok(())
    }

    /// Forget the server offer in flight, if any, and put its changes back.
    pub(super) fn abandon_offer(&mut self) {
        if self.pending.take().is_some() {
            self.revert_negotiating();
        }
    }

    fn revert_negotiating(&mut self) {
        // Added m-lines were never applied: offer them again. Stops take effect
        // in the session at once (str0m), so those are done.
        self.subscribed.retain(|_, s| match s.state {
            OutState::Negotiating(_) => {
                s.state = OutState::ToOpen;
                true
            }
            OutState::NegotiatingStop(_) => false,
            _ => true,
        });
    }

    /// A server offer the client never answered: drop it and offer again.
    pub(super) fn expire_offer(&mut self, now: Instant) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| now.duration_since(p.at) >= OFFER_TIMEOUT)
        {
            tracing::info!(participant = %self.participant, "server offer not answered; offering again");
            self.abandon_offer();
        }
    }

    /// Offer the client our track changes, if it is our turn. True when the
    /// session changed (the caller drains it).
    pub(super) fn negotiate(&mut self) -> bool {
        if !self.negotiated || self.pending.is_some() || !self.rtc.is_alive() {
            return false;
        }
        let mut change = self.rtc.sdp_api();
        for s in self.subscribed.values_mut() {
            match s.state {
                OutState::ToOpen => {
                    let mid = change.add_media(
                        s.info.kind,
                        Direction::SendOnly,
                        Some(s.info.participant.to_string()),
                        Some(format!("{}-{}", s.info.participant, s.info.id)),
                        None,
                    );
                    s.state = OutState::Negotiating(mid);
                }
                OutState::ToStop(mid) if self.published.contains_key(&mid) => {
                    // The client publishes on this m-line too (a browser's
                    // addTrack reused it): stop sending, keep the m-line.
                    change.set_direction(mid, Direction::RecvOnly);
                    s.state = OutState::NegotiatingStop(mid);
                }
                OutState::ToStop(mid) => {
                    change.stop_media(mid);
                    s.state = OutState::NegotiatingStop(mid);
                }
                _ => {}
            }
        }
        if !change.has_changes() {
            // Only stops that needed no offer: they are done.
            self.subscribed
                .retain(|_, s| !matches!(s.state, OutState::NegotiatingStop(_)));
            return false;
        }
        let Some((offer, pending)) = change.apply() else {
            self.subscribed
                .retain(|_, s| !matches!(s.state, OutState::NegotiatingStop(_)));
            return true;
        };
        let tracks: Vec<_> = self
            .subscribed
            .values()
            .filter_map(|s| match s.state {
                OutState::Negotiating(mid) | OutState::Open(mid) => Some(json!({
                    "mid": mid.to_string(),
                    "participant_id": s.info.participant,
                    "user_id": s.info.user_id,
                    "kind": kind_name(s.info.kind),
                    "track_id": s.info.id,
                })),
                _ => None,
            })
            .collect();
        self.offers += 1;
        self.pending = Some(Pending {
            id: self.offers,
            offer: pending,
            at: Instant::now(),
        });
        self.signal.push(
            "call_offer",
            &json!({
                "sdp": offer.to_sdp_string(),
                "type": "offer",
                "offer_id": self.offers,
                "tracks": tracks,
            }),
        );
        true
    }
}
