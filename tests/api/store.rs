//! The SQLite store: the pragmas the guarantees rest on, migrations, `BEGIN IMMEDIATE`, and
//! scripts committed in groups.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use fluence_gateway::config::{DatabaseSettings, UpstreamMode};
use fluence_gateway::domain::deployment::Status;
use fluence_gateway::domain::money::Usdc;
use fluence_gateway::domain::quota::{Quotas, Resources};
use fluence_gateway::store::Store;
use fluence_gateway::store::audit::{self, NewAuditEntry};
use fluence_gateway::store::deployments::{self, Deployment};
use fluence_gateway::store::script::Script;
use fluence_gateway::store::teams::{self, Team};
use fluence_gateway::store::time::now;

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

/// A VM as the standing test inserts it: offsets in microseconds from the period's end.
#[derive(Debug, Clone)]
struct VmCase {
    price_micros: i64,
    next_billing: Option<i64>,
    expires: Option<i64>,
    /// 0: its deployment's hold is open; 1: released; 2 and 3: no hold.
    deployment: u8,
    deleted: bool,
}

/// A charge: which VM (modulo their number), when (from the period's end), how much, and to
/// whom: 0 the team, 1 another team, 2 nobody (an unowned VM).
#[derive(Debug, Clone)]
struct ChargeCase {
    vm: usize,
    at: i64,
    amount_micros: i64,
    owner: u8,
}

const DAY_MICROS: i64 = 86_400_000_000;

/// Offsets around the period's end and its start (31 days before it, in March), on and beside
/// whole days, where the rounding up and the day sums matter.
fn offset() -> impl proptest::strategy::Strategy<Value = i64> {
    use proptest::prelude::*;
    prop_oneof![
        -40 * DAY_MICROS..40 * DAY_MICROS,
        (-35_i64..35, -2_i64..=2).prop_map(|(days, micros)| days * DAY_MICROS + micros),
    ]
}

fn vm_case() -> impl proptest::strategy::Strategy<Value = VmCase> {
    use proptest::prelude::*;
    let price = prop_oneof![
        8 => 0_i64..20_000_000_000,
        1 => Just(i64::MAX / 3),
    ];
    (
        price,
        proptest::option::of(offset()),
        proptest::option::weighted(0.3, offset()),
        0_u8..4,
        proptest::bool::weighted(0.2),
    )
        .prop_map(
            |(price_micros, next_billing, expires, deployment, deleted)| VmCase {
                price_micros,
                next_billing,
                expires,
                deployment,
                deleted,
            },
        )
}

fn charge_case() -> impl proptest::strategy::Strategy<Value = ChargeCase> {
    use proptest::prelude::*;
    (0_usize..64, offset(), 1_i64..10_000_000_000, 0_u8..3).prop_map(
        |(vm, at, amount_micros, owner)| ChargeCase {
            vm,
            at,
            amount_micros,
            owner,
        },
    )
}

