//! Configuration: every shipped example is valid, every invalid case fails
//! with its file:line:col and key, and `switchyard check` reports both ways.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard::config::Config;
use switchyard::server::Error;

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no .toml files in {}", dir.display());
    out
}

#[test]
fn every_example_config_is_valid() {
    for path in files("config") {
        if let Err(e) = Config::load(&path) {
            panic!("{} should be valid:\n{e}", path.display());
        }
    }
}

#[test]
fn every_invalid_config_fails_where_its_first_line_says() {
    for path in files("tests/invalid") {
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", path.display()));
        let err = Config::load(&path).expect_err(&format!("{} should be rejected", path.display()));
        let shown = err.to_string();
        let wanted = format!("{}:{}", path.display(), expect);
        assert!(
            shown.contains(&wanted),
            "{}:\n  wanted: {wanted}\n  got:    {shown}",
            path.display()
        );
    }
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = r#"
[[listeners]]
name = "a"
bind = "nowhere"
pool = "missing"

[pools.p]
strategy = "weighted"
backends = [{ addr = "127.0.0.1:1", weight = 0 }]
"#;
    let err = Config::parse(text, Path::new("x.toml")).unwrap_err();
    let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "listeners[0].bind",
            "listeners[0].pool",
            "pools.p.backends[0].weight"
        ],
        "{err}"
    );
    assert_eq!((err.problems[0].line, err.problems[0].col), (4, 8));
}

#[test]
fn defaults_and_warnings() {
    let text = r#"
[[listeners]]
name = "a"
bind = "localhost:7"
pool = "p"

[pools.p]
backends = [{ addr = "127.0.0.1:1", weight = 3 }]
"#;
    let c = Config::parse(text, Path::new("x.toml")).unwrap();
    let l = &c.listeners[0];
    assert_eq!(l.protocol, switchyard::config::Protocol::Tcp);
    assert!(
        l.bind.inet().unwrap().ip().is_loopback(),
        "host names resolve: {}",
        l.bind
    );
    assert_eq!(l.idle_timeout, std::time::Duration::from_secs(3600));
    assert_eq!(l.max_sessions.get(), 65536);
    let p = &c.pools["p"];
    assert_eq!(p.strategy.name(), "round_robin");
    assert_eq!((p.retries, p.max_fails), (2, 3));
    assert_eq!(p.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(30));
    assert_eq!(c.warnings.len(), 1);
    assert!(
        c.warnings[0].contains(
            "x.toml:8:46: pools.p.backends[0].weight: strategy \"round_robin\" ignores weights"
        ),
        "{:?}",
        c.warnings
    );
}

fn check(path: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn check_command_exit_codes_and_output() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out) = check(&root.join("config/full.toml"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok: 2 listener(s), 3 pool(s), 7 backend(s), admin on 127.0.0.1:9901"),
        "{out}"
    );
    // And what the file will do, listener by listener and pool by pool.
    let line = |prefix: &str| out.lines().any(|l| l.trim_start().starts_with(prefix));
    assert!(line("redis            tcp 127.0.0.1:6380"), "{out}");
    assert!(out.contains("-> pool redis"), "{out}");
    assert!(
        line("redis            least_conn, tcp check every 2s (rise 2, fall 3), 2 retries"),
        "{out}"
    );
    assert!(
        line("127.0.0.1:6381           weight 2, at most 1000 connections"),
        "{out}"
    );

    let bad = root.join("tests/invalid/weight_zero.toml");
    let (code, out) = check(&bad);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("weight_zero.toml:8:46: pools.p.backends[0].weight"),
        "{out}"
    );
    assert!(out.contains("1 problem(s) found"), "{out}");

    let (code, out) = check(&root.join("no/such/file.toml"));
    assert_eq!(code, 1);
    assert!(out.contains("cannot read the file"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let warn = dir.path().join("warn.toml");
    std::fs::write(
        &warn,
        "[[listeners]]\nname = \"a\"\nbind = \"127.0.0.1:1\"\npool = \"p\"\n[pools.p]\nstrategy = \"random\"\nbackends = [{ addr = \"127.0.0.1:2\", weight = 2 }]\n",
    )
    .unwrap();
    let (code, out) = check(&warn);
    assert_eq!(code, 0, "a warning does not fail the check: {out}");
    assert!(
        out.contains("warning:") && out.contains("ignores weights"),
        "{out}"
    );
}

#[tokio::test]
async fn a_port_in_use_names_the_listener_and_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = format!(
        "[[listeners]]\nname = \"front\"\nbind = \"{addr}\"\npool = \"p\"\n[pools.p]\nbackends = [{{ addr = \"127.0.0.1:9\" }}]\n"
    );
    let config = Config::parse(&text, Path::new("x.toml")).unwrap();
    let err = switchyard::Server::start(config)
        .await
        .err()
        .expect("bind must fail");
    assert!(matches!(err, Error::Bind(_)));
    let msg = err.to_string();
    assert!(
        msg.contains("listener `front`") && msg.contains(&addr.to_string()),
        "{msg}"
    );
}

