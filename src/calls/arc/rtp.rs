//! ArcRTC packets in the clear (before SRTP protection, after its check):
//! RTP with the ArcRTC header extensions, and the RTCP the protocol uses
//! (docs/arcrtc.md §5). Built on webrtc-rs's `rtc-rtp` and `rtc-rtcp`.

use bytes::Bytes;
use rtc_rtcp::goodbye::Goodbye;
use rtc_rtcp::payload_feedbacks::full_intra_request::{FirEntry, FullIntraRequest};
use rtc_rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc_rtcp::receiver_report::ReceiverReport;
use rtc_rtcp::reception_report::ReceptionReport;
use rtc_rtcp::sender_report::SenderReport;
use rtc_rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc_rtp::header::{Extension, Header};
use rtc_shared::marshal::{Marshal, Unmarshal};

use super::wire::{HINTS_ID, SEND_TIME_ID, decode_send_time, encode_send_time};
use crate::calls::peer::ArcExt;

/// The one-byte header extension profile (RFC 8285).
const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// An RTP packet, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtp {
    pub pt: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub marker: bool,
    pub ext: ArcExt,
    pub payload: Bytes,
}

impl Rtp {
    pub fn parse(data: &[u8]) -> Option<Rtp> {
        let mut buf = data;
        let p = rtc_rtp::packet::Packet::unmarshal(&mut buf).ok()?;
        let h = &p.header;
        let mut ext = ArcExt::default();
        if h.extension && h.extension_profile == ONE_BYTE_PROFILE {
            ext.hints = h
                .get_extension(HINTS_ID)
                .and_then(|b| <[u8; 3]>::try_from(&b[..]).ok());
            ext.send_time = h
                .get_extension(SEND_TIME_ID)
                .and_then(|b| decode_send_time(&b));
        }
        Some(Rtp {
            pt: h.payload_type,
            seq: h.sequence_number,
            timestamp: h.timestamp,
            ssrc: h.ssrc,
            marker: h.marker,
            ext,
            payload: p.payload,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut extensions = Vec::new();
        if let Some(h) = self.ext.hints {
            extensions.push(Extension {
                id: HINTS_ID,
                payload: Bytes::copy_from_slice(&h),
            });
        }
        if let Some(t) = self.ext.send_time {
            extensions.push(Extension {
                id: SEND_TIME_ID,
                payload: Bytes::copy_from_slice(&encode_send_time(t)),
            });
        }
        let packet = rtc_rtp::packet::Packet {
            header: Header {
                version: 2,
                extension: !extensions.is_empty(),
                extension_profile: if extensions.is_empty() {
                    0
                } else {
                    ONE_BYTE_PROFILE
                },
                extensions,
                marker: self.marker,
                payload_type: self.pt,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Header::default()
            },
            payload: self.payload.clone(),
        };
        packet.marshal().map(|b| b.to_vec()).unwrap_or_default()
    }
}

/// What an RTCP compound packet says, as far as ArcRTC cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rtcp {
    /// A sender or receiver report (also a hello or a keep-alive).
    Report {
        sender: u32,
        blocks: Vec<ReceptionReport>,
    },
    Nack {
        media: u32,
        lost: Vec<u16>,
    },
    Pli {
        media: u32,
    },
    Fir {
        media: u32,
    },
    Bye,
}

/// Parse a compound packet; `None` when it is not valid RTCP.
pub fn parse_rtcp(data: &[u8]) -> Option<Vec<Rtcp>> {
    let mut buf = data;
    let packets = rtc_rtcp::packet::unmarshal(&mut buf).ok()?;
    let mut out = Vec::new();
    for p in packets {
        let any = p.as_any();
        if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            out.push(Rtcp::Report {
                sender: rr.ssrc,
                blocks: rr.reports.clone(),
            });
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            out.push(Rtcp::Report {
                sender: sr.ssrc,
                blocks: sr.reports.clone(),
            });
        } else if let Some(n) = any.downcast_ref::<TransportLayerNack>() {
            let lost = n.nacks.iter().flat_map(|p| p.packet_list()).collect();
            out.push(Rtcp::Nack {
                media: n.media_ssrc,
                lost,
            });
        } else if let Some(p) = any.downcast_ref::<PictureLossIndication>() {
            out.push(Rtcp::Pli {
                media: p.media_ssrc,
            });
        } else if let Some(f) = any.downcast_ref::<FullIntraRequest>() {
            for e in &f.fir {
                out.push(Rtcp::Fir { media: e.ssrc });
            }
        } else if any.downcast_ref::<Goodbye>().is_some() {
            out.push(Rtcp::Bye);
        }
    }
    Some(out)
}

