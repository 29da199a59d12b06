//! Frames over data-channel messages: split on send, reassemble on receive.
//!
//! A frame (up to [`skiff_proto::frame::MAX_FRAME`]) travels as one or more messages of at
//! most [`MESSAGE_SIZE`] bytes, each starting with a one-byte tag:
//!
//! - `START` (`0x01`) ‖ `len: u32 BE` ‖ the first bytes of the frame;
//! - `MORE` (`0x02`) ‖ the next bytes of the frame;
//! - `FIN` (`0x03`), alone: the sender closed its direction cleanly.
//! - `READY` (`0x04`), alone: sent (repeatedly) once the channel opened, until the peer's
//!   first `READY` arrives; a message that reaches a side whose channel is not open yet
//!   can be lost, so neither side sends a frame before it has heard the other. Extra
//!   `READY`s after that are skipped.
//!
//! The length comes first so that the receiver refuses a frame over `max` before it
//! allocates anything, and then allocates exactly once.

use bytes::{BufMut, BytesMut};

use crate::{Error, Result};

/// Largest data-channel message we send: 64 KiB, the RFC 8841 default that every peer
/// accepts, and the fastest size measured on webrtc 0.21.1 (performance guide §4.3).
pub const MESSAGE_SIZE: usize = 64 * 1024;

const START: u8 = 0x01;
const MORE: u8 = 0x02;
const FIN: u8 = 0x03;
const READY: u8 = 0x04;
const START_HEADER: usize = 5;
const MORE_HEADER: usize = 1;

/// Splits `frame` into messages of at most `msg_size` bytes (at least 64), lazily, so that
/// a 16 MiB frame is copied one message at a time as the channel accepts it.
pub fn split(frame: &[u8], msg_size: usize) -> Result<impl Iterator<Item = BytesMut> + '_> {
    let len = u32::try_from(frame.len()).map_err(|_| Error::FrameTooLarge {
        len: frame.len(),
        max: u32::MAX as usize,
    })?;
    let msg_size = msg_size.max(64);
    let (head, rest) = frame.split_at(frame.len().min(msg_size - START_HEADER));
    let mut first = BytesMut::with_capacity(START_HEADER + head.len());
    first.put_u8(START);
    first.put_u32(len);
    first.extend_from_slice(head);
    let more = rest.chunks(msg_size - MORE_HEADER).map(|chunk| {
        let mut m = BytesMut::with_capacity(MORE_HEADER + chunk.len());
        m.put_u8(MORE);
        m.extend_from_slice(chunk);
        m
    });
    Ok(std::iter::once(first).chain(more))
}

/// The message that closes a direction.
pub fn fin() -> BytesMut {
    BytesMut::from(&[FIN][..])
}

/// The "my channel is open" message.
pub fn ready() -> BytesMut {
    BytesMut::from(&[READY][..])
}

/// Whether `msg` is a `READY`.
pub fn is_ready(msg: &[u8]) -> bool {
    msg == [READY]
}

/// What one received message completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The frame continues in later messages.
    More,
    /// A whole frame.
    Frame(Vec<u8>),
    /// The peer closed its direction cleanly.
    Fin,
}

/// Reassembles frames from messages; never holds more than one frame of at most `max`.
#[derive(Default)]
pub struct Reassembler {
    partial: Option<(Vec<u8>, usize)>,
}

impl Reassembler {
    /// Whether a frame is half received.
    #[cfg(test)]
    pub fn in_frame(&self) -> bool {
        self.partial.is_some()
    }

