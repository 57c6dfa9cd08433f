//! The pool's door under concurrency, and slow start.
use super::*;
use crate::metrics::Metrics;
use std::time::Duration;

#[tokio::test]
async fn apply_keeps_state_of_backends_that_stay() {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n";
    let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    let mut pc = config.pools["p"].clone();
    let pool = Pool::new(&pc, Arc::new(Metrics::new()));
    let a: crate::endpoint::Endpoint = "127.0.0.1:1".parse().unwrap();
    pool.set_draining(a, true).unwrap();
    let before = pool.snapshot().find(a).unwrap().backend.clone();
    pc.backends.remove(1);
    pc.backends.push(BackendConfig {
        addr: "127.0.0.1:3".parse().unwrap(),
        name: "127.0.0.1:3".into(),
        weight: NonZeroU32::new(2).unwrap(),
        max_connections: None,
        priority: 0,
    });
    assert!(pool.apply(&pc));
    let snap = pool.snapshot();
    assert!(
        Arc::ptr_eq(&before, &snap.find(a).unwrap().backend),
        "same backend object kept"
    );
    assert!(snap.find(a).unwrap().backend.is_draining());
    assert!(snap
        .find("127.0.0.1:2".parse::<SocketAddr>().unwrap())
        .is_none());
    assert!(!pool.apply(&pc), "applying the same config is a no-op");
    assert_eq!(
        pool.set_weight("127.0.0.1:9".parse().unwrap(), NonZeroU32::new(2).unwrap()),
        Err(PoolError::NoSuchBackend {
            pool: "p".into(),
            addr: "127.0.0.1:9".parse().unwrap()
        })
    );
}

#[test]
fn concurrent_changes_are_never_lost() {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nstrategy = \"weighted\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }, { addr = \"127.0.0.1:4\" }]\n";
    let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    for round in 0..50u16 {
        let base = config.pools["p"].clone();
        let pool = Pool::new(&base, Arc::new(Metrics::new()));
        // Four weight changes and a reload that adds a backend, all at once.
        let mut reloaded = base.clone();
        reloaded.backends.push(BackendConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 100 + round)).into(),
            name: format!("127.0.0.1:{}", 100 + round),
            weight: NonZeroU32::new(1).unwrap(),
            max_connections: None,
            priority: 0,
        });
        std::thread::scope(|s| {
            for port in 1..=4u16 {
                let pool = &pool;
                s.spawn(move || {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    pool.set_weight(addr.into(), NonZeroU32::new(u32::from(port) + 1).unwrap())
                        .unwrap();
                });
            }
            s.spawn(|| pool.apply(&reloaded));
        });
        let snap = pool.snapshot();
        assert!(
            snap.find(SocketAddr::from(([127, 0, 0, 1], 100 + round)))
                .is_some(),
            "round {round}: a weight change undid the reload"
        );
        // Each weight change either came after the reload (and holds)
        // or before it (and the file's weight 1 holds): never a mix
        // that loses the reload.
        for port in 1..=4u16 {
            let w = snap
                .find(SocketAddr::from(([127, 0, 0, 1], port)))
                .unwrap()
                .weight
                .get();
            assert!(
                w == 1 || w == u32::from(port) + 1,
                "round {round}: weight {w}"
            );
        }
    }
}

