//! Unit tests of [`super`]: defaults, bounds, and the path of every refusal.

use crate::config::ServeConfig;
use std::time::Duration;

fn errors(yaml: &str) -> Vec<String> {
    match ServeConfig::from_yaml(yaml) {
        Ok(c) => panic!("expected an error for {yaml:?}, got {:?}", c.cluster),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn absent_is_standalone() {
    assert_eq!(ServeConfig::from_yaml("").unwrap().cluster, None);
    assert_eq!(ServeConfig::embedded_default().cluster, None);
}

#[test]
fn defaults_fill_pool_replica_id_and_interval() {
    let c = ServeConfig::from_yaml("cluster:\n  redis: redis://127.0.0.1:6379\n").unwrap().cluster.unwrap();
    assert_eq!(c.redis, "redis://127.0.0.1:6379");
    assert_eq!(c.pool, "default");
    assert_eq!(c.sync_interval, Duration::from_millis(100));
    assert!(c.replica_id.ends_with(&format!("-{}", std::process::id())), "{}", c.replica_id);
    assert!(c.replica_id.len() > 2);
}

#[test]
fn written_values_are_kept_and_summarised() {
    let c = ServeConfig::from_yaml(
        "cluster:\n  redis: redis://u:secret@10.0.0.1:6380/2\n  pool: gpu-a\n  replica_id: gw-1\n  sync_interval: 250ms\n",
    )
    .unwrap();
    let k = c.cluster.as_ref().unwrap();
    assert_eq!((k.pool.as_str(), k.replica_id.as_str()), ("gpu-a", "gw-1"));
    assert_eq!(k.sync_interval, Duration::from_millis(250));
    let summary = c.summary();
    assert!(
        summary.contains("cluster pool gpu-a via redis://***@10.0.0.1:6380/2 as gw-1 every 250ms"),
        "{summary}"
    );
    assert!(!summary.contains("secret"));
}

#[test]
fn every_bad_field_is_named() {
    assert_eq!(errors("cluster:\n  pool: x\n")[0].split(':').next().unwrap(), "cluster");
    let e = errors("cluster:\n  redis: http://x:1\n");
    assert!(e[0].starts_with("cluster.redis: "), "{e:?}");
    let e = errors("cluster:\n  redis: redis://h:1\n  pool: \"a{b}\"\n");
    assert!(e[0].starts_with("cluster.pool: ") && e[0].contains("'{'"), "{e:?}");
    let e = errors("cluster:\n  redis: redis://h:1\n  pool: \"\"\n");
    assert_eq!(e, vec!["cluster.pool: must not be empty"]);
    let e = errors(&format!("cluster:\n  redis: redis://h:1\n  replica_id: {}\n", "r".repeat(200)));
    assert!(e[0].starts_with("cluster.replica_id: 200 bytes"), "{e:?}");
    let e = errors("cluster:\n  redis: redis://h:1\n  sync_interval: 1ms\n");
    assert!(e[0].starts_with("cluster.sync_interval: 1ms is outside 10ms"), "{e:?}");
    let e = errors("cluster:\n  redis: redis://h:1\n  sync_interval: 100\n");
    assert!(e[0].starts_with("cluster.sync_interval"), "{e:?}");
    let e = errors("cluster:\n  redis: redis://h:1\n  replicas: 3\n");
    assert!(e[0].starts_with("cluster.replicas: unknown key"), "{e:?}");
}

#[test]
fn several_errors_are_reported_together() {
    let e = errors("cluster:\n  redis: nope\n  pool: \"a b\"\n  sync_interval: 1m\n");
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn a_cluster_change_needs_a_restart() {
    let a = ServeConfig::from_yaml("").unwrap();
    let b = ServeConfig::from_yaml("cluster:\n  redis: redis://h:1\n").unwrap();
    assert_eq!(a.restart_only_changes(&b), vec!["cluster"]);
}