/// Whether a quoted string in `text` would make the loader resolve a host
/// name: this test must send nothing to any DNS server, so such inputs are
/// left out (only `localhost`, answered from /etc/hosts, is kept).
fn would_resolve(text: &str) -> bool {
    text.split('"').skip(1).step_by(2).any(|s| {
        s.parse::<std::net::SocketAddr>().is_err()
            && s.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok() && host != "localhost"
            })
    })
}

/// Any text fed to the loader gives a configuration or problems that each
/// name a line and column: never a panic. Inputs are the shipped examples
/// and the invalid cases, cut, spliced and sprinkled with TOML's own
/// characters by a seeded generator (the seed is printed on failure; set
/// SWITCHYARD_FUZZ_CASES for a longer local run).
#[test]
fn any_text_loads_or_fails_with_located_problems() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("SWITCHYARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let cases: usize = std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut corpus: Vec<String> = files("config")
        .into_iter()
        .chain(files("tests/invalid"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    corpus.push(String::new());
    const PIECES: &[&str] = &[
        "\"",
        "[",
        "]",
        "[[",
        "]]",
        "=",
        ",",
        "{",
        "}",
        "\n",
        "#",
        ".",
        "-",
        "0",
        "65536",
        "-1",
        "9999999999999999999999",
        "\"0s\"",
        "\"1h\"",
        "true",
        "\\",
        "\\u",
        "\"\"\"",
        "[pools.p]",
        "[[listeners]]",
        "backends = [",
        "addr = ",
        "weight = ",
        "bind = ",
        "\"127.0.0.1:0\"",
        "\"[::1]:80\"",
        "\"0.0.0.0:0\"",
        "nan",
        "inf",
        "é",
        "\u{0}",
    ];
    let (mut tried, mut valid) = (0, 0);
    while tried < cases {
        let mut text = corpus[rng.random_range(0..corpus.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            let at = (0..=text.len())
                .filter(|&i| text.is_char_boundary(i))
                .nth(rng.random_range(0..=text.chars().count()))
                .unwrap_or(text.len());
            match rng.random_range(0..4) {
                0 => text.insert_str(at, PIECES[rng.random_range(0..PIECES.len())]),
                1 => {
                    let end = (at + rng.random_range(1..40)).min(text.len());
                    let end = (end..=text.len())
                        .find(|&i| text.is_char_boundary(i))
                        .unwrap();
                    text.replace_range(at..end, "");
                }
                2 => {
                    let other = &corpus[rng.random_range(0..corpus.len())];
                    let cut = (0..=other.len())
                        .filter(|&i| other.is_char_boundary(i))
                        .nth(rng.random_range(0..=other.chars().count()))
                        .unwrap_or(other.len());
                    text.insert_str(at, &other[cut..]);
                }
                _ => text.truncate(at),
            }
        }
        if would_resolve(&text) {
            continue;
        }
        tried += 1;
        let result = std::panic::catch_unwind(|| Config::parse(&text, Path::new("fuzz.toml")));
        match result {
            Err(_) => panic!("seed {seed}: the loader panicked on:\n{text}"),
            Ok(Ok(_)) => valid += 1,
            Ok(Err(e)) => {
                assert!(
                    !e.problems.is_empty(),
                    "seed {seed}: an error without problems:\n{text}"
                );
                for p in &e.problems {
                    assert!(
                        p.line >= 1 && p.col >= 1,
                        "seed {seed}: a problem without a position ({p:?}) for:\n{text}"
                    );
                }
            }
        }
    }
    // The generator must reach both outcomes, or it tests nothing.
    assert!(
        valid > 0 && valid < tried,
        "seed {seed}: {valid} of {tried} valid"
    );
}

#[test]
fn the_fleet_example_checks_and_says_where_backends_come_from() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (code, out) = check(&root.join("config/fleet.toml"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "backends discovered: etcd 127.0.0.1:2379 under /switchyard/pools/web/, watched"
        ),
        "{out}"
    );
    assert!(
        out.contains("backends discovered: the SRV records of _dns._udp.service.internal"),
        "{out}"
    );
    assert!(out.contains("api.example.com *.api.example.com"), "{out}");
    assert!(out.contains("sends PROXY protocol v2"), "{out}");
}

/// `switchyard check` of `text` with `env` set (and nothing else of the
/// test's environment), its exit code and everything it printed.
fn check_with_env(text: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vars.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["check", "--config"])
        .arg(&path)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap(),
        all.replace(&*path.to_string_lossy(), "vars.toml"),
    )
}

