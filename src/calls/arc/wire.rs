//! ArcRTC on the wire (docs/arcrtc.md §3, §5.1): which session a datagram
//! belongs to, and the two header extensions.

/// What a datagram on the ArcRTC port is, by its first bytes (RFC 5761 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    /// RTP from the stream `ssrc`.
    Rtp { ssrc: u32 },
    /// RTCP (a compound packet) sent by `ssrc`.
    Rtcp { ssrc: u32 },
}

/// Classify an (S)RTP or (S)RTCP datagram; `None` for anything else.
pub fn classify(data: &[u8]) -> Option<Packet> {
    if data.len() < 8 || data[0] >> 6 != 2 {
        return None;
    }
    let ssrc = |at: usize| u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    if (200..=206).contains(&data[1]) {
        Some(Packet::Rtcp { ssrc: ssrc(4) })
    } else if data.len() >= 12 {
        Some(Packet::Rtp { ssrc: ssrc(8) })
    } else {
        None
    }
}

/// Header extension ids, fixed in v1.
pub const HINTS_ID: u8 = 1;
pub const SEND_TIME_ID: u8 = 2;
pub const HINTS_URI: &str = "urn:armoricore:arcrtc:hints";
pub const SEND_TIME_URI: &str = "urn:armoricore:arcrtc:send-time";

/// The quality / priority / bandwidth hints a sender attaches to its media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Hints {
    /// 0 low, 1 medium, 2 high, 3 source.
    pub quality: u8,
    /// 0 droppable … 3 must not drop.
    pub priority: u8,
    /// This packet starts a keyframe.
    pub keyframe: bool,
    /// What the encoder targets now, in kbit/s.
    pub bandwidth_kbps: u16,
}

impl Hints {
    pub fn encode(&self) -> [u8; 3] {
        let flags = (self.quality.min(3) << 6)
            | (self.priority.min(3) << 4)
            | (u8::from(self.keyframe) << 3);
        let bw = self.bandwidth_kbps.to_be_bytes();
        [flags, bw[0], bw[1]]
    }

    pub fn decode(data: &[u8]) -> Option<Hints> {
        let [flags, b0, b1] = <[u8; 3]>::try_from(data).ok()?;
        Some(Hints {
            quality: flags >> 6,
            priority: (flags >> 4) & 0b11,
            keyframe: flags & 0b1000 != 0,
            bandwidth_kbps: u16::from_be_bytes([b0, b1]),
        })
    }
}

/// The send-time extension: microseconds since the Unix epoch, big-endian.
pub fn encode_send_time(micros: u64) -> [u8; 8] {
    micros.to_be_bytes()
}

pub fn decode_send_time(data: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(data).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_are_told_apart_by_their_first_bytes() {
        let mut rtp = vec![0x80, 111, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        assert_eq!(classify(&rtp), Some(Packet::Rtp { ssrc: 0xdeadbeef }));
        rtp[1] = 0x80 | 96; // marker set
        assert_eq!(classify(&rtp), Some(Packet::Rtp { ssrc: 0xdeadbeef }));
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0];
        assert_eq!(classify(&rr), Some(Packet::Rtcp { ssrc: 9 }));
        let nack = [0x81, 205, 0, 3, 0, 0, 1, 0, 0, 0, 0, 2];
        assert_eq!(classify(&nack), Some(Packet::Rtcp { ssrc: 256 }));
        // STUN (first byte 0-3), DTLS (20-63), too short.
        assert_eq!(classify(&[0x00; 20]), None);
        assert_eq!(classify(&[22; 20]), None);
        assert_eq!(classify(&[0x80, 111, 0]), None);
    }

    #[test]
    fn hints_round_trip_in_three_bytes() {
        let h = Hints {
            quality: 2,
            priority: 3,
            keyframe: true,
            bandwidth_kbps: 2500,
        };
        let bytes = h.encode();
        assert_eq!(bytes, [0b1011_1000, 0x09, 0xc4]);
        assert_eq!(Hints::decode(&bytes), Some(h));
        assert_eq!(Hints::decode(&[0, 0]), None);
        // Out-of-range values are clamped, never spill into other fields.
        let wide = Hints {
            quality: 9,
            priority: 9,
            ..Hints::default()
        };
        assert_eq!(Hints::decode(&wide.encode()).unwrap().quality, 3);
        assert_eq!(
            decode_send_time(&encode_send_time(1_700_000_000_123_456)),
            Some(1_700_000_000_123_456)
        );
        assert_eq!(decode_send_time(&[1, 2, 3]), None);
    }
}
