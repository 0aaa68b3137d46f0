//! A set of `u64` values stored as disjoint, non-adjacent half-open ranges.
//!
//! Used for received packet numbers (the ACK ranges), received stream offsets, acknowledged stream
//! offsets and the retransmission queue. Ranges are kept in a `BTreeMap` from start to end, so
//! inserting or removing a range costs O(log n + k) where k is the number of ranges it touches, as in
//! quinn-proto's `range_set`.

use std::collections::btree_map;
use std::collections::BTreeMap;
use std::ops::Range;

/// Disjoint, non-adjacent half-open ranges of `u64`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.0
            .range(..=x)
            .next_back()
            .is_some_and(|(_, &end)| end > x)
    }

    /// Whether the whole of `r` is in the set.
    pub fn contains_range(&self, r: Range<u64>) -> bool {
        if r.is_empty() {
            return true;
        }
        self.0
            .range(..=r.start)
            .next_back()
            .is_some_and(|(_, &end)| end >= r.end)
    }

    /// Inserts one value; returns whether it was new.
    pub fn insert_one(&mut self, x: u64) -> bool {
        self.insert(x..x + 1)
    }

    /// Inserts a range; returns whether any value in it was new.
    pub fn insert(&mut self, mut r: Range<u64>) -> bool {
        if r.is_empty() {
            return false;
        }
        // Merge with a predecessor that overlaps or touches.
        if let Some((&start, &end)) = self.0.range(..=r.start).next_back() {
            if end >= r.end {
                return false;
            }
            if end >= r.start {
                self.0.remove(&start);
                r.start = start;
            }
        }
        // Absorb successors that overlap or touch.
        while let Some((&start, &end)) = self.0.range(r.start..).next() {
            if start > r.end {
                break;
            }
            self.0.remove(&start);
            r.end = r.end.max(end);
        }
        self.0.insert(r.start, r.end);
        true
    }

    /// Removes a range of values.
    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        if let Some((&start, &end)) = self.0.range(..r.start).next_back() {
            if end > r.start {
                self.0.insert(start, r.start);
                if end > r.end {
                    self.0.insert(r.end, end);
                    return;
                }
            }
        }
        while let Some((&start, &end)) = self.0.range(r.start..).next() {
            if start >= r.end {
                break;
            }
            self.0.remove(&start);
            if end > r.end {
                self.0.insert(r.end, end);
                break;
            }
        }
    }

    /// The lowest maximal sub-range of `r` that is not in the set.
    pub fn first_gap(&self, r: Range<u64>) -> Option<Range<u64>> {
        let mut start = r.start;
        if let Some((_, &end)) = self.0.range(..=start).next_back() {
            start = start.max(end);
        }
        if start >= r.end {
            return None;
        }
        let end = self
            .0
            .range(start..)
            .next()
            .map_or(r.end, |(&s, _)| s.min(r.end));
        Some(start..end)
    }

    /// Removes and returns up to `max_len` values from the lowest range.
    pub fn pop_min(&mut self, max_len: u64) -> Option<Range<u64>> {
        let (&start, &end) = self.0.iter().next()?;
        self.0.remove(&start);
        let cut = start + (end - start).min(max_len);
        if cut < end {
            self.0.insert(cut, end);
        }
        Some(start..cut)
    }

    /// The lowest range.
    pub fn first(&self) -> Option<Range<u64>> {
        self.0.iter().next().map(|(&s, &e)| s..e)
    }

    /// The smallest value.
    pub fn min(&self) -> Option<u64> {
        self.0.keys().next().copied()
    }

    /// The largest value.
    pub fn max(&self) -> Option<u64> {
        self.0.values().next_back().map(|&e| e - 1)
    }

    /// Number of ranges (not values).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops the lowest ranges until at most `max` remain.
    pub fn truncate_low(&mut self, max: usize) {
        while self.0.len() > max {
            let k = *self.0.keys().next().expect("non-empty: len > max >= 0");
            self.0.remove(&k);
        }
    }

    /// Removes all values.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Ranges in ascending order.
    pub fn iter(&self) -> Iter<'_> {
        Iter(self.0.iter())
    }
}

/// Iterator over the ranges of a [`RangeSet`].
pub struct Iter<'a>(btree_map::Iter<'a, u64, u64>);

impl Iterator for Iter<'_> {
    type Item = Range<u64>;
    fn next(&mut self) -> Option<Range<u64>> {
        self.0.next().map(|(&s, &e)| s..e)
    }
}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Range<u64>> {
        self.0.next_back().map(|(&s, &e)| s..e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
        Pop(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..200, 0u64..20).prop_map(|(s, l)| Op::Insert(s, l)),
            (0u64..200, 0u64..20).prop_map(|(s, l)| Op::Remove(s, l)),
            (1u64..10).prop_map(Op::Pop),
        ]
    }

    proptest! {
        #[test]
        fn matches_btreeset(ops in proptest::collection::vec(op(), 0..60)) {
            let mut set = RangeSet::new();
            let mut model = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(s, l) => {
                        let new = (s..s + l).any(|x| !model.contains(&x));
                        model.extend(s..s + l);
                        prop_assert_eq!(set.insert(s..s + l), new);
                    }
                    Op::Remove(s, l) => {
                        for x in s..s + l { model.remove(&x); }
                        set.remove(s..s + l);
                    }
                    Op::Pop(n) => {
                        let got = set.pop_min(n);
                        match model.iter().next().copied() {
                            None => prop_assert!(got.is_none()),
                            Some(first) => {
                                let got = got.unwrap();
                                prop_assert_eq!(got.start, first);
                                for x in got.clone() { prop_assert!(model.remove(&x)); }
                                // The pop stops at a gap or at n values.
                                prop_assert!(got.end - got.start == n || !model.contains(&got.end));
                            }
                        }
                    }
                }
                // Ranges are disjoint, non-adjacent and equal the model.
                let mut prev_end = None;
                let mut flat = BTreeSet::new();
                for r in set.iter() {
                    prop_assert!(r.start < r.end);
                    if let Some(p) = prev_end { prop_assert!(r.start > p); }
                    prev_end = Some(r.end);
                    flat.extend(r);
                }
                prop_assert_eq!(&flat, &model);
                prop_assert_eq!(set.min(), model.iter().next().copied());
                prop_assert_eq!(set.max(), model.iter().next_back().copied());
                for x in 0..230 { prop_assert_eq!(set.contains(x), model.contains(&x)); }
                // first_gap finds the lowest missing run of a window.
                let w = 50..90u64;
                let expect_start = w.clone().find(|x| !model.contains(x));
                match set.first_gap(w.clone()) {
                    None => prop_assert!(expect_start.is_none()),
                    Some(g) => {
                        prop_assert_eq!(Some(g.start), expect_start);
                        prop_assert!(g.clone().all(|x| !model.contains(&x)));
                        prop_assert!(g.end == w.end || model.contains(&g.end));
                    }
                }
            }
        }
    }

    #[test]
    fn contains_range_and_truncate() {
        let mut s = RangeSet::new();
        s.insert(0..10);
        s.insert(20..30);
        s.insert(40..50);
        assert!(s.contains_range(2..10));
        assert!(!s.contains_range(5..21));
        s.truncate_low(2);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![20..30, 40..50]);
    }
}
