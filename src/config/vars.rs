//! `${VAR}` and `${VAR:-default}` in string values: the environment's value
//! (or the default) replaces each before the file is parsed, inside quoted
//! strings only (never in keys or comments), escaped for the kind of string
//! it lands in. `$${` writes a literal `${`. Every problem, and every later
//! one the parsed file has, is reported where the original text has it:
//! [`Expanded::original`] maps an offset back.

use std::ops::Range;

/// The text after expansion, and where each replacement came from.
#[derive(Debug)]
pub(crate) struct Expanded {
    pub text: String,
    /// (original range, expanded range) of each replacement, in order.
    swaps: Vec<(Range<usize>, Range<usize>)>,
}

impl Expanded {
    /// The offset in the original text of `at` in the expanded one: inside
    /// a replacement, where its `${` stood.
    pub fn original(&self, at: usize) -> usize {
        let mut shift: isize = 0;
        for (orig, new) in &self.swaps {
            if at < new.start {
                break;
            }
            if at < new.end {
                return orig.start;
            }
            shift = orig.end as isize - new.end as isize;
        }
        (at as isize + shift).max(0) as usize
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lexing {
    Code,
    Comment,
    Basic,
    MultiBasic,
    Literal,
    MultiLiteral,
}

/// Expands `source` with `env`; the problems are (original span, message).
pub(crate) fn expand(
    source: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Expanded, Vec<(Range<usize>, String)>> {
    let b = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut swaps = Vec::new();
    let mut problems = Vec::new();
    let mut state = Lexing::Code;
    let mut i = 0;
    // Copies source[from..to] as it is.
    let mut copied = 0;
    let starts = |at: usize, s: &str| b[at..].starts_with(s.as_bytes());
    while i < b.len() {
        let c = b[i];
        match state {
            Lexing::Code => {
                if c == b'#' {
                    state = Lexing::Comment;
                } else if starts(i, "\"\"\"") {
                    state = Lexing::MultiBasic;
                    i += 3;
                    continue;
                } else if c == b'"' {
                    state = Lexing::Basic;
                } else if starts(i, "'''") {
                    state = Lexing::MultiLiteral;
                    i += 3;
                    continue;
                } else if c == b'\'' {
                    state = Lexing::Literal;
                }
                i += 1;
            }
            Lexing::Comment => {
                if c == b'\n' {
                    state = Lexing::Code;
                }
                i += 1;
            }
            Lexing::Basic | Lexing::MultiBasic | Lexing::Literal | Lexing::MultiLiteral => {
                let basic = matches!(state, Lexing::Basic | Lexing::MultiBasic);
                let ends = match state {
                    Lexing::Basic => c == b'"' || c == b'\n',
                    Lexing::MultiBasic => starts(i, "\"\"\""),
                    Lexing::Literal => c == b'\'' || c == b'\n',
                    _ => starts(i, "'''"),
                };
                if ends {
                    i += if matches!(state, Lexing::MultiBasic | Lexing::MultiLiteral) {
                        3
                    } else {
                        1
                    };
                    state = Lexing::Code;
                    continue;
                }
                if basic && c == b'\\' {
                    i += 2;
                    continue;
                }
                if starts(i, "$${") {
                    // A literal `${`: the first `$` goes.
                    out.push_str(&source[copied..i]);
                    swaps.push((i..i + 3, out.len()..out.len() + 2));
                    out.push_str("${");
                    i += 3;
                    copied = i;
                    continue;
                }
                if !starts(i, "${") {
                    i += 1;
                    continue;
                }
                let close = source[i..]
                    .find(['}', '"', '\'', '\n'])
                    .map(|k| i + k)
                    .filter(|&k| b[k] == b'}');
                let Some(close) = close else {
                    problems.push((
                        i..i + 2,
                        "`${` opens a variable that no `}` closes (write `$${` for a literal `${`)"
                            .to_string(),
                    ));
                    i += 2;
                    continue;
                };
                let inner = &source[i + 2..close];
                let (name, default) = match inner.split_once(":-") {
                    Some((n, d)) => (n, Some(d)),
                    None => (inner, None),
                };
                let valid = name
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                let span = i..close + 1;
                if !valid {
                    problems.push((
                        span,
                        format!("`{name}` is not a variable name (letters, digits and _, not first a digit)"),
                    ));
                    i = close + 1;
                    continue;
                }
                let value = match (env(name), default) {
                    (Some(v), _) => Some(escape(&v, basic)),
                    // A default is source text, already in the string's own form.
                    (None, Some(d)) => Some(Ok(d.to_string())),
                    (None, None) => None,
                };
                match value {
                    Some(Ok(v)) => {
                        out.push_str(&source[copied..i]);
                        swaps.push((span, out.len()..out.len() + v.len()));
                        out.push_str(&v);
                        copied = close + 1;
                    }
                    Some(Err(why)) => problems.push((span, format!("${{{name}}}: {why}"))),
                    None => problems.push((
                        span,
                        format!(
                            "${{{name}}} is not set in the environment (give a default: `${{{name}:-…}}`)"
                        ),
                    )),
                }
                i = close + 1;
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    out.push_str(&source[copied..]);
    Ok(Expanded { text: out, swaps })
}

/// `v` as it must be written inside a basic (escaped) or a literal string.
fn escape(v: &str, basic: bool) -> Result<String, String> {
    if !basic {
        if v.contains(['\'', '\n', '\r']) {
            return Err(
                "its value has a quote or a line break, which a '…' string cannot hold: use \"…\""
                    .into(),
            );
        }
        return Ok(v.to_string());
    }
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\r' => s.push_str("\\r"),
            c if c.is_control() => s.push_str(&format!("\\u{:04X}", c as u32)),
            c => s.push(c),
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.7".into()),
            "QUOTED" => Some("a \"b\" \\c".into()),
            "EMPTY" => Some(String::new()),
            "APOS" => Some("it's".into()),
            _ => None,
        }
    }

    #[test]
    fn strings_expand_and_nothing_else_does() {
        let src = "# ${HOST} in a comment\nbind = \"${HOST}:80\" # ${NOPE}\nname = '${HOST}'\nx = \"$${HOST}\"\n";
        let e = expand(src, env).unwrap();
        assert_eq!(
            e.text,
            "# ${HOST} in a comment\nbind = \"10.0.0.7:80\" # ${NOPE}\nname = '10.0.0.7'\nx = \"${HOST}\"\n"
        );
        let v: toml::Value = toml::from_str(&e.text).unwrap();
        assert_eq!(v["bind"].as_str(), Some("10.0.0.7:80"));
    }

    #[test]
    fn values_are_escaped_and_defaults_apply() {
        let e = expand(
            "a = \"${QUOTED}\"\nb = \"${UNSET:-fallback}\"\nc = \"${EMPTY:-x}\"\n",
            env,
        )
        .unwrap();
        let v: toml::Value = toml::from_str(&e.text).unwrap();
        assert_eq!(v["a"].as_str(), Some("a \"b\" \\c"));
        assert_eq!(v["b"].as_str(), Some("fallback"));
        assert_eq!(v["c"].as_str(), Some(""), "set but empty is set");
        assert!(
            expand("a = '${APOS}'", env).is_err(),
            "a quote cannot go in '…'"
        );
        let raw = expand("a = '${QUOTED}'", env).unwrap();
        let v: toml::Value = toml::from_str(&raw.text).unwrap();
        assert_eq!(
            v["a"].as_str(),
            Some("a \"b\" \\c"),
            "'…' takes it as it is"
        );
    }

    #[test]
    fn problems_point_at_the_variable() {
        let src = "a = 1\nb = \"x ${MISSING} y\"\nc = \"${1BAD}\"\nd = \"${OPEN\"\n";
        let p = expand(src, env).unwrap_err();
        let at: Vec<usize> = p.iter().map(|(r, _)| r.start).collect();
        assert_eq!(
            at,
            [
                src.find("${MISSING").unwrap(),
                src.find("${1BAD").unwrap(),
                src.find("${OPEN").unwrap()
            ]
        );
        assert!(p[0].1.contains("MISSING} is not set"), "{}", p[0].1);
    }

    #[test]
    fn offsets_map_back_to_the_original() {
        let src = "a = \"${HOST}\"\nb = \"${UNSET:-1}\"\nc = 3\n";
        let e = expand(src, env).unwrap();
        let c_new = e.text.find("c = 3").unwrap();
        assert_eq!(e.original(c_new), src.find("c = 3").unwrap());
        let host_new = e.text.find("10.0.0.7").unwrap();
        assert_eq!(e.original(host_new + 3), src.find("${HOST}").unwrap());
        assert_eq!(e.original(0), 0);
    }
}
