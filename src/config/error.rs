//! Configuration problems, each pointing at a file, line, column and key.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One thing wrong with a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending value (0 when the file has no position for it).
    pub line: usize,
    /// 1-based column of the offending value.
    pub col: usize,
    /// Dotted path of the key the problem concerns, e.g. `pools.redis.backends[1].weight`.
    pub key: String,
    /// What is wrong, as a sentence for a human.
    pub message: String,
}

/// Every problem found in one configuration file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file that was read (or a label such as `<generated>`).
    pub file: PathBuf,
    /// All problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                // A problem with the file as a whole (it cannot be read).
                write!(f, "{}: ", self.file.display())?;
            } else {
                write!(f, "{}:{}:{}: ", self.file.display(), p.line, p.col)?;
            }
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

/// Collects problems while validating, turning byte offsets into line and column.
pub(crate) struct Problems<'a> {
    source: &'a str,
    file: &'a Path,
    list: Vec<Problem>,
    /// When `${VAR}`s were expanded: spans are in the expanded text, and
    /// positions are reported in `source`, the text as written.
    expanded: Option<&'a super::vars::Expanded>,
}

impl<'a> Problems<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Problems {
            source,
            file,
            list: Vec::new(),
            expanded: None,
        }
    }

    /// Problems of `source` as written, whose spans come from `expanded`.
    pub fn of_expanded(
        file: &'a Path,
        source: &'a str,
        expanded: &'a super::vars::Expanded,
    ) -> Self {
        Problems {
            expanded: Some(expanded),
            ..Problems::new(file, source)
        }
    }

    /// The line and column in the text as written of `at`, a span's start.
    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let at = self.expanded.map_or(at, |e| e.original(at));
        line_col(self.source, at)
    }

    pub fn push(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, col) = self.line_col(span.start);
        self.list.push(Problem {
            line,
            col,
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_error(mut self) -> ConfigError {
        self.list.sort_by_key(|p| (p.line, p.col));
        ConfigError {
            file: self.file.to_path_buf(),
            problems: self.list,
        }
    }
}

/// 1-based line and column (in characters) of byte offset `at` in `source`.
pub(crate) fn line_col(source: &str, at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let before = &source[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_col;

    #[test]
    fn line_and_column_are_one_based() {
        let s = "a = 1\nbb = 2\n";
        assert_eq!(line_col(s, 0), (1, 1));
        assert_eq!(line_col(s, 6), (2, 1));
        assert_eq!(line_col(s, 11), (2, 6));
    }
}
