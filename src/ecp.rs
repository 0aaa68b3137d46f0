//! ecp: the message protocol peers speak over an rdt stream, with no IO of its own.
//!
//! ecp turns [`Message`] values into length-prefixed frames and back. A frame is a big-endian `u32`
//! length, then one version byte ([`WIRE_VERSION`]), then the postcard encoding of the message. The
//! length is checked against [`MAX_FRAME_LEN`] before a single byte of the body is buffered, every
//! list and byte string inside a message has its own limit (ids per request, nodes per reply, chunk
//! bytes, error text) that is enforced while decoding, before anything is allocated for it, and an
//! unknown version byte is reported as [`DecodeError::UnknownVersion`] rather than misparsed. The
//! golden encodings in this module's tests pin the wire format: changing a message shape without
//! bumping [`WIRE_VERSION`] fails them.
//!
//! The messages keep the seed protocol's words. A session starts with [`Message::Hello`] from both
//! sides (protocol version, the share id, which is a hash of the share key and never the key itself,
//! the device key, and the sender's encryption setting), checked with [`check_hello`] so that a
//! mismatch is refused with a clear [`Message::Error`] on both ends. Then `Have`/`Update` announce
//! heads, `Same`/`Excess`/`Working` answer them, and `GetNodes`/`Nodes`, `GetChunks`/`Chunk` and
//! `NotFound` move objects. Node and chunk bytes travel in their stored form (a node's encoding, a
//! chunk's codec byte and payload), and [`verify_node`] / [`verify_chunk`] check every arrival
//! against its id with the store's own decoders.
//!
//! What ecp is not: it does not decide what to fetch (that is [`crate::sync`]), it does not own a
//! socket, a clock or a task, and it does not authenticate anything itself; rdt's handshake has
//! already proven that the peer holds the share key by the time the first ecp frame arrives.
//!
//! Driving it: call [`encode_into`] to append a frame to an outgoing buffer, and feed received stream
//! bytes to a [`Decoder`], calling [`Decoder::decode`] until it returns `Ok(None)`. Any `Err` is
//! final for that stream: send [`Message::Error`] with [`DecodeError::code`] and close it.
#![warn(missing_docs)]

mod bounded;
mod codec;
mod message;

pub use codec::{decode_frame, encode, encode_into, DecodeError, Decoder, EncodeError};
pub use message::{
    check_hello, verify_chunk, verify_chunk_with, verify_node, ErrorCode, HelloMismatch, Message,
    ObjectRef, ShareId, VerifyError, PROTOCOL_VERSION,
};

/// Version byte that follows the length prefix of every frame.
pub const WIRE_VERSION: u8 = 1;
/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 4;
/// Largest value of the length prefix (version byte plus postcard body), in bytes: room for a full
/// [`Message::Nodes`] reply (64 nodes of up to 64 KiB each) plus ids and varints.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024 + 16 * 1024;
/// Most ids in one `GetNodes`, `GetChunks` or `NotFound`.
pub const MAX_IDS_PER_REQUEST: usize = 1024;
/// Most nodes in one [`Message::Nodes`] reply.
pub const MAX_NODES_PER_REPLY: usize = 64;
/// Largest encoded node, in bytes (the store's limit).
pub const MAX_NODE_BYTES: usize = left_store::node::MAX_NODE_SIZE;
/// Largest plain chunk a share may use on the wire, in bytes (the store's default is 256 KiB).
pub const MAX_CHUNK_SIZE: usize = 1024 * 1024;
/// Largest encoded chunk in a [`Message::Chunk`], in bytes: the plain maximum plus the codec byte.
pub const MAX_CHUNK_BYTES: usize = MAX_CHUNK_SIZE + 1;
/// Most parents listed in an [`Message::Update`] (the store's snapshot limit).
pub const MAX_PARENTS: usize = 64;
/// Longest text in a [`Message::Error`], in bytes.
pub const MAX_ERROR_TEXT: usize = 1024;

#[cfg(test)]
mod tests;
