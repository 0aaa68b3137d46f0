//! The ecp messages, the share id, the hello check and arrival verification.

use super::bounded;
use super::{
    MAX_CHUNK_BYTES, MAX_ERROR_TEXT, MAX_IDS_PER_REQUEST, MAX_NODES_PER_REPLY, MAX_NODE_BYTES,
    MAX_PARENTS,
};
use left_store::node::Node;
use left_store::{ChunkId, Hash, NodeId, ObjectId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Version of the ecp conversation carried in [`Message::Hello`]; peers must agree on it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Id of a share: a keyed BLAKE3 derivation of the share key, safe to send and log (the key cannot
/// be recovered from it).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ShareId(pub Hash);

impl ShareId {
    /// The share id of a share key.
    pub fn from_key(share_key: &[u8]) -> ShareId {
        ShareId(Hash(blake3::derive_key(
            "left 2026 ecp share id",
            share_key,
        )))
    }

    /// First 12 hex characters, for logs.
    pub fn fmt_short(&self) -> String {
        self.0.fmt_short()
    }
}

impl fmt::Debug for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShareId({})", self.0)
    }
}

impl fmt::Display for ShareId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A node or chunk id as named in [`Message::NotFound`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectRef {
    /// A node.
    Node(NodeId),
    /// A chunk.
    Chunk(ChunkId),
}

impl From<ObjectRef> for ObjectId {
    fn from(r: ObjectRef) -> ObjectId {
        match r {
            ObjectRef::Node(n) => ObjectId::Node(n),
            ObjectRef::Chunk(c) => ObjectId::Chunk(c),
        }
    }
}

impl From<ObjectId> for ObjectRef {
    fn from(r: ObjectId) -> ObjectRef {
        match r {
            ObjectId::Node(n) => ObjectRef::Node(n),
            ObjectId::Chunk(c) => ObjectRef::Chunk(c),
        }
    }
}

/// Numeric code of a [`Message::Error`]; the text beside it is for humans.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// A frame did not decode (bad length, version, or contents).
    pub const MALFORMED: ErrorCode = ErrorCode(1);
    /// The peers speak different [`PROTOCOL_VERSION`]s.
    pub const PROTOCOL_VERSION: ErrorCode = ErrorCode(2);
    /// The peers hold different shares.
    pub const SHARE_MISMATCH: ErrorCode = ErrorCode(3);
    /// The peers' encryption settings differ.
    pub const ENCRYPTION_MISMATCH: ErrorCode = ErrorCode(4);
    /// The device is not allowed (revoked or not pinned).
    pub const NOT_ALLOWED: ErrorCode = ErrorCode(5);
    /// A message arrived that makes no sense at this point.
    pub const UNEXPECTED: ErrorCode = ErrorCode(6);
    /// The sender failed internally (store error).
    pub const INTERNAL: ErrorCode = ErrorCode(7);
}

/// The names of [`Message`]'s variants by wire tag (postcard tags variants by index), for
/// messages about frames that do not decode.
pub(crate) const KINDS: [&str; 13] = [
    "Hello",
    "Have",
    "Update",
    "Same",
    "Excess",
    "Working",
    "GetNodes",
    "Nodes",
    "GetChunks",
    "Chunk",
    "NotFound",
    "Error",
    "Bye",
];

