//! Messages of the sealed signaling channel: after the code's SPAKE2 (or a resume
//! handshake) over the signaling relay, before the data connection. They travel as sealed
//! control frames, so the server can neither read nor change them — this is what binds the
//! WebRTC descriptions (and their DTLS fingerprints) to the code.
//!
//! - sender → `Paths`: its direct TCP addresses (LAN); then, over the rendezvous channel,
//!   `Rtc` descriptions/candidates, `TurnTcp` (the relayed address of its TCP allocation)
//!   or `Unavailable` (it cannot offer what was asked).
//! - receiver → `Rtc` (it is the WebRTC offerer) and `TurnTcp` (asking for the TCP relay
//!   fallback, with the public address the TURN server saw, so the sender can permit it).
//!
//! The data connection then authenticates itself with the resume handshake.

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Most addresses a sender may offer.
pub const MAX_PATHS: usize = 32;
/// Longest SDP or candidate carried (a relayed frame holds 40 KiB).
pub const MAX_RTC_TEXT: usize = 16 * 1024;
/// Longest address literal.
const MAX_ADDR: usize = 64;

/// One WebRTC negotiation message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    content = "text",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum RtcMsg {
    Offer(String),
    Answer(String),
    /// `RTCIceCandidateInit` as JSON.
    Candidate(String),
    EndOfCandidates,
}

impl RtcMsg {
    fn check(&self) -> Result<(), ProtoError> {
        let len = match self {
            RtcMsg::Offer(s) | RtcMsg::Answer(s) | RtcMsg::Candidate(s) => s.len(),
            RtcMsg::EndOfCandidates => 0,
        };
        if len > MAX_RTC_TEXT {
            return Err(ProtoError::malformed("WebRTC description too long"));
        }
        Ok(())
    }
}

/// Sender → receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SenderSignal {
    Paths {
        tcp: Vec<String>,
    },
    Rtc {
        msg: RtcMsg,
    },
    TurnTcp {
        relayed: String,
    },
    /// The sender cannot offer the asked-for path (say, no TURN server with TCP).
    Unavailable {
        what: String,
    },
}

/// Receiver → sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ReceiverSignal {
    Rtc { msg: RtcMsg },
    TurnTcp { public: String },
}

fn check_addr(a: &str) -> Result<(), ProtoError> {
    if a.len() > MAX_ADDR {
        return Err(ProtoError::malformed("address too long"));
    }
    Ok(())
}

impl SenderSignal {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let msg: Self = serde_json::from_slice(bytes).map_err(ProtoError::malformed)?;
        match &msg {
            SenderSignal::Paths { tcp } => {
                if tcp.len() > MAX_PATHS {
                    return Err(ProtoError::malformed("too many addresses"));
                }
                tcp.iter().try_for_each(|a| check_addr(a))?;
            }
            SenderSignal::Rtc { msg } => msg.check()?,
            SenderSignal::TurnTcp { relayed } => check_addr(relayed)?,
            SenderSignal::Unavailable { what } => check_addr(what)?,
        }
        Ok(msg)
    }
}

impl ReceiverSignal {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let msg: Self = serde_json::from_slice(bytes).map_err(ProtoError::malformed)?;
        match &msg {
            ReceiverSignal::Rtc { msg } => msg.check()?,
            ReceiverSignal::TurnTcp { public } => check_addr(public)?,
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_are_bounded() {
        let m = SenderSignal::Paths {
            tcp: vec!["10.0.0.2:9000".into()],
        };
        assert_eq!(SenderSignal::decode(&m.encode()).unwrap(), m);
        let many = SenderSignal::Paths {
            tcp: vec!["1.2.3.4:5".into(); MAX_PATHS + 1],
        };
        assert!(SenderSignal::decode(&many.encode()).is_err());
        assert!(SenderSignal::decode(br#"{"type":"other"}"#).is_err());
    }

    #[test]
    fn rtc_messages_round_trip_and_are_bounded() {
        for m in [
            RtcMsg::Offer("v=0".into()),
            RtcMsg::Answer("v=0".into()),
            RtcMsg::Candidate("{}".into()),
            RtcMsg::EndOfCandidates,
        ] {
            let s = SenderSignal::Rtc { msg: m.clone() };
            assert_eq!(SenderSignal::decode(&s.encode()).unwrap(), s);
            let r = ReceiverSignal::Rtc { msg: m };
            assert_eq!(ReceiverSignal::decode(&r.encode()).unwrap(), r);
        }
        let big = ReceiverSignal::Rtc {
            msg: RtcMsg::Offer("x".repeat(MAX_RTC_TEXT + 1)),
        };
        assert!(ReceiverSignal::decode(&big.encode()).is_err());
        let r = ReceiverSignal::TurnTcp {
            public: "203.0.113.7:4000".into(),
        };
        assert_eq!(ReceiverSignal::decode(&r.encode()).unwrap(), r);
        // A sender message is not a receiver message.
        assert!(ReceiverSignal::decode(&SenderSignal::Paths { tcp: vec![] }.encode()).is_err());
    }
}
