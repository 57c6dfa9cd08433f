//! What a name may hold (a listener's, a pool's, a route's, a backend's,
//! from the file or from a store): printable characters, no quotes, no
//! control or direction-changing characters. Names go into log lines,
//! metric labels, the status page and `ctl`'s terminal table, and none of
//! them may be forged or rewritten by a name.

/// Why `name` cannot be a name, if it cannot.
pub fn unfit_name(name: &str) -> Option<String> {
    if name.trim().is_empty() {
        return Some("must not be empty".into());
    }
    let bad = name.chars().find(|&c| {
        c.is_control()
            || matches!(c, '"' | '\'' | '`' | '\\')
            // Marks and overrides that reorder what a terminal shows.
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })?;
    Some(format!(
        "{:?} may not be in a name (printable characters only, without quotes or backslashes)",
        bad
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_printable_and_unquoted() {
        for good in ["web-1", "10.0.0.1:80", "pool a", "größe", "db.internal"] {
            assert_eq!(unfit_name(good), None, "{good}");
        }
        for bad in [
            "",
            "  ",
            "a\nERROR fake",
            "a\x1b[31m",
            "say \"hi\"",
            "it's",
            "back\\slash",
            "\u{202e}evil",
        ] {
            assert!(unfit_name(bad).is_some(), "{bad:?}");
        }
        assert_eq!(
            unfit_name("a\nb").unwrap(),
            "'\\n' may not be in a name (printable characters only, without quotes or backslashes)"
        );
    }
}
