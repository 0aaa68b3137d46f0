//! How the CLI tells what happened with peers: the hint for each kind of peer failure and the
//! `peers` array of `--json`.

use left::app::{PeerFailure, PeerOutcome};
use left::identity::DeviceId;
use serde_json::json;

/// What to do about one kind of failure, or `None` when no advice would help.
pub(crate) fn hint_for(kind: PeerFailure) -> Option<&'static str> {
    Some(match kind {
        PeerFailure::Unreachable => {
            "check that `left serve` runs on the peer, that the address and port are right, and that both sides hold the same share key (`left share-key`)"
        }
        PeerFailure::Misbehaved => {
            "the peer sent data that failed verification; nothing from it was kept; tell its owner (`left verify` there checks its store)"
        }
        PeerFailure::Refused => {
            "a device was refused: check `left peers` on both sides (`--pin`/`--unpin`, `--revoke`/`--unrevoke`)"
        }
        PeerFailure::Encryption => "use the same --encryption setting on both sides",
        PeerFailure::OtherShare => {
            "both sides must hold the same share key (`left share-key` there, `left init --join KEY` here)"
        }
        PeerFailure::Version => {
            "the two sides run incompatible versions of left: upgrade the older one"
        }
        PeerFailure::Other => return None,
    })
}

/// One hint line for a failed sync: the advice for each kind of failure among the peers (named
/// when they failed differently), or `None` when no advice would help.
pub(crate) fn failure_hint(peers: &[PeerOutcome]) -> Option<String> {
    let mut kinds: Vec<(PeerFailure, Vec<&str>)> = Vec::new();
    for p in peers.iter().filter(|p| p.error.is_some()) {
        let kind = p.error.as_ref().map_or(PeerFailure::Other, |e| e.kind);
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, labels)) => labels.push(&p.label),
            None => kinds.push((kind, vec![&p.label])),
        }
    }
    let hints: Vec<(Vec<&str>, &str)> = kinds
        .into_iter()
        .filter_map(|(k, labels)| hint_for(k).map(|h| (labels, h)))
        .collect();
    match hints.as_slice() {
        [] => None,
        [(_, h)] => Some(h.to_string()),
        many => Some(
            many.iter()
                .map(|(labels, h)| format!("{}: {h}", labels.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    }
}

/// The `peers` array of `verify --repair --json`.
pub(crate) fn peers_json(peers: &[PeerOutcome]) -> serde_json::Value {
    json!(peers
        .iter()
        .map(|p| json!({
            "peer": p.label,
            "addr": p.addr.map(|a| a.to_string()),
            "device": p.device.map(|d| DeviceId(d).to_string()),
            "error": p.error.as_ref().map(|e| &e.reason),
        }))
        .collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use left::app::PeerError;

    #[test]
    fn each_kind_of_failure_gets_its_own_hint() {
        let peer = |label: &str, failure: PeerFailure| PeerOutcome {
            label: label.into(),
            error: Some(PeerError::retry(failure, "it failed")),
            ..PeerOutcome::default()
        };
        let hint = |peers: Vec<PeerOutcome>| failure_hint(&peers);
        let one = |f| hint(vec![peer("a", f)]).unwrap_or_default();
        assert!(one(PeerFailure::Unreachable).contains("`left serve` runs"));
        for f in [
            PeerFailure::Misbehaved,
            PeerFailure::Refused,
            PeerFailure::Encryption,
            PeerFailure::OtherShare,
            PeerFailure::Version,
        ] {
            assert!(!one(f).contains("`left serve` runs"), "{f:?}: {}", one(f));
        }
        assert!(one(PeerFailure::Misbehaved).contains("failed verification"));
        assert!(one(PeerFailure::Refused).contains("left peers"));
        assert!(one(PeerFailure::Encryption).contains("--encryption"));
        assert!(one(PeerFailure::OtherShare).contains("share key"));
        assert!(one(PeerFailure::Version).contains("upgrade"));
        assert_eq!(hint(vec![peer("a", PeerFailure::Other)]), None);
        // Two peers failing the same way: one hint; differently: each named, on one line.
        assert_eq!(
            hint(vec![
                peer("a", PeerFailure::Unreachable),
                peer("b", PeerFailure::Unreachable)
            ]),
            Some(one(PeerFailure::Unreachable))
        );
        let both = hint(vec![
            peer("a", PeerFailure::Unreachable),
            peer("b", PeerFailure::Misbehaved),
            peer("c", PeerFailure::Other),
        ])
        .unwrap();
        assert!(both.starts_with("a: check that"), "{both}");
        assert!(both.contains("; b: the peer sent data"), "{both}");
        assert!(!both.contains('\n'), "{both}");
    }
}
