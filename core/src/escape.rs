//! Escaping of names written into nginx's error log, the way nginx escapes its access log.

use core::fmt;

/// Displays a string as nginx's access log writes a variable: `"`, `\`, control characters,
/// DEL and every byte beyond ASCII become `\xHH` (upper-case hex), so a name can neither end
/// the quotes around it nor start a new log line.
#[derive(Clone, Copy, Debug)]
pub struct LogEscaped<'a>(pub &'a str);

impl fmt::Display for LogEscaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.as_bytes();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b) {
                f.write_str(ascii(&bytes[start..i]))?;
                write!(f, "\\x{b:02X}")?;
                start = i + 1;
            }
        }
        f.write_str(ascii(&bytes[start..]))
    }
}

/// A run between escapes: printable ASCII only, so always valid UTF-8.
fn ascii(run: &[u8]) -> &str {
    core::str::from_utf8(run).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        LogEscaped(s).to_string()
    }

    #[test]
    fn plain_names_are_unchanged() {
        assert_eq!(esc("backend-1.example.com"), "backend-1.example.com");
        assert_eq!(esc(""), "");
    }

    #[test]
    fn quotes_backslashes_and_control_characters_are_hex_escaped() {
        assert_eq!(esc("a\"b"), "a\\x22b");
        assert_eq!(esc("a\\b"), "a\\x5Cb");
        assert_eq!(esc("a\nb\r\t\x7f"), "a\\x0Ab\\x0D\\x09\\x7F");
        assert_eq!(esc("\u{0}"), "\\x00");
    }

    #[test]
    fn bytes_beyond_ascii_are_escaped_one_by_one() {
        assert_eq!(esc("caf\u{e9}"), "caf\\xC3\\xA9");
        // A forged log line stays on one line.
        assert!(!esc("x\" is UP\n2026/01/01 [emerg] fake").contains('\n'));
    }
}
