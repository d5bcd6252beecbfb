//! The SQLite store: the pragmas the guarantees rest on, migrations, and `BEGIN IMMEDIATE`.

use std::time::{Duration, Instant};

use fluence_gateway::config::{DatabaseSettings, UpstreamMode};
use fluence_gateway::store::Store;

async fn store(dir: &tempfile::TempDir, busy_timeout_ms: u64) -> Store {
    Store::connect(&DatabaseSettings {
        url: format!(
            "sqlite://{}",
            dir.path().join("nested/dir/gateway.db").display()
        ),
        busy_timeout_ms,
        max_connections: 4,
    })
    .await
    .unwrap_or_else(|e| panic!("connect: {e}"))
}

#[tokio::test]
async fn a_new_database_is_created_migrated_and_durable() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    assert!(dir.path().join("nested/dir/gateway.db").is_file());

    let pool = store.pool();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(journal, "wal");
    let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(synchronous, 2, "FULL");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(foreign_keys, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(busy, 5000);
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(integrity, "ok");
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'gateway_meta'",
    )
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tables, 1);
    store.ping().await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn reopening_runs_no_migration_twice_and_keeps_the_data() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let first = store(&dir, 5000).await;
    first
        .bind_upstream_mode(UpstreamMode::Fluence)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    first.close().await;

    let second = store(&dir, 5000).await;
    second
        .bind_upstream_mode(UpstreamMode::Fluence)
        .await
        .unwrap_or_else(|e| panic!("binding the same mode again is fine: {e}"));
    let refused = second.bind_upstream_mode(UpstreamMode::Simulator).await;
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("upstream mode `fluence`"), "{message}");
}

/// A deferred `BEGIN` takes no lock until its first write, so two of them both "start"; a
/// `BEGIN IMMEDIATE` takes the write lock at once, so the second waits for the first.
#[tokio::test]
async fn begin_write_takes_the_write_lock_up_front() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 200).await;

    let first = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let second = store.begin_write().await;
    assert!(
        second.is_err(),
        "a second writer must not start while the first holds the lock"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "it waited busy_timeout first"
    );
    first.rollback().await.unwrap_or_else(|e| panic!("{e}"));

    // Once the first is done, the next writer starts at once.
    let third = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    third.commit().await.unwrap_or_else(|e| panic!("{e}"));

    // The contrast that makes the test meaningful: plain deferred transactions both begin.
    let a = store.pool().begin().await.unwrap_or_else(|e| panic!("{e}"));
    let b = store.pool().begin().await.unwrap_or_else(|e| panic!("{e}"));
    drop((a, b));
}

#[tokio::test]
async fn a_database_in_an_unwritable_place_is_a_start_up_error() {
    let result = Store::connect(&DatabaseSettings {
        url: "sqlite:///proc/definitely/not/writable/gateway.db".into(),
        busy_timeout_ms: 100,
        max_connections: 1,
    })
    .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn several_processes_opening_a_new_database_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let opens = (0..6).map(|_| {
        let url = format!("sqlite://{}", dir.path().join("race.db").display());
        tokio::spawn(async move {
            Store::connect(&DatabaseSettings {
                url,
                busy_timeout_ms: 5000,
                max_connections: 2,
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        })
    });
    let opens: Vec<_> = opens.collect();
    for open in opens {
        let outcome = open.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}