/// One ecp message. Variant order is part of the wire format (postcard tags variants by index).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// First message of each side.
    Hello {
        /// The sender's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// Which share the sender serves or wants.
        share: ShareId,
        /// The sender's device public key.
        device: [u8; 32],
        /// Whether the sender runs with encryption on.
        encryption: bool,
    },
    /// What I have; sent on connect and periodically. `head` is `None` for an empty store.
    Have {
        /// The share.
        share: ShareId,
        /// The sender's head snapshot.
        head: Option<NodeId>,
    },
    /// I just made a change; pushed at once.
    Update {
        /// The share.
        share: ShareId,
        /// The new head snapshot.
        head: NodeId,
        /// Its parents (at most [`MAX_PARENTS`]).
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_PARENTS>")]
        parents: Vec<NodeId>,
    },
    /// Our heads are equal.
    Same,
    /// I have what you lack; pull it.
    Excess {
        /// The head to pull.
        head: NodeId,
    },
    /// Busy (checking out, scanning): outstanding requests were not served; ask again later.
    Working {
        /// How long to wait before asking again, in milliseconds.
        retry_after_ms: u32,
    },
    /// Asks for nodes by id (at most [`MAX_IDS_PER_REQUEST`]).
    GetNodes {
        /// The nodes.
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_IDS_PER_REQUEST>")]
        ids: Vec<NodeId>,
    },
    /// Nodes in their stored encoding (at most [`MAX_NODES_PER_REPLY`], each at most
    /// [`MAX_NODE_BYTES`]). A `GetNodes` may be answered by several `Nodes` and a `NotFound`.
    Nodes {
        /// `(id, encoded node)` pairs.
        #[serde(serialize_with = "ser_nodes", deserialize_with = "de_nodes")]
        nodes: Vec<(NodeId, Vec<u8>)>,
    },
    /// Asks for chunks by id (at most [`MAX_IDS_PER_REQUEST`]); each is answered by one `Chunk`
    /// or listed in a `NotFound`.
    GetChunks {
        /// The chunks.
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_IDS_PER_REQUEST>")]
        ids: Vec<ChunkId>,
    },
    /// One chunk in its stored encoding (codec byte and payload, at most [`MAX_CHUNK_BYTES`]).
    Chunk {
        /// The chunk id (BLAKE3 of the plain bytes).
        id: ChunkId,
        /// The encoded chunk.
        #[serde(
            serialize_with = "bounded::ser_bytes",
            deserialize_with = "bounded::bytes::<_, MAX_CHUNK_BYTES>"
        )]
        bytes: Vec<u8>,
    },
    /// The sender does not have these objects.
    NotFound {
        /// The missing objects (at most [`MAX_IDS_PER_REQUEST`]).
        #[serde(deserialize_with = "bounded::vec::<_, _, MAX_IDS_PER_REQUEST>")]
        ids: Vec<ObjectRef>,
    },
    /// The sender refuses or failed; it closes the stream after this.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// One line for humans (at most [`MAX_ERROR_TEXT`] bytes).
        #[serde(deserialize_with = "bounded::text::<_, MAX_ERROR_TEXT>")]
        message: String,
    },
    /// The sender is done and closes the stream.
    Bye,
}

#[derive(Serialize)]
struct NodeEntryRef<'a>(
    &'a NodeId,
    #[serde(serialize_with = "bounded::ser_bytes")] &'a [u8],
);

#[derive(Deserialize)]
struct NodeEntry(
    NodeId,
    #[serde(deserialize_with = "bounded::bytes::<_, MAX_NODE_BYTES>")] Vec<u8>,
);

fn ser_nodes<S: Serializer>(nodes: &[(NodeId, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(nodes.iter().map(|(id, b)| NodeEntryRef(id, b)))
}

fn de_nodes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(NodeId, Vec<u8>)>, D::Error> {
    let v: Vec<NodeEntry> = bounded::vec::<_, _, MAX_NODES_PER_REPLY>(d)?;
    Ok(v.into_iter().map(|NodeEntry(id, b)| (id, b)).collect())
}

impl Message {
    /// The message's name, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Have { .. } => "Have",
            Message::Update { .. } => "Update",
            Message::Same => "Same",
            Message::Excess { .. } => "Excess",
            Message::Working { .. } => "Working",
            Message::GetNodes { .. } => "GetNodes",
            Message::Nodes { .. } => "Nodes",
            Message::GetChunks { .. } => "GetChunks",
            Message::Chunk { .. } => "Chunk",
            Message::NotFound { .. } => "NotFound",
            Message::Error { .. } => "Error",
            Message::Bye => "Bye",
        }
    }

    /// Checks the per-field limits the decoder enforces, so a sender never emits what its peer
    /// would refuse. Returns the offending field and its size.
    pub(crate) fn check_limits(&self) -> Result<(), (&'static str, usize, usize)> {
        let check = |what, len: usize, max: usize| {
            if len > max {
                Err((what, len, max))
            } else {
                Ok(())
            }
        };
        match self {
            Message::Update { parents, .. } => check("parents", parents.len(), MAX_PARENTS),
            Message::GetNodes { ids } => check("ids", ids.len(), MAX_IDS_PER_REQUEST),
            Message::GetChunks { ids } => check("ids", ids.len(), MAX_IDS_PER_REQUEST),
            Message::NotFound { ids } => check("ids", ids.len(), MAX_IDS_PER_REQUEST),
            Message::Nodes { nodes } => {
                check("nodes", nodes.len(), MAX_NODES_PER_REPLY)?;
                nodes
                    .iter()
                    .try_for_each(|(_, b)| check("node bytes", b.len(), MAX_NODE_BYTES))
            }
            Message::Chunk { bytes, .. } => check("chunk bytes", bytes.len(), MAX_CHUNK_BYTES),
            Message::Error { message, .. } => check("error text", message.len(), MAX_ERROR_TEXT),
            _ => Ok(()),
        }
    }
}

