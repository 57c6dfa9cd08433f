//! ARCHITECTURE.md's map names every file under `src/`, so it cannot fall
//! behind the tree without this test failing.

use std::collections::HashSet;
use std::path::Path;

fn files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(root, &path, out);
        } else {
            let rel = path.strip_prefix(root).unwrap();
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

#[test]
fn the_map_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    // Words of the text, without the punctuation around a path.
    let named: HashSet<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| "()`,.;:+".contains(c)))
        .collect();
    let mut all = Vec::new();
    files(&root.join("src"), &root.join("src"), &mut all);
    all.sort();
    let missing: Vec<&String> = all.iter().filter(|f| !named.contains(f.as_str())).collect();
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md's map does not name: {missing:?}"
    );
    assert!(all.len() > 50, "only {} files found under src/", all.len());
}

/// A source file over 400 lines says why in its module doc ("It runs past
/// 400 lines: …"), so a long file is a choice someone explained, not drift.
#[test]
fn a_long_file_says_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    files(&root.join("src"), &root.join("src"), &mut all);
    let unexplained: Vec<(String, usize)> = all
        .iter()
        .filter(|f| f.ends_with(".rs"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(root.join("src").join(f)).unwrap();
            let lines = text.lines().count();
            let doc: String = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .collect::<Vec<_>>()
                .join(" ");
            (lines > 400 && !doc.contains("past 400 lines")).then(|| (f.clone(), lines))
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "over 400 lines, and the module doc does not say why: {unexplained:?}"
    );
}

/// No type name is used twice in the crate (a module's `Error` is the one
/// convention that repeats), so a name says which thing it is.
#[test]
fn no_type_name_is_used_twice() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    files(&root.join("src"), &root.join("src"), &mut all);
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let mut twice = Vec::new();
    for f in all.iter().filter(|f| f.ends_with(".rs")) {
        let text = std::fs::read_to_string(root.join("src").join(f)).unwrap();
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(i) = words
                .iter()
                .position(|w| matches!(*w, "struct" | "enum" | "trait" | "type"))
            else {
                continue;
            };
            // Only declarations: nothing but visibility before the keyword.
            if !words[..i].iter().all(|w| w.starts_with("pub")) {
                continue;
            }
            let Some(name) = words.get(i + 1) else {
                continue;
            };
            let name: String = name
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty()
                || !name.starts_with(|c: char| c.is_ascii_uppercase())
                || name == "Error"
            {
                continue;
            }
            if let Some(first) = seen.insert(name.clone(), f.clone()) {
                twice.push(format!("{name} ({first}, {f})"));
            }
        }
    }
    assert!(twice.is_empty(), "type names declared twice: {twice:?}");
}
