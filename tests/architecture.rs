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
