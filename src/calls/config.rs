//! `[calls]`: where media flows, what codecs, and how big calls may get.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsConfig {
    pub enabled: bool,
    /// Addresses to bind and announce; empty: loopback and the default route's.
    pub addresses: Vec<IpAddr>,
    /// Announced as a server-reflexive candidate of each address (1:1 NAT).
    pub public_ip: String,
    /// The UDP port every participant shares (0: a free one, chosen at start).
    pub udp_port: u16,
    /// With `port_max`: one port per participant from this range instead.
    pub port_min: u16,
    pub port_max: u16,
    pub max_participants: usize,
    pub max_calls: usize,
    pub empty_grace_ms: u64,
    pub connect_timeout_s: u64,
    pub keyframe_interval_ms: u64,
    pub video_codecs: Vec<String>,
    /// The UDP port of ArcRTC sessions (0: a free one, chosen at start).
    pub arc_port: u16,
    /// An ArcRTC session silent (no authenticated packet) this long ends.
    pub arc_timeout_s: u64,
    pub ice_servers: Vec<IceServer>,
}

/// A STUN/TURN server as `RTCPeerConnection`'s `iceServers` takes it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Video codecs the SFU can negotiate.
pub const VIDEO_CODECS: &[&str] = &["vp8", "h264", "vp9", "av1"];

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("calls.{key}"),
        message: message.into(),
    }
}

impl CallsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.port_range().is_none() && (self.port_min != 0 || self.port_max != 0) {
            return Err(invalid(
                "port_min",
                "port_min and port_max must both be set, with port_min <= port_max",
            ));
        }
        if self.max_participants < 2 {
            return Err(invalid("max_participants", "must be at least 2"));
        }
        if self.max_calls == 0 {
            return Err(invalid("max_calls", "must be at least 1"));
        }
        if self.arc_timeout_s == 0 {
            return Err(invalid("arc_timeout_s", "must be at least 1"));
        }
        if self.connect_timeout_s == 0 {
            return Err(invalid("connect_timeout_s", "must be at least 1"));
        }
        for (i, c) in self.video_codecs.iter().enumerate() {
            if !VIDEO_CODECS.contains(&c.as_str()) {
                return Err(invalid(
                    &format!("video_codecs[{i}]"),
                    format!("unknown codec {c:?}: expected one of {VIDEO_CODECS:?}"),
                ));
            }
        }
        if !self.public_ip.is_empty() {
            self.public_ip
                .parse::<IpAddr>()
                .map_err(|e| invalid("public_ip", format!("{e}: expected an IP address")))?;
            if self.addresses.len() > 1 {
                return Err(invalid(
                    "public_ip",
                    "stands for one address: set at most one in calls.addresses",
                ));
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return Err(invalid(
                    &format!("addresses[{i}]"),
                    format!("{a} cannot be an ICE candidate: name a concrete address"),
                ));
            }
        }
        for (i, s) in self.ice_servers.iter().enumerate() {
            let ok = !s.urls.is_empty()
                && s.urls.iter().all(|u| {
                    ["stun:", "stuns:", "turn:", "turns:"]
                        .iter()
                        .any(|p| u.starts_with(p))
                });
            if !ok {
                return Err(invalid(
                    &format!("ice_servers[{i}].urls"),
                    "expected stun:, stuns:, turn: or turns: URLs",
                ));
            }
        }
        Ok(())
    }

    /// The per-participant port range, when one is configured.
    pub fn port_range(&self) -> Option<(u16, u16)> {
        (self.port_min != 0 && self.port_max >= self.port_min)
            .then_some((self.port_min, self.port_max))
    }

    /// The addresses to bind: the configured ones, or loopback plus the address
    /// of the default route (found by "connecting" a UDP socket; nothing is sent).
    /// With `public_ip`, only the default route's: the public IP stands for it.
    pub fn bind_addresses(&self) -> Vec<IpAddr> {
        if !self.addresses.is_empty() {
            return self.addresses.clone();
        }
        let mut out = Vec::new();
        if self.public_ip().is_none() {
            out.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let routed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
            .and_then(|s| s.connect((Ipv4Addr::new(192, 0, 2, 1), 9)).map(|_| s))
            .and_then(|s| s.local_addr());
        match routed {
            Ok(addr) if !addr.ip().is_loopback() && !addr.ip().is_unspecified() => {
                out.push(addr.ip())
            }
            _ if out.is_empty() => out.push(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            _ => {}
        }
        out
    }

    pub fn public_ip(&self) -> Option<IpAddr> {
        self.public_ip.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        let c = Config::defaults().calls;
        assert!(c.enabled);
        assert!(c.port_range().is_none());
        assert_eq!(c.bind_addresses()[0].to_string(), "127.0.0.1");

        let err = |key: &str, value: &str| {
            let env = [(format!("ARMORICORE_CALLS__{key}"), value.to_string())];
            Config::load_from(None, env).unwrap_err().to_string()
        };
        assert!(err("PORT_MIN", "5000").starts_with("calls.port_min:"));
        assert!(err("MAX_PARTICIPANTS", "1").starts_with("calls.max_participants:"));
        assert!(err("PUBLIC_IP", "nope").starts_with("calls.public_ip:"));
        let two = [
            (
                "ARMORICORE_CALLS__PUBLIC_IP".to_string(),
                "203.0.113.7".to_string(),
            ),
            (
                "ARMORICORE_CALLS__ADDRESSES".to_string(),
                "10.0.0.5,10.0.0.6".to_string(),
            ),
        ];
        let e = Config::load_from(None, two).unwrap_err().to_string();
        assert!(
            e.starts_with("calls.public_ip: stands for one address"),
            "{e}"
        );
        assert!(err("ADDRESSES", "[\"0.0.0.0\"]").starts_with("calls.addresses[0]:"));
        assert!(err("VIDEO_CODECS", "[\"theora\"]").starts_with("calls.video_codecs[0]:"));
    }
}
