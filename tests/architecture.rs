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
