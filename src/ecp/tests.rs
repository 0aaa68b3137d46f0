use super::*;
use left_store::node::{Content, FileNode, Node};
use left_store::{ChunkId, Hash, NodeId};
use proptest::prelude::*;
use rand::{Rng, RngCore, SeedableRng};

fn h(b: u8) -> Hash {
    Hash([b; 32])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One sample of every message, in variant order.
fn samples() -> Vec<Message> {
    vec![
        Message::Hello {
            protocol: PROTOCOL_VERSION,
            share: ShareId(h(1)),
            device: [2; 32],
            encryption: true,
        },
        Message::Have {
            share: ShareId(h(1)),
            head: Some(NodeId(h(3))),
        },
        Message::Have {
            share: ShareId(h(1)),
            head: None,
        },
        Message::Update {
            share: ShareId(h(1)),
            head: NodeId(h(3)),
            parents: vec![NodeId(h(4))],
        },
        Message::Same,
        Message::Excess { head: NodeId(h(3)) },
        Message::Working {
            retry_after_ms: 300,
        },
        Message::GetNodes {
            ids: vec![NodeId(h(5)), NodeId(h(6))],
        },
        Message::Nodes {
            nodes: vec![(NodeId(h(5)), vec![1, 2, 3])],
        },
        Message::GetChunks {
            ids: vec![ChunkId(h(7))],
        },
        Message::Chunk {
            id: ChunkId(h(7)),
            bytes: vec![0, 0xaa],
        },
        Message::NotFound {
            ids: vec![
                ObjectRef::Node(NodeId(h(8))),
                ObjectRef::Chunk(ChunkId(h(9))),
            ],
        },
        Message::Error {
            code: ErrorCode::SHARE_MISMATCH,
            message: "no".into(),
        },
        Message::Bye,
    ]
}

/// The wire format, pinned. A change here is a protocol change: bump `WIRE_VERSION`.
/// `r` stands for 32 repeated bytes (`rNN` = 32 times byte NN) to keep the table readable.
const GOLDEN: &[&str] = &[
    "00000044 01 00 01 r01 r02 01",
    "00000043 01 01 r01 01 r03",
    "00000023 01 01 r01 00",
    "00000063 01 02 r01 r03 01 r04",
    "00000002 01 03",
    "00000022 01 04 r03",
    "00000004 01 05 ac02",
    "00000043 01 06 02 r05 r06",
    "00000027 01 07 01 r05 03 010203",
    "00000023 01 08 01 r07",
    "00000025 01 09 r07 02 00aa",
    "00000045 01 0a 02 00 r08 01 r09",
    "00000006 01 0b 03 02 6e6f",
    "00000002 01 0c",
];

fn expand(golden: &str) -> String {
    golden
        .split(' ')
        .map(|part| match part.strip_prefix('r') {
            Some(b) => b.repeat(32),
            None => part.to_string(),
        })
        .collect()
}

#[test]
fn golden_encodings() {
    let samples = samples();
    assert_eq!(samples.len(), GOLDEN.len());
    for (msg, golden) in samples.iter().zip(GOLDEN) {
        let frame = encode(msg).unwrap();
        assert_eq!(hex(&frame), expand(golden), "{msg:?}");
        let (back, used) = decode_frame(&frame).unwrap();
        assert_eq!(&back, msg);
        assert_eq!(used, frame.len());
    }
}

#[test]
fn share_id_is_a_keyed_hash_not_the_key() {
    let key = [42u8; 32];
    let id = ShareId::from_key(&key);
    assert_ne!(id.0 .0, key);
    assert_ne!(id.0, Hash::of(&key));
    assert_eq!(id, ShareId::from_key(&key));
    assert_ne!(id, ShareId::from_key(&[43u8; 32]));
}

#[test]
fn unknown_version_is_reported_not_misparsed() {
    let mut frame = encode(&Message::Same).unwrap();
    frame[LEN_PREFIX] = 2;
    assert_eq!(
        decode_frame(&frame).unwrap_err(),
        DecodeError::UnknownVersion { version: 2 }
    );
    let e = Decoder::new().decode(&mut &frame[..]).unwrap_err();
    assert_eq!(e.code(), ErrorCode::PROTOCOL_VERSION);
    assert!(e.to_string().contains("unknown ecp wire version 2"), "{e}");
}

#[test]
fn oversize_length_is_refused_before_buffering() {
    let mut d = Decoder::new();
    let len = (MAX_FRAME_LEN as u32 + 1).to_be_bytes();
    // Two bytes of the prefix: nothing known yet.
    assert_eq!(d.decode(&mut &len[..2]).unwrap(), None);
    let e = d.decode(&mut &len[2..]).unwrap_err();
    assert_eq!(
        e,
        DecodeError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        }
    );
    assert_eq!(d.buffered(), 0);
    // The stream stays failed.
    assert_eq!(d.decode(&mut &encode(&Message::Same).unwrap()[..]), Err(e));
    assert!(matches!(
        decode_frame(&u32::MAX.to_be_bytes()),
        Err(DecodeError::TooLarge { .. })
    ));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 0]),
        Err(DecodeError::Invalid { .. })
    ));
}

