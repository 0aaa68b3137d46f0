//! Whether a head announced or fetched needs anything more here ([`holds`]), and the cache of
//! its answers the loop keeps per head of ours.

use left_store::{NodeId, Store};

/// Answers of [`holds`] for our current head (an announcement of an old snapshot would
/// otherwise cost a history walk each time it is repeated).
#[derive(Default)]
pub(super) struct HoldsCache {
    ours: Option<NodeId>,
    known: std::collections::HashMap<NodeId, bool>,
}

/// [`holds`], its yes remembered until our head moves (at most 4096 answers).
pub(super) fn holds_cached(store: &Store, head: NodeId, cache: &mut HoldsCache) -> bool {
    let ours = store.head().ok().flatten();
    if cache.ours != ours || cache.known.len() > 4096 {
        cache.ours = ours;
        cache.known.clear();
    }
    if let Some(&k) = cache.known.get(&head) {
        return k;
    }
    // Only a yes is kept: a no can turn into a yes without our head moving (a send-only
    // device stored the header, the guard held it).
    let k = holds(store, head);
    if k {
        cache.known.insert(head, k);
    }
    k
}

/// Whether `head` is ours or behind ours (nothing to fetch or merge, [`crate::app::decide::holds`]),
/// or held by the deletion guard (not pulled again until the user decides).
/// On a send-only device: or whose header is stored (it is looked at, never taken).
pub(super) fn holds(store: &Store, head: NodeId) -> bool {
    if store.send_only().unwrap_or(false) && crate::app::send_only::knows(store, head) {
        return true;
    }
    crate::app::decide::holds(store, store.head().ok().flatten(), head)
        || crate::app::guard::GuardState::load(store.dir()).is_ok_and(|g| g.is_held(head))
}