#[test]
fn concurrent_weight_changes_all_hold() {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nstrategy = \"weighted\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }, { addr = \"127.0.0.1:4\" }, { addr = \"127.0.0.1:5\" }, { addr = \"127.0.0.1:6\" }]\n";
    let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    for _ in 0..20 {
        let pool = Pool::new(&config.pools["p"], Arc::new(Metrics::new()));
        std::thread::scope(|s| {
            for port in 1..=6u16 {
                let pool = &pool;
                s.spawn(move || {
                    let addr = SocketAddr::from(([127, 0, 0, 1], port));
                    pool.set_weight(addr.into(), NonZeroU32::new(u32::from(port) * 10).unwrap())
                        .unwrap();
                });
            }
        });
        let weights: Vec<u32> = pool
            .snapshot()
            .members
            .iter()
            .map(|m| m.weight.get())
            .collect();
        assert_eq!(weights, [10, 20, 30, 40, 50, 60]);
    }
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_comes_back_ramps_up_over_slow_start() {
    let text = "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\nslow_start = \"10s\"\nbackends = [{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }]\n";
    let config = crate::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    let pool = Pool::new(&config.pools["p"], Arc::new(Metrics::new()));
    let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let b = pool.snapshot().members[1].backend.clone();
    let share = || {
        let snap = pool.snapshot();
        (0..2000)
            .filter(|_| snap.pick(client, &[]) == Some(1))
            .count() as f64
            / 2000.0
    };
    assert_eq!(share(), 0.5, "from the start, both are warm");
    b.set_up(false, "test");
    b.set_up(true, "test");
    tokio::time::advance(Duration::from_secs(1)).await;
    let early = share();
    assert!((0.03..0.18).contains(&early), "1 s of 10: {early}");
    tokio::time::advance(Duration::from_secs(4)).await;
    let half = share();
    assert!((0.22..0.44).contains(&half), "5 s of 10: {half}");
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(share(), 0.5, "warm again after slow_start");
    // With only a warming backend available, it still takes the traffic.
    b.set_up(false, "test");
    b.set_up(true, "test");
    pool.set_draining("127.0.0.1:1".parse().unwrap(), true)
        .unwrap();
    let snap = pool.snapshot();
    assert!((0..100).all(|_| snap.pick(client, &[]) == Some(1)));
}

fn pool_of(settings: &str, backends: &str) -> Arc<Pool> {
    let text = format!(
        "[[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\npool = \"p\"\n[pools.p]\n{settings}\nbackends = [{backends}]\n"
    );
    let config = crate::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
    Pool::new(&config.pools["p"], Arc::new(Metrics::new()))
}

/// Which members 300 picks went to, by index.
fn picked(pool: &Pool) -> std::collections::BTreeSet<Option<usize>> {
    let snap = pool.snapshot();
    let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
    (0..300).map(|_| snap.pick(client, &[])).collect()
}

#[test]
fn traffic_goes_to_the_highest_group_with_an_eligible_backend() {
    for strategy in crate::balance::StrategyKind::ALL {
        let pool = pool_of(
            &format!(
                "strategy = \"{}\"\nbackend_max_connections = 100",
                strategy.name()
            ),
            "{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\", priority = 1 }, \
             { addr = \"127.0.0.1:3\", backup = true }, { addr = \"127.0.0.1:4\", priority = 1 }",
        );
        let name = strategy.name();
        let members = pool.snapshot().members.clone();
        assert_eq!(picked(&pool), [Some(0)].into(), "{name}: group 0");
        members[0].backend.set_up(false, "test");
        let second = picked(&pool);
        assert!(
            second.iter().all(|i| matches!(i, Some(1) | Some(3))),
            "{name}: group 1: {second:?}"
        );
        members[1].backend.set_up(false, "test");
        members[3].backend.set_draining(true);
        assert_eq!(picked(&pool), [Some(2)].into(), "{name}: the backup");
        assert_eq!(
            pool.snapshot().active_priority(),
            Some(crate::config::BACKUP)
        );
        members[2].backend.set_up(false, "test");
        assert_eq!(picked(&pool), [None].into(), "{name}: none (refuse)");
        assert_eq!(pool.snapshot().active_priority(), None);
        members[0].backend.set_up(true, "test");
        assert_eq!(picked(&pool), [Some(0)].into(), "{name}: failback");
    }
}

#[test]
fn a_retry_moves_on_to_the_next_group_once_a_group_is_tried() {
    let pool = pool_of(
        "",
        "{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\", backup = true }",
    );
    let snap = pool.snapshot();
    let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(snap.pick(client, &[]), Some(0));
    assert_eq!(snap.pick(client, &[0]), Some(1));
    assert_eq!(snap.pick(client, &[0, 1]), None);
}

#[test]
fn first_fills_each_backend_to_its_limit_in_order() {
    let pool = pool_of(
        "strategy = \"first\"",
        "{ addr = \"127.0.0.1:1\", max_connections = 2 }, { addr = \"127.0.0.1:2\", max_connections = 3 }, \
         { addr = \"127.0.0.1:3\", max_connections = 1 }",
    );
    let snap = pool.snapshot();
    let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut held = Vec::new();
    let mut order = Vec::new();
    while let Some(i) = snap.pick(client, &[]) {
        order.push(i);
        held.push(snap.members[i].backend.open());
    }
    assert_eq!(order, [0, 0, 1, 1, 1, 2]);
    held.remove(0);
    assert_eq!(
        snap.pick(client, &[]),
        Some(0),
        "a freed place is filled first"
    );
}

#[test]
fn panic_spreads_over_every_backend_below_the_threshold() {
    let pool = pool_of(
        "panic_threshold = 0.5",
        "{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }, { addr = \"127.0.0.1:3\" }, { addr = \"127.0.0.1:4\" }",
    );
    let members = pool.snapshot().members.clone();
    members[0].backend.set_up(false, "test");
    assert_eq!(
        picked(&pool),
        [Some(1), Some(2), Some(3)].into(),
        "3 of 4: no panic"
    );
    assert!(!pool.snapshot().in_panic());
    members[1].backend.set_up(false, "test");
    assert_eq!(
        picked(&pool),
        [Some(2), Some(3)].into(),
        "2 of 4 is the threshold: no panic"
    );
    members[2].backend.set_up(false, "test");
    assert!(pool.snapshot().in_panic());
    assert_eq!(
        picked(&pool),
        [Some(0), Some(1), Some(2), Some(3)].into(),
        "1 of 4: every backend"
    );
    members[3].backend.set_draining(true);
    assert_eq!(
        picked(&pool),
        [Some(0), Some(1), Some(2)].into(),
        "a drained backend stays out even in panic"
    );
}

#[test]
fn try_all_tries_every_backend_when_none_is_eligible() {
    let refuse = pool_of("", "{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\" }");
    let try_all = pool_of(
        "on_all_down = \"try_all\"",
        "{ addr = \"127.0.0.1:1\" }, { addr = \"127.0.0.1:2\", backup = true }",
    );
    for pool in [&refuse, &try_all] {
        for m in &pool.snapshot().members {
            m.backend.set_up(false, "test");
        }
    }
    assert_eq!(picked(&refuse), [None].into());
    assert!(!refuse.snapshot().in_panic());
    assert_eq!(picked(&try_all), [Some(0), Some(1)].into());
    assert!(try_all.snapshot().in_panic());
    let client: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert_eq!(try_all.snapshot().pick(client, &[0, 1]), None, "each once");
}