#[test]
fn list_limits_are_enforced_on_decode_and_encode() {
    let too_many = Message::GetChunks {
        ids: vec![ChunkId(h(1)); MAX_IDS_PER_REQUEST + 1],
    };
    assert!(matches!(
        encode(&too_many),
        Err(EncodeError::Limit { what: "ids", .. })
    ));
    // Build the frame by hand to check the decoder refuses it on the announced count alone.
    let mut frame = vec![0, 0, 0, 0, WIRE_VERSION, 8];
    frame.extend(postcard::to_stdvec(&(MAX_IDS_PER_REQUEST as u32 + 1)).unwrap());
    // Enough bytes for every announced id, so only the limit can refuse it.
    frame.extend(std::iter::repeat_n(7u8, 32 * (MAX_IDS_PER_REQUEST + 1)));
    let n = (frame.len() - LEN_PREFIX) as u32;
    frame[..4].copy_from_slice(&n.to_be_bytes());
    let e = decode_frame(&frame).unwrap_err();
    assert!(
        matches!(&e, DecodeError::Invalid { reason } if reason.contains("exceeds the limit")),
        "{e}"
    );

    let big_chunk = Message::Chunk {
        id: ChunkId(h(1)),
        bytes: vec![0; MAX_CHUNK_BYTES + 1],
    };
    assert!(matches!(
        encode(&big_chunk),
        Err(EncodeError::Limit {
            what: "chunk bytes",
            ..
        })
    ));
    let max_chunk = Message::Chunk {
        id: ChunkId(h(1)),
        bytes: vec![0; MAX_CHUNK_BYTES],
    };
    let f = encode(&max_chunk).unwrap();
    assert_eq!(decode_frame(&f).unwrap().0, max_chunk);

    // A full Nodes reply of maximum-size nodes fits in one frame.
    let full = Message::Nodes {
        nodes: vec![(NodeId(h(1)), vec![9; MAX_NODE_BYTES]); MAX_NODES_PER_REPLY],
    };
    let f = encode(&full).unwrap();
    assert!(f.len() <= LEN_PREFIX + MAX_FRAME_LEN);
    assert_eq!(decode_frame(&f).unwrap().0, full);
    let over = Message::Nodes {
        nodes: vec![(NodeId(h(1)), vec![9; MAX_NODE_BYTES + 1])],
    };
    assert!(encode(&over).is_err());
    let long_text = Message::Error {
        code: ErrorCode::INTERNAL,
        message: "x".repeat(MAX_ERROR_TEXT + 1),
    };
    assert!(encode(&long_text).is_err());
}

#[test]
fn trailing_bytes_are_invalid() {
    let mut frame = encode(&Message::Same).unwrap();
    frame.push(0);
    frame[3] += 1;
    assert!(matches!(
        decode_frame(&frame),
        Err(DecodeError::Invalid { reason }) if reason.contains("trailing")
    ));
}

#[test]
fn decoder_handles_any_split_of_a_stream() {
    let mut stream = Vec::new();
    for m in samples() {
        encode_into(&m, &mut stream).unwrap();
    }
    // Every split point of the stream into two inputs, then byte by byte.
    for cut in 0..=stream.len() {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            let mut input = part;
            while let Some(m) = d.decode(&mut input).unwrap() {
                got.push(m);
            }
            assert!(input.is_empty());
        }
        assert_eq!(got, samples(), "cut at {cut}");
        assert_eq!(d.buffered(), 0);
    }
    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in stream.chunks(1) {
        let mut input = b;
        while let Some(m) = d.decode(&mut input).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, samples());
}

#[test]
fn every_truncation_is_incomplete() {
    for m in samples() {
        let frame = encode(&m).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(
                decode_frame(&frame[..cut]).unwrap_err(),
                DecodeError::Incomplete
            );
            let mut d = Decoder::new();
            assert_eq!(d.decode(&mut &frame[..cut]).unwrap(), None);
        }
    }
}

