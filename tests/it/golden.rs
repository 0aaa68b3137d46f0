//! Golden vectors for the formats other versions of left read: conflict-copy names (merges must
//! give the same tree on every peer, whatever version each runs), device ids, share keys and the
//! control socket's JSON lines. A restructuring may swap an encoder (base32, dates, the wire types
//! of control.rs); none of these strings may change. The expected values are computed outside
//! left where they can be (RFC 4648 base32, RFC 7748's X25519 vector, calendar dates by Python's
//! `datetime`), and written out by hand from the format's documentation otherwise.

use std::path::PathBuf;

use left::control::{Request, Response};
use left::identity::{format_share_key, parse_share_key, DeviceId, Identity};
use left_store::{base32_lower, conflict_name, Hash, NodeId};
use left_store::{AddReport, GcReport, Skipped};

/// RFC 7748 section 6.1: Alice's private key and public key.
const RFC7748_SECRET: &str = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
const RFC7748_PUBLIC: &str = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";

fn hex32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn seq32() -> [u8; 32] {
    std::array::from_fn(|i| i as u8)
}

#[test]
fn base32_is_rfc4648_lowercase_unpadded() {
    // RFC 4648 section 10, lowercased, padding dropped.
    for (input, want) in [
        (&b""[..], ""),
        (b"f", "my"),
        (b"fo", "mzxq"),
        (b"foo", "mzxw6"),
        (b"foob", "mzxw6yq"),
        (b"fooba", "mzxw6ytb"),
        (b"foobar", "mzxw6ytboi"),
    ] {
        assert_eq!(base32_lower(input), want, "base32 of {input:?}");
    }
    assert_eq!(
        base32_lower(&seq32()),
        "aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"
    );
}

#[test]
fn device_ids_are_the_base32_of_the_x25519_public_key() {
    let id = Identity::from_secret(hex32(RFC7748_SECRET)).device_id();
    assert_eq!(id.0, hex32(RFC7748_PUBLIC), "X25519 public key (RFC 7748)");
    let text = "quqpacmjgctvi5elpxolipxxlig36oqney4bv5hlusuy5ku3jzva";
    assert_eq!(id.to_string(), text);
    assert_eq!(id.fmt_short(), "quqpacmj");
    assert_eq!(text.parse::<DeviceId>().unwrap(), id);
    assert_eq!(
        text.to_uppercase().parse::<DeviceId>().unwrap(),
        id,
        "any case"
    );
    assert_eq!(
        format!(" {text}\n").parse::<DeviceId>().unwrap(),
        id,
        "white space"
    );
    // The last character carries 3 padding bits: a spelling with them set is not canonical.
    let mut bad = text.to_string();
    bad.replace_range(51.., "b");
    assert!(bad.parse::<DeviceId>().is_err(), "{bad} is not canonical");
    assert!(text[..51].parse::<DeviceId>().is_err(), "51 characters");
    assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
}

#[test]
fn share_keys_print_as_base32_and_parse_from_base32_or_hex() {
    let key = seq32();
    let text = "aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq";
    assert_eq!(format_share_key(&key), text);
    assert_eq!(parse_share_key(text).unwrap(), key);
    assert_eq!(
        parse_share_key(&format!("  {}\n", text.to_uppercase())).unwrap(),
        key
    );
    let hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    assert_eq!(parse_share_key(hex).unwrap(), key);
    assert_eq!(parse_share_key(&hex.to_uppercase()).unwrap(), key);
    assert!(parse_share_key(&hex[..62]).is_err());
    assert!(parse_share_key("not a key").is_err());
}

#[test]
fn conflict_names_are_stable() {
    let dev = seq32(); // base32 "aaaqeaye..."
    let t = 1_700_000_000 * 1_000_000_000 + 123; // 2023-11-14 22:13:20 UTC
    let name = |n: &[u8], ns: i64, k: u32| {
        String::from_utf8_lossy(&conflict_name(n, ns, &dev, k)).into_owned()
    };
    assert_eq!(
        name(b"report.pdf", t, 1),
        "report.sync-conflict-20231114-221320-aaaqeaye.pdf"
    );
    assert_eq!(
        name(b"report.pdf", t, 2),
        "report.sync-conflict-20231114-221320-aaaqeaye-2.pdf"
    );
    assert_eq!(
        name(b"archive.tar.gz", t, 1),
        "archive.tar.sync-conflict-20231114-221320-aaaqeaye.gz"
    );
    assert_eq!(
        name(b".bashrc", t, 1),
        ".bashrc.sync-conflict-20231114-221320-aaaqeaye"
    );
    assert_eq!(
        name(b"Makefile", t, 1),
        "Makefile.sync-conflict-20231114-221320-aaaqeaye"
    );
    // 1969-12-31 23:59:59 UTC: one second before the epoch.
    assert_eq!(
        name(b"a.txt", -1_000_000_000, 1),
        "a.sync-conflict-19691231-235959-aaaqeaye.txt"
    );
    // 2000-02-29 (a leap day of a century leap year) 00:00:00.
    assert_eq!(
        name(b"a", 951_782_400 * 1_000_000_000, 1),
        "a.sync-conflict-20000229-000000-aaaqeaye"
    );
    // An "extension" of 33 bytes is part of the stem.
    let long_ext = format!("x.{}", "e".repeat(32));
    assert_eq!(
        name(long_ext.as_bytes(), t, 1),
        format!("{long_ext}.sync-conflict-20231114-221320-aaaqeaye")
    );
    // Non-UTF-8 bytes pass through.
    assert_eq!(
        conflict_name(b"\xff.b", t, &dev, 1),
        b"\xff.sync-conflict-20231114-221320-aaaqeaye.b".to_vec()
    );
    // A long name is cut to 255 bytes at a UTF-8 boundary of its stem; the extension stays.
    let stem = "é".repeat(200); // 400 bytes
    let long = conflict_name(format!("{stem}.txt").as_bytes(), t, &dev, 3);
    let mid = ".sync-conflict-20231114-221320-aaaqeaye-3.txt";
    let kept = (255 - mid.len()) / 2 * 2; // whole two-byte characters only
    assert_eq!(long.len(), kept + mid.len());
    assert_eq!(
        String::from_utf8(long).unwrap(),
        format!("{}{mid}", "é".repeat(kept / 2))
    );
}

