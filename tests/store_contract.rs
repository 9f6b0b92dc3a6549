//! The StateStore contract against every store: memory, embedded (redb) and Redis.
//!
//! Redis: `SANDBOXD_TEST_REDIS_URL` (default redis://127.0.0.1:6379; start one with
//! `scripts/redis-up`). Each run uses a fresh random key prefix and deletes it afterwards.
//! Set `SANDBOXD_SKIP_REDIS_TESTS=1` to skip the Redis test where no Redis is available.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use sandboxd::store::contract::{self, create, event, idx, timer, writes};
use sandboxd::store::{EmbeddedStore, RedisStore};
use sandboxd_actors::ports::{Commit, IndexQuery, Kind, StateStore, StoreError};
use sandboxd_actors::testkit::MemoryStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_meets_the_contract() {
    let store = MemoryStore::new();
    contract::run_all(&store).await;
}

#[tokio::test]
async fn memory_store_injected_failure_applies_nothing() {
    let store = MemoryStore::new();
    store.set_fail_next_commit(StoreError::Unavailable("injected".into()));
    let commit = writes(vec![create(Kind::Lease, "f-1", "x", idx(None, None))]);
    assert_eq!(
        store.commit(commit.clone()).await,
        Err(StoreError::Unavailable("injected".into()))
    );
    assert_eq!(store.load(Kind::Lease, "f-1").await.unwrap(), None);
    store.commit(commit).await.expect("the failure is one-shot");
    assert_eq!(store.commit_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("nested/dir/state.redb")).unwrap();
    contract::run_all(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let (e1, e2) = (event("persist-1", 1), event("persist-2", 2));
    {
        let store = EmbeddedStore::open(&path).unwrap();
        store
            .commit(Commit {
                writes: vec![
                    create(
                        Kind::Lease,
                        "p-1",
                        "body-1",
                        idx(Some("Active"), Some("u@x")),
                    ),
                    create(Kind::Account, "p-acc", "acc", idx(Some("Leased"), None)),
                ],
                outbox: vec![e1.clone()],
                arm_timers: vec![timer("p-timer", 42, "tb")],
                seen_event: Some(("p-seen".into(), Duration::from_secs(3600))),
                ..Commit::default()
            })
            .await
            .unwrap();
    }
    let store = EmbeddedStore::open(&path).expect("reopen after drop");
    let record = store
        .load(Kind::Lease, "p-1")
        .await
        .unwrap()
        .expect("record survives");
    assert_eq!((record.version, record.body.as_str()), (1, "body-1"));
    assert_eq!(
        store
            .ids(IndexQuery::by_user(Kind::Lease, "u@x"))
            .await
            .unwrap(),
        vec!["p-1".to_string()]
    );
    assert_eq!(
        store
            .ids(IndexQuery::by_status(Kind::Account, "Leased"))
            .await
            .unwrap(),
        vec!["p-acc".to_string()]
    );
    assert_eq!(
        store.due_timers(100, 10).await.unwrap(),
        vec![timer("p-timer", 42, "tb")]
    );
    assert_eq!(store.outbox(10).await.unwrap(), vec![e1.clone()]);
    assert_eq!(
        store
            .commit(Commit {
                seen_event: Some(("p-seen".into(), Duration::from_secs(3600))),
                ..Commit::default()
            })
            .await,
        Err(StoreError::Duplicate("p-seen".into())),
        "duplicate keys survive too"
    );
    // The outbox sequence continues after the entries already there.
    store
        .commit(Commit {
            outbox: vec![e2.clone()],
            ..Commit::default()
        })
        .await
        .unwrap();
    assert_eq!(store.outbox(10).await.unwrap(), vec![e1, e2]);
}

/// Group commit under real parallelism: 200 tasks each increment one of 4 counters with a
/// load + compare-and-set retry loop. Every acknowledged increment must count exactly once (no
/// lost update, no double apply), and survive dropping the store and reopening the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_parallel_cas_increments_all_count() {
    const TASKS: usize = 200;
    const COUNTERS: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    let store = std::sync::Arc::new(EmbeddedStore::open(&path).unwrap());
    let tasks: Vec<_> = (0..TASKS)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("counter-{}", n % COUNTERS);
                let mut conflicts = 0usize;
                loop {
                    let version = store
                        .load(Kind::Lease, &id)
                        .await
                        .unwrap()
                        .map_or(0, |r| r.version);
                    let write = contract::update(
                        Kind::Lease,
                        &id,
                        version,
                        &format!("{{\"last\":{n}}}"),
                        idx(Some("Counter"), None),
                        idx(Some("Counter"), None),
                    );
                    match store.commit(writes(vec![write])).await {
                        Ok(()) => return conflicts,
                        Err(StoreError::Conflict { found, .. }) if found >= version => {
                            conflicts += 1
                        }
                        Err(other) => panic!("task {n}: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut conflicts = 0;
    for task in tasks {
        conflicts += task.await.unwrap();
    }
    eprintln!("{TASKS} increments, {conflicts} conflicts retried");
    let versions = |store: &EmbeddedStore| {
        let store = store.clone();
        async move {
            let mut out = Vec::new();
            for c in 0..COUNTERS {
                let id = format!("counter-{c}");
                out.push(store.load(Kind::Lease, &id).await.unwrap().unwrap().version);
            }
            out
        }
    };
    assert_eq!(
        versions(&store).await,
        vec![(TASKS / COUNTERS) as u64; COUNTERS]
    );
    drop(store);
    // The writer thread has let go of the file: it reopens at once, with every increment.
    let store = EmbeddedStore::open(&path).expect("reopen after drop");
    assert_eq!(
        versions(&store).await,
        vec![(TASKS / COUNTERS) as u64; COUNTERS]
    );
    assert_eq!(
        store
            .ids(IndexQuery::by_status(Kind::Lease, "Counter"))
            .await
            .unwrap()
            .len(),
        COUNTERS
    );
}

#[tokio::test]
async fn embedded_store_open_fails_clearly_on_a_bad_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let error = EmbeddedStore::open(&file.join("state.redb")).unwrap_err();
    assert!(format!("{error:#}").contains("not-a-dir"), "{error:#}");
}

fn redis_url() -> String {
    std::env::var("SANDBOXD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn skip_redis() -> bool {
    if std::env::var("SANDBOXD_SKIP_REDIS_TESTS").is_ok_and(|v| !v.is_empty() && v != "0") {
        eprintln!("SANDBOXD_SKIP_REDIS_TESTS is set: skipping the Redis store test");
        return true;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_meets_the_contract() {
    if skip_redis() {
        return;
    }
    let url = redis_url();
    let prefix = format!("sandboxd-test-{}", uuid::Uuid::new_v4());
    let store = RedisStore::connect(&url, &prefix)
        .await
        .unwrap_or_else(|e| panic!("{e:#} (run scripts/redis-up, or set SANDBOXD_TEST_REDIS_URL)"));
    let outcome = AssertUnwindSafe(contract::run_all(&store))
        .catch_unwind()
        .await;
    let deleted = store.delete_prefix().await.expect("delete_prefix");
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    assert!(deleted > 0, "the suite wrote keys under its prefix");
    assert_eq!(
        store.delete_prefix().await.unwrap(),
        0,
        "nothing left under the prefix"
    );
}

#[tokio::test]
async fn redis_connect_names_the_url_when_unreachable() {
    // Port 1 on localhost: nothing listens there.
    let error = RedisStore::connect("redis://:secret@127.0.0.1:1", "x")
        .await
        .unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(
        !text.contains("secret"),
        "the password is not echoed: {text}"
    );
}