/// Random garbage, flipped bytes and random cuts never panic and never buffer past the limit.
/// Replay a failure with `LEFT_TEST_SEED=<seed>`.
#[test]
fn fuzz_decoder_never_panics() {
    let seed = std::env::var("LEFT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("fuzz_decoder_never_panics seed={seed}");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let valid: Vec<Vec<u8>> = samples().iter().map(|m| encode(m).unwrap()).collect();
    for _ in 0..20_000 {
        let mut input = if rng.random_bool(0.5) {
            let mut v = vec![0u8; rng.random_range(0..200)];
            rng.fill_bytes(&mut v);
            v
        } else {
            let mut v = valid[rng.random_range(0..valid.len())].clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..v.len());
                v[i] = rng.random();
            }
            v
        };
        if rng.random_bool(0.3) {
            // A small length prefix so random bodies are actually parsed.
            let n = rng.random_range(1..64u32);
            input.splice(0..0, n.to_be_bytes());
        }
        let _ = decode_frame(&input);
        let mut d = Decoder::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let cut = rng.random_range(0..=rest.len());
            let mut part = &rest[..cut];
            rest = &rest[cut..];
            while let Ok(Some(_)) = d.decode(&mut part) {}
            assert!(d.buffered() <= LEN_PREFIX + MAX_FRAME_LEN);
        }
    }
}

#[test]
fn hello_mismatches_are_clear() {
    let ours = samples().remove(0);
    assert_eq!(check_hello(&ours, &ours), Ok(()));
    let Message::Hello {
        protocol,
        share,
        device,
        ..
    } = ours.clone()
    else {
        unreachable!()
    };
    let theirs = Message::Hello {
        protocol,
        share,
        device,
        encryption: false,
    };
    let e = check_hello(&ours, &theirs).unwrap_err();
    assert_eq!(e.code(), ErrorCode::ENCRYPTION_MISMATCH);
    assert_eq!(
        e.to_string(),
        "encryption is on here but off on the peer; use the same --encryption on both sides"
    );
    let e2 = check_hello(&theirs, &ours).unwrap_err();
    assert!(e2.to_string().starts_with("encryption is off here but on"));
    let other_share = Message::Hello {
        protocol,
        share: ShareId(h(9)),
        device,
        encryption: true,
    };
    assert_eq!(
        check_hello(&ours, &other_share).unwrap_err().code(),
        ErrorCode::SHARE_MISMATCH
    );
    let newer = Message::Hello {
        protocol: protocol + 1,
        share,
        device,
        encryption: true,
    };
    assert!(check_hello(&ours, &newer)
        .unwrap_err()
        .to_string()
        .contains("protocol 2"));
    assert!(matches!(
        check_hello(&ours, &Message::Bye),
        Err(HelloMismatch::NotHello("Bye"))
    ));
    assert!(matches!(e.to_message(), Message::Error { code, .. } if code == e.code()));
}

#[test]
fn verify_checks_ids() {
    let node = Node::File(FileNode {
        size: 0,
        mode: 0o644,
        mtime_ns: 1,
        content: Content::Inline(vec![]),
    });
    let (id, bytes) = node.encode_with_id().unwrap();
    assert_eq!(verify_node(&id, &bytes).unwrap(), node);
    assert!(verify_node(&NodeId(h(1)), &bytes).is_err());
    let mut bad = bytes.clone();
    bad[0] ^= 1;
    assert!(verify_node(&id, &bad).is_err());

    let plain = vec![5u8; 10_000];
    let enc = left_store::codec::encode(&plain);
    let cid = ChunkId(Hash::of(&plain));
    assert_eq!(
        verify_chunk(&cid, &enc, MAX_CHUNK_SIZE).unwrap(),
        plain.len()
    );
    assert!(verify_chunk(&ChunkId(h(1)), &enc, MAX_CHUNK_SIZE).is_err());
    // Decompresses past the limit: refused.
    let e = verify_chunk(&cid, &enc, 1000).unwrap_err();
    assert!(e.to_string().contains("chunk"), "{e}");
    assert!(verify_chunk(&cid, &[], MAX_CHUNK_SIZE).is_err());
}

fn arb_hash() -> impl Strategy<Value = Hash> + Clone {
    any::<[u8; 32]>().prop_map(Hash)
}