fn marshal(packets: Vec<Box<dyn rtc_rtcp::packet::Packet>>) -> Vec<u8> {
    rtc_rtcp::packet::marshal(&packets)
        .map(|b| b.to_vec())
        .unwrap_or_default()
}

/// A receiver report from `sender` (the hello and keep-alive when `blocks` is empty).
pub fn receiver_report(sender: u32, blocks: Vec<ReceptionReport>) -> Vec<u8> {
    marshal(vec![Box::new(ReceiverReport {
        ssrc: sender,
        reports: blocks,
        ..Default::default()
    })])
}

/// A generic NACK for `lost` packets of `media`.
pub fn nack(sender: u32, media: u32, lost: &[u16]) -> Vec<u8> {
    marshal(vec![
        Box::new(ReceiverReport {
            ssrc: sender,
            ..Default::default()
        }),
        Box::new(TransportLayerNack {
            sender_ssrc: sender,
            media_ssrc: media,
            nacks: nack_pairs_from_sequence_numbers(lost),
        }),
    ])
}

/// A keyframe request: PLI, or FIR (with its request number) when `fir` is set.
pub fn keyframe_request(sender: u32, media: u32, fir: Option<u8>) -> Vec<u8> {
    let request: Box<dyn rtc_rtcp::packet::Packet> = match fir {
        None => Box::new(PictureLossIndication {
            sender_ssrc: sender,
            media_ssrc: media,
        }),
        Some(n) => Box::new(FullIntraRequest {
            sender_ssrc: sender,
            media_ssrc: 0,
            fir: vec![FirEntry {
                ssrc: media,
                sequence_number: n,
            }],
        }),
    };
    marshal(vec![
        Box::new(ReceiverReport {
            ssrc: sender,
            ..Default::default()
        }),
        request,
    ])
}

/// The end of `sender`'s session.
pub fn bye(sender: u32) -> Vec<u8> {
    marshal(vec![
        Box::new(ReceiverReport {
            ssrc: sender,
            ..Default::default()
        }),
        Box::new(Goodbye {
            sources: vec![sender],
            reason: Bytes::new(),
        }),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::arc::wire::{Packet, classify};

    #[test]
    fn rtp_keeps_the_arcrtc_extensions_through_a_round_trip() {
        let rtp = Rtp {
            pt: 111,
            seq: 65535,
            timestamp: 960,
            ssrc: 0xdead_beef,
            marker: true,
            ext: ArcExt {
                hints: Some([0b1011_1000, 0, 32]),
                send_time: Some(1_700_000_000_000_001),
            },
            payload: Bytes::from_static(b"opus"),
        };
        let bytes = rtp.to_bytes();
        assert_eq!(classify(&bytes), Some(Packet::Rtp { ssrc: 0xdead_beef }));
        assert_eq!(&bytes[12..14], &[0xBE, 0xDE]);
        assert_eq!(Rtp::parse(&bytes), Some(rtp.clone()));
        let plain = Rtp {
            ext: ArcExt::default(),
            ..rtp
        };
        assert_eq!(plain.to_bytes().len(), 12 + 4);
        assert_eq!(Rtp::parse(&plain.to_bytes()), Some(plain));
        assert_eq!(Rtp::parse(&[0x80, 111, 0]), None);
    }

    #[test]
    fn rtcp_feedback_is_built_and_read_back() {
        assert_eq!(
            parse_rtcp(&nack(7, 9, &[100, 102, 117, 300])),
            Some(vec![
                Rtcp::Report {
                    sender: 7,
                    blocks: vec![]
                },
                Rtcp::Nack {
                    media: 9,
                    lost: vec![100, 102, 117, 300]
                }
            ])
        );
        let pli = parse_rtcp(&keyframe_request(7, 9, None)).unwrap();
        assert_eq!(pli[1], Rtcp::Pli { media: 9 });
        let fir = parse_rtcp(&keyframe_request(7, 9, Some(3))).unwrap();
        assert_eq!(fir[1], Rtcp::Fir { media: 9 });
        assert_eq!(parse_rtcp(&bye(7)).unwrap()[1], Rtcp::Bye);
        let rr = receiver_report(7, vec![]);
        assert_eq!(classify(&rr), Some(Packet::Rtcp { ssrc: 7 }));
        assert_eq!(parse_rtcp(&[0x80, 201, 0]), None);
    }
}
