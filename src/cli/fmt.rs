//! Small formatting helpers for human output: sizes, times, permission bits, raw names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `1536` -> `"1.5 KiB"`; below 1 KiB the exact byte count.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Nanoseconds since the Unix epoch -> `"2026-11-25 12:46:40 UTC"` (proleptic Gregorian, UTC).
pub(crate) fn time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = left_store::date::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Permission bits as `ls -l` shows them, with the type letter: `-rw-r--r--`, `drwxr-xr-x`, `l...`.
pub(crate) fn mode(kind: left_store::EntryKind, mode: u32) -> String {
    let mut s = String::with_capacity(10);
    s.push(match kind {
        left_store::EntryKind::File => '-',
        left_store::EntryKind::Dir => 'd',
        left_store::EntryKind::Symlink => 'l',
    });
    let special = [(0o4000, 's', 'S'), (0o2000, 's', 'S'), (0o1000, 't', 'T')];
    for (i, shift) in [6u32, 3, 0].into_iter().enumerate() {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let (mask, set, unset) = special[i];
        s.push(match (bits & 1 != 0, mode & mask != 0) {
            (true, false) => 'x',
            (false, false) => '-',
            (true, true) => set,
            (false, true) => unset,
        });
    }
    s
}

/// Raw bytes of a name, for human output (non-UTF-8 names are printed as they are).
pub(crate) fn raw(name: &OsStr) -> &[u8] {
    name.as_bytes()
}

/// A path for JSON: its text where it is UTF-8, else a lossy form (U+FFFD for bad bytes).
pub(crate) fn json_path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use left_store::EntryKind;

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(1 << 30), "1.0 GiB");
    }

    #[test]
    fn times() {
        assert_eq!(time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(time(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(time(1_700_000_000_123_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(time(-1_000_000_000), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn modes() {
        assert_eq!(mode(EntryKind::File, 0o644), "-rw-r--r--");
        assert_eq!(mode(EntryKind::Dir, 0o755), "drwxr-xr-x");
        assert_eq!(mode(EntryKind::File, 0o4755), "-rwsr-xr-x");
        assert_eq!(mode(EntryKind::Dir, 0o1777), "drwxrwxrwt");
        assert_eq!(mode(EntryKind::Symlink, 0o777), "lrwxrwxrwx");
    }
}
