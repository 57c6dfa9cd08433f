//! The shipped Grafana dashboard queries only metrics switchyard exports,
//! in PromQL that promtool accepts.

mod common;

use std::collections::BTreeSet;

#[tokio::test]
async fn every_dashboard_query_is_valid_promql_over_real_metrics() {
    if !common::installed("promtool", "prometheus") {
        return;
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("config/grafana/switchyard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());

    let a = common::Backend::start("a").await;
    let server = common::start(&format!(
        "[[listeners]]\nname = \"t\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [[listeners]]\nname = \"u\"\nprotocol = \"udp\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n\
         [pools.p]\nbackends = [{{ addr = \"{}\" }}]\n",
        a.addr
    ))
    .await;
    let text = server.metrics().render();
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("switchyard_") || word.starts_with("process_") {
                let base = word.trim_end_matches("_bucket");
                assert!(
                    exported.contains(base),
                    "the dashboard queries `{word}`, which is not exported"
                );
            }
        }
    }

    // promtool parses PromQL in rule files; Grafana's variables become plain values.
    let rules: Vec<String> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "5m")
                .replace("$pool", ".*")
                .replace("$job", ".*");
            format!(
                "      - record: dashboard:query{i}\n        expr: {}\n",
                serde_json::to_string(&e).unwrap()
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yml");
    std::fs::write(
        &file,
        format!(
            "groups:\n  - name: dashboard\n    rules:\n{}",
            rules.concat()
        ),
    )
    .unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package `prometheus`) must be installed; .ci/run installs it");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