#[test]
fn control_socket_lines_are_stable() {
    let node = NodeId(Hash(seq32()));
    let line = |v: &dyn erased::Ser| v.json();
    let requests: Vec<(Request, &str)> = vec![
        (
            Request::Add {
                paths: vec![
                    PathBuf::from("a/b.txt"),
                    PathBuf::from(std::ffi::OsStr::new("\u{e9}")),
                ],
                message: "msg".into(),
                rehash: true,
                follow_links: false,
            },
            r#"{"Add":{"paths":["a/b.txt","é"],"message":"msg","rehash":true,"follow_links":false}}"#,
        ),
        (
            Request::Gc {
                keep_last: Some(3),
                keep_within_secs: None,
            },
            r#"{"Gc":{"keep_last":3,"keep_within_secs":null}}"#,
        ),
        (
            Request::DropPeerRef {
                device: "quqpacmj".into(),
            },
            r#"{"DropPeerRef":{"device":"quqpacmj"}}"#,
        ),
        (Request::Status, r#""Status""#),
        (Request::Stop, r#""Stop""#),
    ];
    for (req, want) in &requests {
        assert_eq!(line(req), *want);
        assert_eq!(
            &serde_json::from_str::<Request>(want).unwrap(),
            req,
            "parses back"
        );
    }
    // A non-UTF-8 path travels as its bytes.
    use std::os::unix::ffi::OsStrExt;
    let raw = Request::Add {
        paths: vec![PathBuf::from(std::ffi::OsStr::from_bytes(b"\xffz"))],
        message: String::new(),
        rehash: false,
        follow_links: false,
    };
    assert_eq!(
        line(&raw),
        r#"{"Add":{"paths":[[255,122]],"message":"","rehash":false,"follow_links":false}}"#
    );
    // Old clients omit `keep_within_secs`.
    assert_eq!(
        serde_json::from_str::<Request>(r#"{"Gc":{"keep_last":null}}"#).unwrap(),
        Request::Gc {
            keep_last: None,
            keep_within_secs: None
        }
    );

    let node_json = format!("{:?}", seq32()).replace(' ', "");
    let responses: Vec<(Response, String)> = vec![
        (
            Response::Add(AddReport {
                snapshot: Some(node),
                head: None,
                files: 1,
                dirs: 2,
                symlinks: 3,
                bytes_read: 4,
                bytes_new: 5,
                bytes_stored: 6,
                skipped: vec![Skipped { path: "x".into(), reason: "gone".into() }],
                unsettled: vec![],
                frozen: 7,
                newly_frozen: 8,
            }),
            format!(
                r#"{{"Add":{{"snapshot":{node_json},"head":null,"files":1,"dirs":2,"symlinks":3,"bytes_read":4,"bytes_new":5,"bytes_stored":6,"skipped":[{{"path":"x","reason":"gone"}}],"frozen":7,"newly_frozen":8}}}}"#
            ),
        ),
        (
            Response::Gc(GcReport {
                chunks_removed: 1,
                nodes_removed: 2,
                bytes_before: 3,
                bytes_after: 4,
                kept_by: vec![],
                dropped_refs: vec!["peers/x".into()],
            }),
            r#"{"Gc":{"chunks_removed":1,"nodes_removed":2,"bytes_before":3,"bytes_after":4,"kept_by":[],"dropped_refs":["peers/x"]}}"#.into(),
        ),
        (Response::PeerRefDropped(Some(node)), format!(r#"{{"PeerRefDropped":{node_json}}}"#)),
        (Response::PeerRefDropped(None), r#"{"PeerRefDropped":null}"#.into()),
        (
            Response::Status(serde_json::json!({"listening": "127.0.0.1:1"})),
            r#"{"Status":{"listening":"127.0.0.1:1"}}"#.into(),
        ),
        (Response::Stopping, r#""Stopping""#.into()),
        (
            Response::Error { message: "m".into(), hint: None },
            r#"{"Error":{"message":"m","hint":null}}"#.into(),
        ),
    ];
    for (resp, want) in &responses {
        assert_eq!(line(resp), *want);
        assert_eq!(
            &serde_json::from_str::<Response>(want).unwrap(),
            resp,
            "parses back"
        );
    }
    // Replies of older servers without the later fields still parse.
    let old = format!(
        r#"{{"Add":{{"snapshot":null,"head":{node_json},"files":0,"dirs":0,"symlinks":0,"bytes_read":0,"bytes_new":0,"bytes_stored":0,"skipped":[]}}}}"#
    );
    assert!(
        matches!(serde_json::from_str::<Response>(&old).unwrap(), Response::Add(r) if r.head == Some(node) && r.frozen == 0)
    );
}

/// `serde_json::to_string` behind a trait object, so one closure serves requests and responses.
mod erased {
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).expect("serializes")
        }
    }
}
