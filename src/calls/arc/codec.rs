//! ArcRTC's codecs and their fixed payload types (docs/arcrtc.md §6), and how
//! they map to str0m's, for the bridge to WebRTC.

use str0m::format::{Codec, CodecConfig, PayloadParams};
use str0m::media::{MediaKind, Pt};

/// One ArcRTC codec.
#[derive(Debug, PartialEq, Eq)]
pub struct ArcCodec {
    pub name: &'static str,
    pub kind: MediaKind,
    /// Its payload type on every ArcRTC session.
    pub pt: u8,
    pub clock_rate: u32,
    codec: Codec,
    /// Browsers can receive it (when the node negotiates it with them).
    pub browsers: bool,
}

/// Every codec of ArcRTC v1, in the node's order of preference.
pub const CODECS: &[ArcCodec] = &[
    ArcCodec::new("opus", MediaKind::Audio, 111, 48_000, Codec::Opus, true),
    ArcCodec::new("vp8", MediaKind::Video, 96, 90_000, Codec::Vp8, true),
    ArcCodec::new("vp9", MediaKind::Video, 98, 90_000, Codec::Vp9, true),
    ArcCodec::new("h264", MediaKind::Video, 102, 90_000, Codec::H264, true),
    ArcCodec::new("h265", MediaKind::Video, 104, 90_000, Codec::H265, false),
    ArcCodec::new("av1", MediaKind::Video, 106, 90_000, Codec::Av1, true),
    ArcCodec::new("vvc", MediaKind::Video, 108, 90_000, Codec::H266, false),
];

impl ArcCodec {
    const fn new(
        name: &'static str,
        kind: MediaKind,
        pt: u8,
        clock_rate: u32,
        codec: Codec,
        browsers: bool,
    ) -> ArcCodec {
        ArcCodec {
            name,
            kind,
            pt,
            clock_rate,
            codec,
            browsers,
        }
    }

    pub fn by_name(name: &str) -> Option<&'static ArcCodec> {
        CODECS.iter().find(|c| c.name == name)
    }

    pub fn by_pt(pt: u8) -> Option<&'static ArcCodec> {
        CODECS.iter().find(|c| c.pt == pt)
    }

    /// The ArcRTC codec a WebRTC publisher's payload is in, if ArcRTC has it.
    pub fn of(params: &PayloadParams) -> Option<&'static ArcCodec> {
        let codec = params.spec().codec;
        CODECS.iter().find(|c| c.codec == codec)
    }

    /// How a WebRTC subscriber's peer connection sees this codec: str0m's
    /// default parameters for it (H.264: constrained baseline, packetization
    /// mode 1), under the ArcRTC payload type.
    pub fn params(&self) -> PayloadParams {
        let mut all = CodecConfig::new_with_defaults();
        all.enable_h266(true);
        let wanted = |p: &&PayloadParams| {
            let spec = p.spec();
            spec.codec == self.codec
                && (self.codec != Codec::H264
                    || (spec.format.profile_level_id == Some(0x42e01f)
                        && spec.format.packetization_mode == Some(1)))
        };
        let spec = all
            .params()
            .iter()
            .find(wanted)
            .map(|p| p.spec())
            .expect("str0m knows every ArcRTC codec");
        PayloadParams::new(Pt::from(self.pt), None, spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_has_str0m_parameters_under_its_own_payload_type() {
        for c in CODECS {
            let p = c.params();
            assert_eq!(*p.pt(), c.pt, "{}", c.name);
            assert_eq!(ArcCodec::of(&p), Some(c), "{}", c.name);
            assert_eq!(p.spec().clock_rate.get(), c.clock_rate, "{}", c.name);
            assert_eq!(ArcCodec::by_pt(c.pt), Some(c));
            assert_eq!(ArcCodec::by_name(c.name), Some(c));
        }
        assert_eq!(ArcCodec::by_name("theora"), None);
        let h264 = ArcCodec::by_name("h264").unwrap().params();
        assert_eq!(h264.spec().format.packetization_mode, Some(1));
    }
}
