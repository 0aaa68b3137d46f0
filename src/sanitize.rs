//! Text from outside made safe to print: the one place every log line goes through.
//!
//! A peer chooses many strings we print: the reason of its CLOSE frame (up to 1 KiB of arbitrary
//! bytes), the text of an ecp `Error`, the names in the trees it sends (which reach conflict and
//! checkout warnings). Printed raw they can forge log lines (a newline then `left: ...`), move the
//! cursor or rewrite the terminal (ESC sequences), or reorder what a reader sees (bidirectional
//! overrides). Everything printed on stderr by `left serve` and the other commands goes through
//! [`line`] (the [`log_line!`](crate::log_line) macro and the CLI's last error line); peer text
//! embedded in one-line reasons is bounded first with [`field`].
//!
//! Escaping is visible and reversible to a reader: a newline becomes `\n`, ESC `\x1b`, U+202E
//! `\u{202e}`; everything else printable stays as it is (names in any script are kept).

/// Most characters kept of one peer-supplied field (a reason, a message); longer ones are cut and
/// end with `…`.
pub const MAX_FIELD_CHARS: usize = 300;
/// Most characters of one log line.
pub const MAX_LINE_CHARS: usize = 4096;

/// Whether `c` must not reach a terminal as it is: control characters (C0, DEL, C1, so ESC,
/// CR and LF), line and paragraph separators, bidirectional controls, zero-width characters
/// and the byte-order mark.
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{2028}' | '\u{2029}'            // line / paragraph separator
            | '\u{200b}'..='\u{200f}'          // zero width, LRM, RLM
            | '\u{202a}'..='\u{202e}'          // bidi embeddings and overrides
            | '\u{2066}'..='\u{2069}'          // bidi isolates
            | '\u{061c}'                       // Arabic letter mark
            | '\u{feff}')
}

/// Appends `s` to `out` escaped, at most `max` characters of it (an escape counts as the
/// characters it prints); returns false when `s` was cut.
fn escape_into(out: &mut String, s: &str, max: usize) -> bool {
    let mut used = 0usize;
    for c in s.chars() {
        let mut buf = [0u8; 12];
        let piece: &str = if !is_unsafe(c) {
            c.encode_utf8(&mut buf)
        } else {
            let text = match c {
                '\n' => "\\n".to_string(),
                '\r' => "\\r".to_string(),
                '\t' => "\\t".to_string(),
                c if (c as u32) < 0x100 => format!("\\x{:02x}", c as u32),
                c => format!("\\u{{{:x}}}", c as u32),
            };
            let n = text.len();
            buf[..n].copy_from_slice(text.as_bytes());
            std::str::from_utf8(&buf[..n]).expect("ascii")
        };
        let width = piece.chars().count();
        if used + width > max {
            out.push('…');
            return false;
        }
        used += width;
        out.push_str(piece);
    }
    true
}

/// A peer-supplied string ready to embed in a one-line message: escaped and at most
/// [`MAX_FIELD_CHARS`] characters (then `…`).
pub fn field(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_FIELD_CHARS * 4));
    escape_into(&mut out, s, MAX_FIELD_CHARS);
    out
}

/// Peer-supplied bytes (a CLOSE reason, a name) as a [`field`]; invalid UTF-8 shows as U+FFFD.
pub fn field_bytes(b: &[u8]) -> String {
    field(&String::from_utf8_lossy(b))
}

/// A whole log line made safe: escaped (so it stays one line, without terminal sequences) and at
/// most [`MAX_LINE_CHARS`] characters.
pub fn line(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_LINE_CHARS * 4));
    escape_into(&mut out, s, MAX_LINE_CHARS);
    out
}

/// Writes `s` to stderr as one safe line ([`line`]); errors writing stderr are ignored.
pub fn eprint_line(s: &str) {
    use std::io::Write as _;
    let l = line(s);
    let mut e = std::io::stderr().lock();
    let _ = writeln!(e, "{l}");
}

/// A displayable wrapper escaping its text as [`field`] does.
pub struct Field<'a>(pub &'a str);

impl std::fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = String::new();
        escape_into(&mut out, self.0, MAX_FIELD_CHARS);
        f.write_str(&out)
    }
}

/// `eprintln!` for log lines: formats, then prints through [`eprint_line`], so the line stays one
/// line and carries no terminal sequences whatever the arguments hold.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::sanitize::eprint_line(&::std::format!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_lines_stay_lines() {
        let forged = "bye\n\rleft: peer X connected\x1b[2J\x1b]0;owned\x07\u{202e}txt.exe\u{9b}\0";
        let out = line(forged);
        assert!(!out.chars().any(is_unsafe), "{out:?}");
        assert_eq!(
            out,
            "bye\\n\\rleft: peer X connected\\x1b[2J\\x1b]0;owned\\x07\\u{202e}txt.exe\\x9b\\x00"
        );
        // Printable text in any script is left alone.
        assert_eq!(line("café/日本/ok-file.txt"), "café/日本/ok-file.txt");
    }

    #[test]
    fn fields_are_bounded() {
        let long = "\x1b".repeat(2000);
        let f = field(&long);
        assert!(f.chars().count() <= MAX_FIELD_CHARS + 1, "{}", f.len());
        assert!(f.ends_with('…'));
        assert!(!f.contains('\x1b'));
        let l = line(&"a".repeat(10_000));
        assert_eq!(l.chars().count(), MAX_LINE_CHARS + 1);
        assert_eq!(field("short"), "short");
        assert_eq!(format!("{}", Field("a\nb")), "a\\nb");
        assert_eq!(field_bytes(b"\xff\n"), "\u{fffd}\\n");
    }
}