/// `budget::standing` sums a team's spend, commitment and holds in SQL from what the database
/// keeps for it (billing times in microseconds, charges by day); `billing::committed` and the
/// ledger are the truth. Over random inventories (prices, billing times, expiries and charges
/// on both sides of the period's bounds and on day boundaries, VMs covered by open holds,
/// deleted VMs, other teams' and unowned charges, sums that overflow) the two agree to the
/// micro-USDC, and fail together.
#[test]
fn a_budget_standing_summed_in_sql_is_the_billing_rule_and_the_ledger() {
    use chrono::{DateTime, TimeDelta, Utc};
    use fluence_gateway::domain::billing;
    use fluence_gateway::domain::money::Usdc;
    use fluence_gateway::store::time::to_db;
    use fluence_gateway::store::{budget, teams};
    use proptest::test_runner::{Config, TestCaseError, TestRunner};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = runtime.block_on(store(&dir, 5000));
    let now: DateTime<Utc> = "2026-03-20T10:00:00Z"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let period_start: DateTime<Utc> = "2026-03-01T00:00:00Z"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let period_end: DateTime<Utc> = "2026-04-01T00:00:00Z"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let at = |offset: i64| period_end + TimeDelta::microseconds(offset);
    let add_team = |id: String| {
        let store = &store;
        async move {
            let mut conn = store
                .pool()
                .acquire()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            sqlx::query(
                "INSERT INTO teams (id, name, budget_cap_micros, alert_thresholds, quotas, created_at, updated_at) \
                 VALUES (?1, ?1, 0, '[]', '{}', ?2, ?2)",
            )
            .bind(&id)
            .bind(to_db(now))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            teams::get(&mut conn, &id)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("the team was just inserted"))
        }
    };
    runtime.block_on(add_team("other".into()));

    let mut runner = TestRunner::new(Config {
        cases: 96,
        ..Config::default()
    });
    let inventories = (
        proptest::collection::vec(vm_case(), 0..30),
        proptest::collection::vec(charge_case(), 0..40),
    );
    let case = std::sync::atomic::AtomicUsize::new(0);
    let outcome = runner.run(&inventories, |(vms, charges)| {
        // The ledger is append-only: each case is a team of its own.
        let team_id = format!(
            "t{}",
            case.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        runtime.block_on(async {
            let team = add_team(team_id.clone()).await;
            let mut tx = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
            sqlx::query(
                "INSERT INTO holds (id, team_id, amount_micros, created_at, released_at) \
                 VALUES (?1 || '-d0', ?1, 5, ?2, NULL), (?1 || '-d1', ?1, 7, ?2, ?2)",
            )
            .bind(&team_id)
            .bind(to_db(now))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            for (i, vm) in vms.iter().enumerate() {
                sqlx::query(
                    "INSERT INTO vms (id, fluence_id, team_id, deployment_id, name, status, \
                     price_per_epoch_micros, next_billing_at, expires_at, created_at, deleted_at) \
                     VALUES (?1, ?1, ?2, ?3, 'vm', 'Active', ?4, ?5, ?6, ?7, ?8)",
                )
                .bind(format!("{team_id}-vm{i}"))
                .bind(&team_id)
                .bind(format!("{team_id}-d{}", vm.deployment))
                .bind(vm.price_micros)
                .bind(vm.next_billing.map(|o| to_db(at(o))))
                .bind(vm.expires.map(|o| to_db(at(o))))
                .bind(to_db(now))
                .bind(vm.deleted.then(|| to_db(now)))
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            }
            let mut spent = 0_i64;
            for charge in charges.iter().filter(|_| !vms.is_empty()) {
                let vm = charge.vm % vms.len();
                let owner = match charge.owner {
                    0 => Some(team_id.as_str()),
                    1 => Some("other"),
                    _ => None,
                };
                let when = at(charge.at);
                sqlx::query(
                    "INSERT INTO ledger (vm_id, team_id, amount_micros, at) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(format!("{team_id}-vm{vm}"))
                .bind(owner)
                .bind(charge.amount_micros)
                .bind(to_db(when))
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
                if charge.owner == 0
                    && when >= period_start
                    && when < period_end
                    && vms[vm].deployment != 0
                {
                    spent += charge.amount_micros;
                }
            }
            tx.commit().await.unwrap_or_else(|e| panic!("{e}"));

            let mut conn = store.pool().acquire().await.unwrap_or_else(|e| panic!("{e}"));
            let rule = budget::live_vms(&mut conn, &team_id)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .try_fold(Usdc::ZERO, |sum, vm| {
                    billing::committed(
                        vm.price_per_epoch,
                        vm.next_billing_at,
                        period_end,
                        vm.expires_at,
                    )
                    .and_then(|c| sum.checked_add(c))
                });
            let summed = budget::standing(&mut conn, &team, now).await;
            match (rule, summed) {
                (Some(rule), Ok(standing)) => {
                    proptest::prop_assert_eq!(standing.period_start, period_start);
                    proptest::prop_assert_eq!(standing.resets_at, period_end);
                    proptest::prop_assert_eq!(standing.budget.committed, rule);
                    proptest::prop_assert_eq!(standing.budget.spent, Usdc::from_micros(spent));
                    proptest::prop_assert_eq!(standing.budget.reserved, Usdc::from_micros(5));
                }
                (None, Err(error)) => {
                    proptest::prop_assert!(error.to_string().contains("overflow"), "{error}");
                }
                (rule, summed) => {
                    return Err(TestCaseError::fail(format!(
                        "the rule says {rule:?}, SQLite says {summed:?}"
                    )));
                }
            }
            Ok(())
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

/// The billing times are kept as integers by triggers, which refuse a time in any other form
/// than the gateway writes: the arithmetic would misread it.
#[tokio::test]
async fn a_vm_billing_time_in_another_form_is_refused() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    let pool = store.pool();
    sqlx::query(
        "INSERT INTO vms (id, fluence_id, name, status, price_per_epoch_micros, next_billing_at, \
         expires_at, created_at) VALUES ('ok', 'ok', 'vm', 'Active', 1, \
         '2026-03-30T12:00:00.000001Z', NULL, '2026-03-01T00:00:00.000000Z')",
    )
    .execute(pool)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let kept: (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT next_billing_us, expires_us FROM vms WHERE id = 'ok'")
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(kept, (Some(1_774_872_000_000_001), None));

    for (column, value) in [
        ("next_billing_at", "2026-03-30 12:00:00"),
        ("next_billing_at", "2026-03-30T12:00:00Z"),
        ("expires_at", "2026-13-30T12:00:00.000000Z"),
        ("expires_at", "soon"),
    ] {
        let insert = format!(
            "INSERT INTO vms (id, fluence_id, name, status, price_per_epoch_micros, {column}, \
             created_at) VALUES ('odd', 'odd', 'vm', 'Active', 1, ?1, '2026-03-01T00:00:00.000000Z')"
        );
        let refused = sqlx::query(&insert).bind(value).execute(pool).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("must be stored timestamps"),
            "{column} = {value}: {message}"
        );
        let update = format!("UPDATE vms SET {column} = ?1 WHERE id = 'ok'");
        let refused = sqlx::query(&update).bind(value).execute(pool).await;
        let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains("must be stored timestamps"),
            "{column} = {value}: {message}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scripts committed in groups (`store::script`)
// ---------------------------------------------------------------------------------------------

async fn with_team(store: &Store) {
    let at = now();
    let team = Team {
        id: "scripts".parse().unwrap_or_else(|e| panic!("{e}")),
        name: "Scripts".into(),
        cap: Usdc::from_micros(1_000_000),
        period_start_day: 1,
        alert_thresholds: Vec::new(),
        quotas: Quotas::default(),
        finalize_terminated: false,
        created_at: at,
        updated_at: at,
    };
    let mut tx = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    teams::insert(&mut tx, &team)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tx.commit().await.unwrap_or_else(|e| panic!("{e}"));
}

fn queued(id: &str, at: DateTime<Utc>) -> Deployment {
    Deployment {
        id: id.to_owned(),
        team_id: "scripts".into(),
        name: id.to_owned(),
        upstream_name: format!("{id}-vm"),
        status: Status::Queued,
        spec: serde_json::json!({}),
        instances: 1,
        configuration: "cpu-2-ram-4gb-storage-25gb".into(),
        per_vm: Resources {
            vcpus: 2,
            ram_gib: 4,
            storage_gib: 25,
        },
        estimate: None,
        max_price: None,
        commitment: None,
        epochs: None,
        reason_code: None,
        reason: None,
        idempotency_key: None,
        request_hash: None,
        created_by: "test".into(),
        created_at: at,
        updated_at: at,
        forwarded_at: None,
        unknown_since: None,
        settled_at: None,
        next_check_at: None,
    }
}

/// The insert of a new deployment and its audit entry, as a submission writes them; extra
/// deployments inserted first, in the same script.
fn submission(ids: &[&str], at: DateTime<Utc>) -> Script {
    let mut script = Script::new();
    for id in ids {
        deployments::push_insert(&mut script, &queued(id, at), None);
        audit::push_record_of_change(
            &mut script,
            NewAuditEntry {
                actor: "test",
                actor_role: "admin",
                action: "deployment.create",
                target_type: "deployment",
                target_id: id,
                team_id: Some("scripts"),
                before: None,
                after: None,
                request_id: None,
            },
            at,
        );
    }
    script
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Lets every spawned task run up to its first wait (the test runtime has one thread).
async fn let_them_queue() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn scripts_waiting_for_the_write_lock_are_committed_together() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    with_team(&store).await;

    let holder = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let mut runs = tokio::task::JoinSet::new();
    for i in 0..40 {
        let store = store.clone();
        runs.spawn(async move {
            store
                .run(submission(&[&format!("dep_{i:02}")], now()))
                .await
        });
    }
    let_them_queue().await;
    assert_eq!(count(&store, "SELECT count(*) FROM deployments").await, 0);
    holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));

    while let Some(done) = runs.join_next().await {
        let rows = done
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rows.len(), 1, "the insert returns its row");
    }
    assert_eq!(count(&store, "SELECT count(*) FROM deployments").await, 40);
    assert_eq!(count(&store, "SELECT count(*) FROM audit_log").await, 40);
    assert_eq!(
        store.script_counts(),
        (1, 40),
        "the 40 scripts that waited shared one transaction"
    );
}

#[tokio::test]
async fn a_failing_script_is_undone_alone_and_its_group_commits() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    with_team(&store).await;
    store
        .run(submission(&["dep_taken"], now()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    let holder = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let before = {
        let store = store.clone();
        tokio::spawn(async move { store.run(submission(&["dep_a"], now())).await })
    };
    // Its first deployment is new; its second takes an id already used, and fails.
    let failing = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run(submission(&["dep_half", "dep_taken"], now()))
                .await
        })
    };
    let after = {
        let store = store.clone();
        tokio::spawn(async move { store.run(submission(&["dep_b"], now())).await })
    };
    let_them_queue().await;
    holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));

    for ok in [before, after] {
        ok.await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let failed = failing.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(failed.is_err(), "the duplicate id is refused");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM deployments WHERE id = 'dep_half'"
        )
        .await,
        0,
        "the failing script's first insert was undone with it"
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM audit_log WHERE target_id = 'dep_half'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM deployments WHERE id IN ('dep_a', 'dep_b')"
        )
        .await,
        2
    );
    assert_eq!(
        store.script_counts(),
        (2, 4),
        "one group of three after the first"
    );
}