fn arb_message() -> impl Strategy<Value = Message> {
    let node = arb_hash().prop_map(NodeId);
    let chunk = arb_hash().prop_map(ChunkId);
    let share = arb_hash().prop_map(ShareId);
    prop_oneof![
        (
            any::<u32>(),
            share.clone(),
            any::<[u8; 32]>(),
            any::<bool>()
        )
            .prop_map(|(protocol, share, device, encryption)| Message::Hello {
                protocol,
                share,
                device,
                encryption
            }),
        (share.clone(), proptest::option::of(node.clone()))
            .prop_map(|(share, head)| Message::Have { share, head }),
        (
            share,
            node.clone(),
            proptest::collection::vec(node.clone(), 0..MAX_PARENTS)
        )
            .prop_map(|(share, head, parents)| Message::Update {
                share,
                head,
                parents
            }),
        Just(Message::Same),
        node.clone().prop_map(|head| Message::Excess { head }),
        any::<u32>().prop_map(|retry_after_ms| Message::Working { retry_after_ms }),
        proptest::collection::vec(node.clone(), 0..100).prop_map(|ids| Message::GetNodes { ids }),
        proptest::collection::vec(
            (node.clone(), proptest::collection::vec(any::<u8>(), 0..300)),
            0..MAX_NODES_PER_REPLY
        )
        .prop_map(|nodes| Message::Nodes { nodes }),
        proptest::collection::vec(chunk.clone(), 0..100).prop_map(|ids| Message::GetChunks { ids }),
        (
            chunk.clone(),
            proptest::collection::vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(id, bytes)| Message::Chunk { id, bytes }),
        proptest::collection::vec(
            prop_oneof![
                node.prop_map(ObjectRef::Node),
                chunk.prop_map(ObjectRef::Chunk)
            ],
            0..50
        )
        .prop_map(|ids| Message::NotFound { ids }),
        (any::<u16>(), "\\PC{0,100}").prop_map(|(c, message)| Message::Error {
            code: ErrorCode(c),
            message
        }),
        Just(Message::Bye),
    ]
}

proptest! {
    #[test]
    fn round_trip(msgs in proptest::collection::vec(arb_message(), 1..8), cut in any::<prop::sample::Index>()) {
        let mut stream = Vec::new();
        for m in &msgs {
            encode_into(m, &mut stream).unwrap();
        }
        let cut = cut.index(stream.len() + 1);
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for part in [&stream[..cut], &stream[cut..]] {
            let mut input = part;
            while let Some(m) = d.decode(&mut input).unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_frame(&bytes);
        let mut d = Decoder::new();
        let mut input = &bytes[..];
        while let Ok(Some(_)) = d.decode(&mut input) {}
    }
}

#[test]
fn raw_chunks_are_verified_in_place() {
    let plain = vec![42u8; 3000];
    let cid = ChunkId(Hash(*blake3::hash(&plain).as_bytes()));
    let mut enc = vec![left_store::codec::CODEC_RAW];
    enc.extend_from_slice(&plain);
    assert_eq!(verify_chunk(&cid, &enc, MAX_CHUNK_SIZE).unwrap(), 3000);
    let e = verify_chunk(&ChunkId(h(2)), &enc, MAX_CHUNK_SIZE).unwrap_err();
    assert!(e.to_string().contains("do not hash to its id"), "{e}");
    let e = verify_chunk(&cid, &enc, 2999).unwrap_err();
    assert!(e.to_string().contains("exceeds the maximum"), "{e}");
    let e = verify_chunk(&cid, &[9, 1, 2], MAX_CHUNK_SIZE).unwrap_err();
    assert!(e.to_string().contains("codec"), "{e}");
}

#[test]
fn undecodable_frames_say_what_is_wrong_in_one_clean_line() {
    let msg = |body: &[u8]| {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        decode_frame(&f).unwrap_err().to_string()
    };
    // An unknown message type (tag 200), not postcard's "Serde Deserialization Error".
    assert_eq!(
        msg(&[WIRE_VERSION, 200, 1, 2, 3]),
        "malformed message (5 bytes): unknown message type 200"
    );
    // A Chunk cut short: the type is named.
    let mut chunk = encode(&Message::Chunk {
        id: ChunkId(h(1)),
        bytes: vec![5; 40],
    })
    .unwrap();
    chunk.truncate(LEN_PREFIX + 20);
    assert_eq!(
        msg(&chunk[LEN_PREFIX..]),
        "malformed Chunk message (20 bytes): it ends early"
    );
    // A bad boolean in a Hello (its encryption flag is its last byte).
    let mut hello = encode(&Message::Hello {
        protocol: 1,
        share: crate::ecp::ShareId(h(2)),
        device: [3; 32],
        encryption: true,
    })
    .unwrap();
    *hello.last_mut().unwrap() = 7;
    assert_eq!(
        msg(&hello[LEN_PREFIX..]),
        format!(
            "malformed Hello message ({} bytes): a flag is neither 0 nor 1",
            hello.len() - LEN_PREFIX
        )
    );
    assert_eq!(msg(&[]), "malformed message: an empty frame");
    for m in [
        msg(&[WIRE_VERSION, 200, 1, 2, 3]),
        msg(&chunk[LEN_PREFIX..]),
    ] {
        assert!(!m.contains("Serde"), "{m}");
        assert_eq!(m.matches("malformed").count(), 1, "{m}");
    }
    // The tag names agree with the encoder.
    for m in samples() {
        let f = encode(&m).unwrap();
        let tag = f[LEN_PREFIX + 1] as usize;
        assert_eq!(crate::ecp::message::KINDS[tag], m.kind());
    }
}
