//! Conflict names: the name a losing version of a merged entry is kept under
//! ([`conflict_name`], Syncthing's `stem.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.ext`) and the
//! lowercase base32 of a device id it embeds ([`base32_lower`]). Pure functions of their inputs,
//! so merges stay deterministic; which names conflict, and the `-n` counting, is the tree merge's
//! job (`merge/mod.rs`).

use crate::date::utc;

/// Lowercase RFC 4648 base32 without padding (what `left id` prints for a device): [`crate::base32::encode`].
pub use crate::base32::encode as base32_lower;

/// Cuts `b` to at most `max` bytes, not inside a UTF-8 sequence.
fn cut(b: &[u8], max: usize) -> &[u8] {
    if b.len() <= max {
        return b;
    }
    let mut n = max;
    while n > 0 && b[n] & 0xC0 == 0x80 {
        n -= 1;
    }
    &b[..n]
}

/// The longest conflict-copy name: one path component on the common file systems (NAME_MAX).
/// The store accepts longer names ([`MAX_NAME`](crate::node::MAX_NAME)), but a copy the folder cannot hold would live
/// only in the store.
pub const CONFLICT_NAME_MAX: usize = 255;

/// The longest tail after the last dot still kept as an extension in a conflict name.
pub const CONFLICT_EXT_MAX: usize = 32;

/// The name a conflicting version of `name` is kept under (Syncthing's pattern):
/// `stem.sync-conflict-YYYYMMDD-HHMMSS-DEVICE.ext`, where `ext` is what follows the last dot of
/// `name` when that dot is not its first character (otherwise there is no extension), the date
/// and time are `mtime_ns` in UTC, and `DEVICE` is the first 8 characters of the lowercase base32
/// of `device` (as `left id` prints it). `n` > 1 appends `-n` before the extension (the name was
/// taken). The result is at most [`CONFLICT_NAME_MAX`] (255) bytes, what ext4, XFS, btrfs and
/// APFS accept in one path component: a longer one gets its stem (then its extension) cut at a
/// UTF-8 boundary. An "extension" longer than [`CONFLICT_EXT_MAX`] bytes is treated as part of
/// the stem. A pure function of its inputs, so merges stay deterministic; two long names cut to
/// the same prefix are told apart by `n` (the caller counts up while a name is taken).
pub fn conflict_name(name: &[u8], mtime_ns: i64, device: &[u8; 32], n: u32) -> Vec<u8> {
    let (stem, ext) = match name.iter().rposition(|&c| c == b'.') {
        Some(i) if i > 0 && name.len() - i <= CONFLICT_EXT_MAX => (&name[..i], &name[i..]),
        _ => (name, &name[name.len()..]),
    };
    let (y, mo, d, h, mi, s) = utc(mtime_ns);
    let mut mid = format!(
        ".sync-conflict-{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}-{}",
        &base32_lower(device)[..8]
    );
    if n > 1 {
        mid.push_str(&format!("-{n}"));
    }
    let ext = cut(ext, CONFLICT_NAME_MAX - mid.len());
    let stem = cut(stem, CONFLICT_NAME_MAX - mid.len() - ext.len());
    let mut out = Vec::with_capacity(stem.len() + mid.len() + ext.len());
    out.extend_from_slice(stem);
    out.extend_from_slice(mid.as_bytes());
    out.extend_from_slice(ext);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::check_name;

    #[test]
    fn base32_matches_left_id() {
        assert_eq!(base32_lower(&[0; 32]), "a".repeat(52));
        assert_eq!(base32_lower(b"f"), "my");
        assert_eq!(base32_lower(b"foobar"), "mzxw6ytboi");
    }

    #[test]
    fn conflict_names() {
        let dev = [0xffu8; 32];
        let t = 1_709_210_096 * 1_000_000_000;
        assert_eq!(
            conflict_name(b"notes.txt", t, &dev, 1),
            b"notes.sync-conflict-20240229-123456-77777777.txt"
        );
        assert_eq!(
            conflict_name(b"a.tar.gz", t, &dev, 3),
            b"a.tar.sync-conflict-20240229-123456-77777777-3.gz"
        );
        assert_eq!(
            conflict_name(b".bashrc", t, &dev, 1),
            b".bashrc.sync-conflict-20240229-123456-77777777"
        );
        assert_eq!(
            conflict_name(b"Makefile", t, &dev, 2),
            b"Makefile.sync-conflict-20240229-123456-77777777-2"
        );
        // Too long: the stem is shortened, never inside a UTF-8 character.
        let mut long = "é".repeat(2047).into_bytes();
        long.extend_from_slice(b".md");
        let c = conflict_name(&long, t, &dev, 1);
        assert!(c.len() <= CONFLICT_NAME_MAX, "{}", c.len());
        check_name(&c).unwrap();
        assert!(std::str::from_utf8(&c).unwrap().ends_with("-77777777.md"));
        // Names that ext4 holds (up to 255 bytes) give copies that it holds too, cut at a
        // character boundary whatever the cut point, and the counter survives the cut.
        for len in [200usize, 213, 214, 215, 254, 255] {
            for unit in ["a", "é", "日", "😀"] {
                let mut name = unit.repeat(len / unit.len()).into_bytes();
                name.truncate(len - 4);
                while std::str::from_utf8(&name).is_err() {
                    name.pop();
                }
                name.extend_from_slice(b".txt");
                for n in [1, 2, 1000] {
                    let c = conflict_name(&name, t, &dev, n);
                    assert!(
                        c.len() <= CONFLICT_NAME_MAX,
                        "{len} {unit} {n}: {}",
                        c.len()
                    );
                    let s = std::str::from_utf8(&c).expect("cut inside a character");
                    let tail = if n > 1 {
                        format!("-77777777-{n}.txt")
                    } else {
                        "-77777777.txt".into()
                    };
                    assert!(s.ends_with(&tail), "{s}");
                    assert!(s.starts_with(unit), "{s}");
                }
                assert_ne!(
                    conflict_name(&name, t, &dev, 1),
                    conflict_name(&name, t, &dev, 2)
                );
            }
        }
        // A long tail after a dot is not an extension: the copy still keeps some of the stem.
        let mut odd = b"x.".to_vec();
        odd.extend(std::iter::repeat_n(b'y', 250));
        let c = conflict_name(&odd, t, &dev, 1);
        assert!(
            c.len() <= CONFLICT_NAME_MAX && c.starts_with(b"x.yyy"),
            "{}",
            String::from_utf8_lossy(&c)
        );
        assert!(c.ends_with(b"-77777777"));
    }
}