#[tokio::test]
async fn a_script_given_up_on_before_its_turn_is_never_written() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    with_team(&store).await;

    let holder = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let abandoned = {
        let store = store.clone();
        tokio::spawn(async move { store.run(submission(&["dep_gone"], now())).await })
    };
    let_them_queue().await;
    abandoned.abort();
    let _ = abandoned.await;
    holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));

    // The next script's commit would have carried it, had it still been waiting.
    store
        .run(submission(&["dep_next"], now()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM deployments WHERE id = 'dep_gone'"
        )
        .await,
        0
    );
    assert_eq!(store.script_counts(), (1, 1));
}

#[tokio::test]
async fn a_script_built_under_the_lock_is_given_the_time_the_lock_was_taken() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    with_team(&store).await;

    let holder = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.run_at(|at| submission(&["dep_timed"], at)).await })
    };
    let_them_queue().await;
    let released = now();
    holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    waiting
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));

    let created: String =
        sqlx::query_scalar("SELECT created_at FROM deployments WHERE id = 'dep_timed'")
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let created = fluence_gateway::store::time::from_db(&created).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        created >= released,
        "built at {created}, after the lock it waited for was released at {released}"
    );
}

#[tokio::test]
async fn another_process_on_the_file_still_meets_the_busy_timeout() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let one = store(&dir, 200).await;
    let other = store(&dir, 200).await;
    with_team(&one).await;

    let holder = one.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    assert!(other.begin_write().await.is_err());
    assert!(other.run(submission(&["dep_other"], now())).await.is_err());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "each waited"
    );
    holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));
    other
        .run(submission(&["dep_other"], now()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&one, "SELECT count(*) FROM deployments").await, 1);
}

#[tokio::test]
async fn a_script_that_cannot_be_built_fails_alone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = store(&dir, 5000).await;
    with_team(&store).await;

    let holder = store.begin_write().await.unwrap_or_else(|e| panic!("{e}"));
    let broken = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .run_at(|_| -> Script { panic!("a bug in a script's builder") })
                .await
        })
    };
    let sound = {
        let store = store.clone();
        tokio::spawn(async move { store.run(submission(&["dep_sound"], now())).await })
    };
    let_them_queue().await;
    holder.rollback().await.unwrap_or_else(|e| panic!("{e}"));

    let broken = broken.await.unwrap_or_else(|e| panic!("{e}"));
    assert!(broken.is_err());
    sound
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&store, "SELECT count(*) FROM deployments").await, 1);
    // The connection is usable afterwards: a next write commits.
    store
        .run(submission(&["dep_after"], now()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count(&store, "SELECT count(*) FROM deployments").await, 2);
}