#[test]
fn variables_take_the_environment_and_problems_keep_their_place() {
    let text = "[[listeners]]\nname = \"${NAME:-front}\"\nbind = \"${BIND_IP}:0\"\npool = \"p\"\n\
                [pools.p]\nbackends = [{ addr = \"${BACKEND}\", weight = 0 }]\n";
    // Unset without a default: an error at the variable, the rest unread.
    let (code, out) = check_with_env(text, &[("BACKEND", "127.0.0.1:6379")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("vars.toml:3:9: ${BIND_IP} is not set in the environment"),
        "{out}"
    );
    // Set: the file checks, the default names the listener, and a later
    // problem is reported where the file as written has it, not where the
    // longer expanded text would.
    let (code, out) = check_with_env(
        text,
        &[("BIND_IP", "127.0.0.1"), ("BACKEND", "127.0.0.1:6379")],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("vars.toml:6:45: pools.p.backends[0].weight: weight must be from 1 to 256"),
        "{out}"
    );
    let fixed = text.replace(", weight = 0", "");
    let (code, out) = check_with_env(
        &fixed,
        &[("BIND_IP", "127.0.0.1"), ("BACKEND", "127.0.0.1:6379")],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("front            tcp 127.0.0.1:0"), "{out}");
    assert!(out.contains("127.0.0.1:6379"), "{out}");
}

#[test]
fn included_files_join_and_each_problem_names_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.toml");
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        &main,
        "include = [\"conf.d/*.toml\"]\n\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }]\n",
    )
    .unwrap();
    let web = dir.path().join("conf.d/web.toml");
    std::fs::write(
        &web,
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"w\"\n\n[pools.w]\nbackends = [{ addr = \"127.0.0.1:2\" }]\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("conf.d/db.toml"),
        "[[listeners]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
    )
    .unwrap();
    // Not matched: another extension, and a hidden file.
    std::fs::write(dir.path().join("conf.d/old.toml.bak"), "junk = [").unwrap();
    std::fs::write(dir.path().join("conf.d/.swap.toml"), "junk = [").unwrap();
    let (code, out) = check(&main);
    assert_eq!(code, 0, "{out}");
    let d = dir.path().display().to_string();
    assert!(
        out.contains(&format!(
            "ok: 2 listener(s), 2 pool(s), 2 backend(s); included {d}/conf.d/db.toml, {d}/conf.d/web.toml"
        )),
        "{out}"
    );
    assert!(out.contains("web              tcp 127.0.0.1:0"), "{out}");

    // A pool defined twice: both places named. A problem in an included
    // file: its own file, line and column.
    std::fs::write(
        &web,
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\npool = \"w\"\n\n[pools.w]\nbackends = [{ addr = \"127.0.0.1:2\", weight = 0 }]\n\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:3\" }]\n",
    )
    .unwrap();
    let (code, out) = check(&main);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "{d}/conf.d/web.toml:7:46: pools.w.backends[0].weight: weight must be from 1 to 256"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{d}/conf.d/web.toml:9:8: pools.p: pool `p` is defined twice: first at {d}/main.toml:3:8"
        )),
        "{out}"
    );

    // What belongs to the main file only, and a listener name taken twice.
    std::fs::write(
        &web,
        "shutdown_grace = \"1s\"\n[[listeners]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n",
    )
    .unwrap();
    let (code, out) = check(&main);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("{d}/conf.d/web.toml:1:18: shutdown_grace: an included file holds [[listeners]] and [pools.NAME] only")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{d}/conf.d/web.toml:3:8: listeners[0].name: listener name `db` is used twice: first at {d}/conf.d/db.toml:2:8"
        )),
        "{out}"
    );
    // A syntax error in an included file.
    std::fs::write(&web, "[[listeners]\n").unwrap();
    let (code, out) = check(&main);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("{d}/conf.d/web.toml:1:")), "{out}");
    // A named file that is not there.
    std::fs::write(&main, "include = [\"conf.d/missing.toml\"]\n").unwrap();
    let (code, out) = check(&main);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("main.toml:1:12: include:"), "{out}");
    assert!(out.contains("missing.toml is not a file"), "{out}");
}