/// Why a peer's [`Message::Hello`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HelloMismatch {
    /// Different protocol versions.
    #[error("peer speaks ecp protocol {theirs}, this build speaks {ours}")]
    Protocol {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// Different shares.
    #[error("peer serves share {theirs}, not ours ({ours})", theirs = .theirs.fmt_short(), ours = .ours.fmt_short())]
    Share {
        /// Ours.
        ours: ShareId,
        /// Theirs.
        theirs: ShareId,
    },
    /// Different encryption settings.
    #[error("encryption is {} here but {} on the peer; use the same --encryption on both sides", on_off(*.ours), on_off(*.theirs))]
    Encryption {
        /// Ours.
        ours: bool,
        /// Theirs.
        theirs: bool,
    },
    /// The message is not a Hello.
    #[error("expected Hello, got {0}")]
    NotHello(&'static str),
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl HelloMismatch {
    /// The code to send in the [`Message::Error`] that refuses the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            HelloMismatch::Protocol { .. } => ErrorCode::PROTOCOL_VERSION,
            HelloMismatch::Share { .. } => ErrorCode::SHARE_MISMATCH,
            HelloMismatch::Encryption { .. } => ErrorCode::ENCRYPTION_MISMATCH,
            HelloMismatch::NotHello(_) => ErrorCode::UNEXPECTED,
        }
    }

    /// The [`Message::Error`] to send before closing.
    pub fn to_message(&self) -> Message {
        Message::Error {
            code: self.code(),
            message: self.to_string(),
        }
    }
}

/// Checks a peer's hello against ours: same protocol, same share, same encryption setting.
/// Both sides run this, so both report the mismatch (and each sends the other an `Error`).
pub fn check_hello(ours: &Message, theirs: &Message) -> Result<(), HelloMismatch> {
    let Message::Hello {
        protocol: p0,
        share: s0,
        encryption: e0,
        ..
    } = ours
    else {
        return Err(HelloMismatch::NotHello(ours.kind()));
    };
    let Message::Hello {
        protocol: p1,
        share: s1,
        encryption: e1,
        ..
    } = theirs
    else {
        return Err(HelloMismatch::NotHello(theirs.kind()));
    };
    if p0 != p1 {
        return Err(HelloMismatch::Protocol {
            ours: *p0,
            theirs: *p1,
        });
    }
    if s0 != s1 {
        return Err(HelloMismatch::Share {
            ours: *s0,
            theirs: *s1,
        });
    }
    if e0 != e1 {
        return Err(HelloMismatch::Encryption {
            ours: *e0,
            theirs: *e1,
        });
    }
    Ok(())
}

/// An arrival that does not match its id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The node's bytes do not hash to its id or do not decode.
    #[error("node {id} is invalid: {reason}", id = .id.fmt_short())]
    Node {
        /// The claimed id.
        id: NodeId,
        /// Why.
        reason: String,
    },
    /// The chunk does not decode within the size limit or its plain bytes do not hash to its id.
    #[error("chunk {id} is invalid: {reason}", id = .id.fmt_short())]
    Chunk {
        /// The claimed id.
        id: ChunkId,
        /// Why.
        reason: String,
    },
}

/// Checks that `bytes` hash to `id` and decode as a valid node; returns the node.
pub fn verify_node(id: &NodeId, bytes: &[u8]) -> Result<Node, VerifyError> {
    Node::decode_verified(id, bytes).map_err(|e| VerifyError::Node {
        id: *id,
        reason: e.to_string(),
    })
}

/// Checks that an encoded chunk decodes to at most `max_plain` bytes hashing to `id`; returns the
/// plain length.
///
/// A raw chunk is hashed where it lies; a compressed one is decoded into a buffer kept per thread,
/// so verifying allocates nothing per chunk.
pub fn verify_chunk(id: &ChunkId, encoded: &[u8], max_plain: usize) -> Result<usize, VerifyError> {
    verify_chunk_with(id, encoded, max_plain, |_| {})
}

/// [`verify_chunk`], handing the plain bytes to `verified` once they are known to hash to `id`
/// (never otherwise).
pub fn verify_chunk_with(
    id: &ChunkId,
    encoded: &[u8],
    max_plain: usize,
    verified: impl FnOnce(&[u8]),
) -> Result<usize, VerifyError> {
    thread_local! {
        static PLAIN: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let bad = |reason: String| VerifyError::Chunk { id: *id, reason };
    let check = |plain: &[u8]| {
        if blake3::hash(plain).as_bytes() == id.as_bytes() {
            verified(plain);
            Ok(plain.len())
        } else {
            Err(bad("its bytes do not hash to its id".into()))
        }
    };
    match encoded.split_first() {
        Some((&left_store::codec::CODEC_RAW, payload)) => {
            if payload.len() > max_plain {
                return Err(bad(format!(
                    "raw chunk of {} bytes exceeds the maximum chunk size {max_plain}",
                    payload.len()
                )));
            }
            check(payload)
        }
        _ => PLAIN.with(|buf| {
            let mut buf = buf.borrow_mut();
            left_store::codec::decode_into(encoded, max_plain, &mut buf)
                .map_err(|e| bad(e.to_string()))?;
            let r = check(&buf);
            if buf.capacity() > 2 * max_plain {
                *buf = Vec::new();
            }
            r
        }),
    }
}
