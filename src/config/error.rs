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
    /// The included file it is in; `None`: the main file.
    pub file: Option<PathBuf>,
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
            let file = p.file.as_deref().unwrap_or(&self.file);
            if p.line == 0 {
                // A problem with the file as a whole (it cannot be read).
                write!(f, "{}: ", file.display())?;
            } else {
                write!(f, "{}:{}:{}: ", file.display(), p.line, p.col)?;
            }
            if !p.key.is_empty() {
                write!(f, "{}: ", p.key)?;
            }
            write!(f, "{}", p.message)?;
        }
        Ok(())
    }
}

/// One file a configuration is read from: its path, its text as written,
/// and its text after `${VAR}` expansion, which spans point into.
pub(crate) struct SourceFile<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    pub expanded: Option<&'a super::vars::Expanded>,
}

/// Collects problems while validating, turning byte offsets into line and
/// column of the file being validated (the main one, or an included one).
pub(crate) struct Problems<'a> {
    files: Vec<SourceFile<'a>>,
    /// The file spans point into now (an index into `files`).
    pub current: usize,
    list: Vec<(usize, Problem)>,
}

impl<'a> Problems<'a> {
    pub fn new(file: &'a Path, source: &'a str) -> Self {
        Problems::of(vec![SourceFile {
            path: file,
            text: source,
            expanded: None,
        }])
    }

    /// Problems of these files; the first is the main one.
    pub fn of(files: Vec<SourceFile<'a>>) -> Self {
        Problems {
            files,
            current: 0,
            list: Vec::new(),
        }
    }

    /// The line and column in the current file as written of `at`, a span's start.
    pub fn line_col(&self, at: usize) -> (usize, usize) {
        let f = &self.files[self.current];
        let at = f.expanded.map_or(at, |e| e.original(at));
        line_col(f.text, at)
    }

    /// `file:line:col` of `at` in the current file.
    pub fn location(&self, at: usize) -> String {
        let (line, col) = self.line_col(at);
        format!("{}:{line}:{col}", self.files[self.current].path.display())
    }

    /// The current file's path.
    pub fn path(&self) -> &'a Path {
        self.files[self.current].path
    }

    pub fn push(&mut self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) {
        let (line, col) = self.line_col(span.start);
        self.list.push((
            self.current,
            Problem {
                line,
                col,
                key: key.into(),
                message: message.into(),
                file: (self.current > 0).then(|| self.files[self.current].path.to_path_buf()),
            },
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_error(mut self) -> ConfigError {
        self.list.sort_by_key(|(f, p)| (*f, p.line, p.col));
        ConfigError {
            file: self.files[0].path.to_path_buf(),
            problems: self.list.into_iter().map(|(_, p)| p).collect(),
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
