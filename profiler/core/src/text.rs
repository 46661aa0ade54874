//! Strings from the traced system (process names, paths, symbols, cgroup names) are untrusted: any
//! user can name a process `q"}\n1 x{a="\x1b[31m`. Every text output shows them through `shown`.

use std::{borrow::Cow, fmt::Write as _};

/// The string with control characters written as `\xNN`, so a name cannot split a report row or a
/// folded line, reach the terminal as an escape sequence, or make an SVG ill-formed XML (XML 1.0
/// has no escape for most control characters).
pub fn shown(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert_eq!(shown("nginx: worker"), "nginx: worker");
        assert!(matches!(shown("plain"), Cow::Borrowed(_)));
        assert_eq!(shown("q\"}\n1 x{a=\"\x1b[31m"), "q\"}\\x0a1 x{a=\"\\x1b[31m");
        assert_eq!(shown("tab\there\u{7f}\u{85}"), "tab\\x09here\\x7f\\x85");
        assert_eq!(shown("naïve 名前"), "naïve 名前");
    }
}