    /// Feeds one message. A frame over `max` is refused before anything is allocated.
    pub fn push(&mut self, msg: &[u8], max: usize) -> Result<Step> {
        let (&tag, body) = msg
            .split_first()
            .ok_or_else(|| Error::protocol("empty data-channel message"))?;
        match tag {
            START => {
                if self.partial.is_some() {
                    return Err(Error::protocol("frame started inside another frame"));
                }
                let (len, data) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| Error::protocol("short frame header"))?;
                let len = u32::from_be_bytes(*len) as usize;
                if len > max {
                    return Err(Error::FrameTooLarge { len, max });
                }
                if data.len() > len {
                    return Err(Error::protocol("frame longer than its header says"));
                }
                if data.len() == len {
                    return Ok(Step::Frame(data.to_vec()));
                }
                let mut buf = Vec::with_capacity(len);
                buf.extend_from_slice(data);
                self.partial = Some((buf, len));
                Ok(Step::More)
            }
            MORE => {
                let Some((buf, len)) = self.partial.as_mut() else {
                    return Err(Error::protocol("frame continuation without a start"));
                };
                if body.len() > *len - buf.len() {
                    return Err(Error::protocol("frame longer than its header says"));
                }
                buf.extend_from_slice(body);
                if buf.len() == *len {
                    let (buf, _) = self.partial.take().unwrap_or_default();
                    return Ok(Step::Frame(buf));
                }
                Ok(Step::More)
            }
            READY if body.is_empty() && self.partial.is_none() => Ok(Step::More),
            FIN if body.is_empty() => {
                if self.partial.is_some() {
                    return Err(Error::protocol("stream closed inside a frame"));
                }
                Ok(Step::Fin)
            }
            _ => Err(Error::protocol(format!(
                "unknown data-channel message tag {tag:#04x}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(len: usize, msg: usize) {
        let frame: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let msgs: Vec<_> = split(&frame, msg).unwrap().collect();
        assert!(msgs.iter().all(|m| m.len() <= msg), "message over {msg}");
        let mut r = Reassembler::default();
        let mut got = None;
        for (i, m) in msgs.iter().enumerate() {
            match r.push(m, len).unwrap() {
                Step::Frame(f) => {
                    assert_eq!(i, msgs.len() - 1, "frame completed early");
                    got = Some(f);
                }
                Step::More => assert!(i < msgs.len() - 1),
                Step::Fin => panic!("fin"),
            }
        }
        assert_eq!(got.unwrap(), frame, "len {len}");
        assert!(!r.in_frame());
    }

    #[test]
    fn frames_of_every_awkward_size_roundtrip() {
        for len in [
            0,
            1,
            MESSAGE_SIZE - START_HEADER - 1,
            MESSAGE_SIZE - START_HEADER,
            MESSAGE_SIZE - START_HEADER + 1,
            MESSAGE_SIZE - 1,
            MESSAGE_SIZE,
            MESSAGE_SIZE + 1,
            3 * MESSAGE_SIZE,
            1 << 20,
        ] {
            roundtrip(len, MESSAGE_SIZE);
        }
        roundtrip(1000, 64);
    }

    #[test]
    fn oversize_is_refused_from_the_header_alone() {
        let mut hdr = vec![START];
        hdr.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut r = Reassembler::default();
        let e = r.push(&hdr, 1 << 24).unwrap_err();
        assert!(
            matches!(e, Error::FrameTooLarge { len, max } if len == u32::MAX as usize && max == 1 << 24)
        );
        assert!(!r.in_frame(), "nothing buffered");
    }

    #[test]
    fn malformed_sequences_are_protocol_errors() {
        let mut r = Reassembler::default();
        assert!(r.push(&[], 10).is_err());
        assert!(r.push(&[MORE, 1, 2], 10).is_err());
        assert!(r.push(&[0x7f], 10).is_err());
        assert!(r.push(&[FIN, 0], 10).is_err());
        // A continuation longer than announced.
        let mut r = Reassembler::default();
        assert_eq!(r.push(&[START, 0, 0, 0, 3, 1], 10).unwrap(), Step::More);
        assert!(r.push(&[MORE, 2, 3, 4], 10).is_err());
        // A start or a FIN inside a frame.
        let mut r = Reassembler::default();
        assert_eq!(r.push(&[START, 0, 0, 0, 3, 1], 10).unwrap(), Step::More);
        assert!(r.push(&[START, 0, 0, 0, 0], 10).is_err());
        let mut r = Reassembler::default();
        assert_eq!(r.push(&[START, 0, 0, 0, 3, 1], 10).unwrap(), Step::More);
        assert!(r.push(&fin(), 10).is_err());
        // A start carrying more than its length.
        let mut r = Reassembler::default();
        assert!(r.push(&[START, 0, 0, 0, 1, 1, 2], 10).is_err());
        assert_eq!(Reassembler::default().push(&fin(), 10).unwrap(), Step::Fin);
    }
}
