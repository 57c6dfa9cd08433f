//! The JSON Schema `switchyard schema` prints (made from the parser's own
//! types) accepts every example in `config/` and refuses what the parser
//! refuses for its shape: unknown keys, wrong types, missing required keys.

use std::path::Path;
use std::process::Command;

fn schema() -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

fn as_json(toml_text: &str) -> serde_json::Value {
    let v: toml::Value = toml::from_str(toml_text).unwrap();
    serde_json::to_value(v).unwrap()
}

#[test]
fn every_example_config_validates_against_the_schema() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let doc = as_json(&std::fs::read_to_string(&path).unwrap());
            let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 4, "only {seen} example files");
}

#[test]
fn the_schema_refuses_what_the_parser_refuses() {
    let validator = jsonschema::validator_for(&schema()).unwrap();
    let base = "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:2\" }]\n";
    assert!(validator.is_valid(&as_json(base)));
    for bad in [
        base.replace("pool = \"p\"\n[pools", "pool = \"p\"\nbogus = 1\n[pools"),
        base.replace("bind = \"127.0.0.1:1\"", "bind = 7"),
        base.replace("name = \"a\"\n", ""),
        base.replace("{ addr", "{ weight = \"heavy\", addr"),
    ] {
        assert!(!validator.is_valid(&as_json(&bad)), "accepted:\n{bad}");
        assert!(
            switchyard::Config::parse(&bad, Path::new("t.toml")).is_err(),
            "the parser accepts:\n{bad}"
        );
    }
}
