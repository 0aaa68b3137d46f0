//! Framing: `u32` big-endian length, version byte, postcard body; a streaming [`Decoder`].

use super::bounded;
use super::message::{ErrorCode, Message, KINDS};
use super::{LEN_PREFIX, MAX_FRAME_LEN, WIRE_VERSION};

/// Why bytes from a peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not enough bytes yet for a whole frame (only from [`decode_frame`]; the [`Decoder`] waits).
    #[error("incomplete frame")]
    Incomplete,
    /// The length prefix exceeds [`MAX_FRAME_LEN`]; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The version byte is not [`WIRE_VERSION`].
    #[error("unknown ecp wire version {version} (this build speaks {WIRE_VERSION})")]
    UnknownVersion {
        /// The version byte received.
        version: u8,
    },
    /// The body does not decode, breaks a limit, or has trailing bytes.
    #[error("{reason}")]
    Invalid {
        /// What is wrong, one line, starting with "malformed" and naming the message type and
        /// size when known ("malformed Chunk message (70 bytes): it ends early").
        reason: String,
    },
}

impl DecodeError {
    /// The [`ErrorCode`] to send to the peer before closing the stream.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::UnknownVersion { .. } => ErrorCode::PROTOCOL_VERSION,
            _ => ErrorCode::MALFORMED,
        }
    }
}

/// Why a message cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A list or byte string is over its limit.
    #[error("{what} of {len} exceeds the limit of {max}")]
    Limit {
        /// Which field.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The frame would exceed [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// postcard failed (should not happen for these types).
    #[error("encoding failed: {0}")]
    Postcard(String),
}

/// Appends one frame holding `msg` to `out`. On error `out` is left as it was.
pub fn encode_into(msg: &Message, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    msg.check_limits()
        .map_err(|(what, len, max)| EncodeError::Limit { what, len, max })?;
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    out.push(WIRE_VERSION);
    let buf = std::mem::take(out);
    match postcard::to_extend(msg, buf) {
        Ok(buf) => *out = buf,
        Err(e) => {
            // postcard consumed the buffer; nothing of the caller's bytes can be recovered, which
            // is why the limit check above runs first. Serializing these types cannot fail.
            return Err(EncodeError::Postcard(e.to_string()));
        }
    }
    let len = out.len() - start - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    // `len <= MAX_FRAME_LEN` fits in a u32.
    out[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// One frame holding `msg`.
pub fn encode(msg: &Message) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    encode_into(msg, &mut out)?;
    Ok(out)
}

/// Reads and checks a length prefix.
fn frame_len(prefix: [u8; LEN_PREFIX]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len == 0 {
        return Err(DecodeError::Invalid {
            reason: "malformed message: an empty frame".into(),
        });
    }
    Ok(len)
}

fn decode_body(frame: &[u8]) -> Result<Message, DecodeError> {
    let (&version, body) = frame.split_first().ok_or(DecodeError::Invalid {
        reason: "malformed message: an empty frame".into(),
    })?;
    if version != WIRE_VERSION {
        return Err(DecodeError::UnknownVersion { version });
    }
    let _ = bounded::take_violation();
    let (msg, rest): (Message, &[u8]) =
        postcard::take_from_bytes(body).map_err(|e| DecodeError::Invalid {
            reason: undecodable(frame.len(), body, &e),
        })?;
    if !rest.is_empty() {
        return Err(DecodeError::Invalid {
            reason: format!(
                "malformed {} message ({} bytes): {} trailing bytes",
                msg.kind(),
                frame.len(),
                rest.len()
            ),
        });
    }
    Ok(msg)
}

/// One line saying what is wrong with a frame of `frame_len` bytes whose `body` (after the
/// version byte) postcard refused with `e`: the message type when its tag is known, and the
/// cause in words (a limit the bounded decoders recorded, or postcard's error kind).
fn undecodable(frame_len: usize, body: &[u8], e: &postcard::Error) -> String {
    let tag = postcard::take_from_bytes::<u32>(body).ok().map(|(t, _)| t);
    let kind = tag.and_then(|t| KINDS.get(t as usize).copied());
    let what = match bounded::take_violation() {
        Some(v) => v,
        None => match e {
            postcard::Error::DeserializeUnexpectedEnd => "it ends early".into(),
            postcard::Error::DeserializeBadVarint => "an integer is badly encoded".into(),
            postcard::Error::DeserializeBadBool => "a flag is neither 0 nor 1".into(),
            postcard::Error::DeserializeBadChar | postcard::Error::DeserializeBadUtf8 => {
                "a text field is not UTF-8".into()
            }
            postcard::Error::DeserializeBadOption => "an optional field has a bad tag".into(),
            _ if kind.is_none() => match tag {
                Some(t) => format!("unknown message type {t}"),
                None => "no message type".into(),
            },
            _ => "a field does not decode".into(),
        },
    };
    match kind {
        Some(k) => format!("malformed {k} message ({frame_len} bytes): {what}"),
        None => format!("malformed message ({frame_len} bytes): {what}"),
    }
}

/// Decodes the frame at the start of `buf`; returns the message and the bytes it used.
/// [`DecodeError::Incomplete`] means more bytes are needed (a bad length prefix is reported as
/// soon as the prefix is there).
pub fn decode_frame(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Err(DecodeError::Incomplete);
    };
    let len = frame_len(*prefix)?;
    let total = LEN_PREFIX + len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete);
    }
    Ok((decode_body(&buf[LEN_PREFIX..total])?, total))
}

/// A streaming decoder: feed it stream bytes as they come and take out whole messages.
///
/// It buffers at most one partial frame (at most `LEN_PREFIX + MAX_FRAME_LEN` bytes), and only
/// when a frame straddles two inputs; whole frames are decoded straight from the input. After an
/// error the decoder keeps returning it: the stream is unusable and should be closed.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    failed: Option<DecodeError>,
}

impl Decoder {
    /// A decoder with an empty buffer.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Bytes of a partial frame held back.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes bytes from the front of `input` and returns the next whole message, or `Ok(None)`
    /// once `input` is used up (a partial frame is kept for the next call). Call it in a loop until
    /// it returns `Ok(None)`; it never returns `Incomplete`.
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Message>, DecodeError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.decode_inner(input);
        if let Err(e) = &r {
            self.failed = Some(e.clone());
            self.buf = Vec::new();
        }
        r
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Message>, DecodeError> {
        if self.buf.is_empty() {
            match decode_frame(input) {
                Ok((msg, used)) => {
                    *input = &input[used..];
                    return Ok(Some(msg));
                }
                Err(DecodeError::Incomplete) => {
                    // Everything left is a prefix of one frame whose length (if known) passed
                    // the limit, so this buffer stays bounded.
                    self.buf.extend_from_slice(input);
                    *input = &[];
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        if self.buf.len() < LEN_PREFIX {
            let take = (LEN_PREFIX - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.buf.len() < LEN_PREFIX {
                return Ok(None);
            }
        }
        let prefix = *self.buf.first_chunk::<LEN_PREFIX>().expect("checked above");
        let total = LEN_PREFIX + frame_len(prefix)?;
        let take = (total - self.buf.len()).min(input.len());
        self.buf.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg = decode_body(&self.buf[LEN_PREFIX..]);
        self.buf.clear();
        msg.map(Some)
    }
}
