//! SRTP for one ArcRTC session (docs/arcrtc.md §4): a fresh master key and salt
//! per direction, drawn from the OS, handed to the client over signaling; each
//! side protects with its own keys and checks with the other's.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rtc_srtp::context::Context;
use rtc_srtp::crypto::providers::AwsLcRsCrypto;
use rtc_srtp::option::{srtcp_replay_protection, srtp_replay_protection};
use rtc_srtp::protection_profile::ProtectionProfile;
use serde_json::{Value, json};

/// Packets a receiver remembers to refuse replays (docs/arcrtc.md §4).
const REPLAY_WINDOW: usize = 1024;

/// The protection profiles ArcRTC v1 speaks, by their signaling names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    AeadAes128Gcm,
    AesCm128HmacSha1_80,
}

impl Profile {
    /// Supported names, preferred first.
    pub const ALL: [Profile; 2] = [Profile::AeadAes128Gcm, Profile::AesCm128HmacSha1_80];

    pub fn name(self) -> &'static str {
        match self {
            Profile::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Profile::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
        }
    }

    pub fn from_name(name: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The first of the client's profiles the node supports.
    pub fn choose<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Profile> {
        offered.into_iter().find_map(Profile::from_name)
    }

    fn srtp(self) -> ProtectionProfile {
        match self {
            Profile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
            Profile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        }
    }
}

/// Why a packet could not be protected or was refused.
#[derive(Debug, thiserror::Error)]
pub enum SrtpError {
    #[error("srtp: {0}")]
    Srtp(String),
    #[error("srtp keys: {0}")]
    Keys(String),
}

fn srtp_error(e: impl std::fmt::Display) -> SrtpError {
    SrtpError::Srtp(e.to_string())
}

/// A master key and salt for one direction.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    pub key: Vec<u8>,
    pub salt: Vec<u8>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Fresh random keys of `profile`'s sizes.
    pub fn generate(profile: Profile) -> Result<Keys, SrtpError> {
        let p = profile.srtp();
        let mut key = vec![0u8; p.key_len()];
        let mut salt = vec![0u8; p.salt_len()];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| SrtpError::Keys("no randomness".into()))?;
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| SrtpError::Keys("no randomness".into()))?;
        Ok(Keys { key, salt })
    }

    /// `{"key": base64, "salt": base64}`, as the `arc_join` reply carries them.
    pub fn to_json(&self) -> Value {
        json!({"key": B64.encode(&self.key), "salt": B64.encode(&self.salt)})
    }

    pub fn from_json(v: &Value) -> Result<Keys, SrtpError> {
        let field = |name: &str| {
            v.get(name)
                .and_then(Value::as_str)
                .and_then(|s| B64.decode(s).ok())
                .ok_or_else(|| SrtpError::Keys(format!("{name} must be base64")))
        };
        Ok(Keys {
            key: field("key")?,
            salt: field("salt")?,
        })
    }
}

/// One side of a session: protects what it sends with `local` keys, checks and
/// decrypts what it receives with `remote` keys (replays refused).
pub struct Session {
    outbound: Context,
    inbound: Context,
}

impl Session {
    pub fn new(profile: Profile, local: &Keys, remote: &Keys) -> Result<Session, SrtpError> {
        let context = |keys: &Keys, replay: bool| {
            let (rtp, rtcp) = if replay {
                (
                    Some(srtp_replay_protection(REPLAY_WINDOW)),
                    Some(srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(
                &keys.key,
                &keys.salt,
                profile.srtp(),
                rtp,
                rtcp,
                &AwsLcRsCrypto,
            )
            .map_err(|e| SrtpError::Keys(e.to_string()))
        };
        Ok(Session {
            outbound: context(local, false)?,
            inbound: context(remote, true)?,
        })
    }

    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.outbound
            .encrypt_rtp(packet)
            .map(|b| b.to_vec())
            .map_err(srtp_error)
    }

    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.inbound
            .decrypt_rtp(packet)
            .map(|b| b.to_vec())
            .map_err(srtp_error)
    }

    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.outbound
            .encrypt_rtcp(packet)
            .map(|b| b.to_vec())
            .map_err(srtp_error)
    }

    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        self.inbound
            .decrypt_rtcp(packet)
            .map(|b| b.to_vec())
            .map_err(srtp_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal RTP packet: header (no extension) and payload.
    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 111];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// An empty receiver report from `ssrc`.
    fn rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    fn pair(profile: Profile) -> (Session, Session) {
        let (c, n) = (
            Keys::generate(profile).unwrap(),
            Keys::generate(profile).unwrap(),
        );
        (
            Session::new(profile, &c, &n).unwrap(),
            Session::new(profile, &n, &c).unwrap(),
        )
    }

    #[test]
    fn both_profiles_round_trip_and_refuse_tampering_and_replays() {
        for profile in Profile::ALL {
            let (mut client, mut node) = pair(profile);
            let sent = rtp(7, 42, b"hello, node");
            let wire = client.protect_rtp(&sent).unwrap();
            assert_ne!(
                &wire[12..12 + 11],
                b"hello, node",
                "{profile:?}: payload encrypted"
            );
            assert_eq!(node.unprotect_rtp(&wire).unwrap(), sent, "{profile:?}");
            // The same packet again is a replay.
            assert!(node.unprotect_rtp(&wire).is_err(), "{profile:?}: replay");
            // One flipped bit anywhere fails authentication.
            let mut bad = client.protect_rtp(&rtp(8, 42, b"x")).unwrap();
            let last = bad.len() - 1;
            bad[last] ^= 1;
            assert!(node.unprotect_rtp(&bad).is_err(), "{profile:?}: tampered");
            // RTCP both ways.
            let report = rr(42);
            let wire = client.protect_rtcp(&report).unwrap();
            assert_eq!(node.unprotect_rtcp(&wire).unwrap(), report);
            let back = node.protect_rtcp(&rr(9)).unwrap();
            assert_eq!(client.unprotect_rtcp(&back).unwrap(), rr(9));
        }
    }

    #[test]
    fn a_wrong_key_is_refused() {
        let profile = Profile::AeadAes128Gcm;
        let (mut client, _) = pair(profile);
        let (_, mut stranger) = pair(profile);
        let wire = client.protect_rtp(&rtp(1, 5, b"secret")).unwrap();
        assert!(stranger.unprotect_rtp(&wire).is_err());
    }

    #[test]
    fn keys_travel_as_base64_and_profiles_by_name() {
        let k = Keys::generate(Profile::AesCm128HmacSha1_80).unwrap();
        assert_eq!((k.key.len(), k.salt.len()), (16, 14));
        assert_eq!(Keys::from_json(&k.to_json()).unwrap(), k);
        assert!(Keys::from_json(&json!({"key": "!!", "salt": ""})).is_err());
        let g = Keys::generate(Profile::AeadAes128Gcm).unwrap();
        assert_eq!((g.key.len(), g.salt.len()), (16, 12));
        assert_eq!(
            Profile::choose(["SRTP_NULL", "AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"]),
            Some(Profile::AesCm128HmacSha1_80)
        );
        assert_eq!(Profile::choose(["SRTP_NULL"]), None);
    }
}
