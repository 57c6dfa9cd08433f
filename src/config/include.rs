//! `include = ["conf.d/*.toml"]`: the files whose listeners and pools join
//! the main file's. A pattern is a path relative to the main file's folder
//! (or absolute) whose last part may hold `*` and `?`; the files it matches
//! are read in name order. A pattern without them names one file, which
//! must exist; one with them may match none (an empty or absent `conf.d`).

use std::ops::Range;
use std::path::{Path, PathBuf};

/// The files `patterns` name, relative to `main`'s folder, in order, each
/// once; or a problem at a pattern's span.
pub(super) fn files(
    main: &Path,
    patterns: &[super::raw::S<String>],
) -> (Vec<PathBuf>, Vec<(Range<usize>, String)>) {
    let base = main.parent().unwrap_or(Path::new("."));
    let mut found: Vec<PathBuf> = Vec::new();
    let mut problems = Vec::new();
    for p in patterns {
        let pattern = base.join(p.get_ref());
        let name = pattern
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let folder = pattern.parent().unwrap_or(Path::new("."));
        if folder.to_string_lossy().contains(['*', '?']) {
            problems.push((
                p.span(),
                "only the file name may hold * and ? (\"conf.d/*.toml\")".to_string(),
            ));
            continue;
        }
        if !name.contains(['*', '?']) {
            if !pattern.is_file() {
                problems.push((p.span(), format!("{} is not a file", pattern.display())));
                continue;
            }
            found.push(pattern);
            continue;
        }
        let entries = match std::fs::read_dir(folder) {
            Ok(e) => e,
            // No folder matches nothing, as a shell's glob does.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                problems.push((p.span(), format!("cannot read {}: {e}", folder.display())));
                continue;
            }
        };
        let mut matched: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().is_file())
            .filter(|e| matches(&name, &e.file_name().to_string_lossy()))
            .map(|e| e.path())
            .collect();
        matched.sort();
        found.extend(matched);
    }
    let main = main.canonicalize().unwrap_or_else(|_| main.to_path_buf());
    let mut unique = Vec::new();
    for f in found {
        let same = |g: &PathBuf| g.canonicalize().ok() == f.canonicalize().ok();
        if f.canonicalize().ok().as_ref() != Some(&main) && !unique.iter().any(same) {
            unique.push(f);
        }
    }
    (unique, problems)
}

/// Whether `name` matches `pattern`, where `*` is any run of characters and
/// `?` any one; a leading dot is matched only by a leading dot, as a shell does.
fn matches(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer match with one backtrack point for the last `*`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn names_match_as_a_shell_matches_them() {
        assert!(matches("*.toml", "web.toml"));
        assert!(!matches("*.toml", "web.toml.bak"));
        assert!(!matches("*.toml", ".hidden.toml"));
        assert!(matches("db-??.toml", "db-01.toml"));
        assert!(!matches("db-??.toml", "db-1.toml"));
        assert!(matches("*", "x"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }
}
