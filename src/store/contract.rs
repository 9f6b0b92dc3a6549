//! The `StateStore` contract, as one suite every store must pass (memory, embedded, Redis).
//!
//! The cases share one store and run in sequence, so each uses its own ids; the timer and
//! outbox cases first drain what earlier cases left behind. Failures panic with a message naming
//! the case.

use std::time::Duration;

use chrono::Utc;
use sandboxd_actors::domain::EventRecord;
use sandboxd_actors::ports::{
    Commit, EntityWrite, IndexQuery, IndexValues, Kind, Record, StateStore, StoreError, TimerRecord,
};
use serde_json::json;

/// Run every case against `store`, in order.
pub async fn run_all(store: &dyn StateStore) {
    empty_commit_is_fine(store).await;
    create_only_conflicts_when_record_exists(store).await;
    stale_version_conflict_applies_nothing(store).await;
    delete_removes_record_and_index_entries(store).await;
    indexes_move_intersect_and_sort(store).await;
    load_many_keeps_order_and_skips_missing(store).await;
    timers_arm_rearm_due_and_limit(store).await;
    timers_consume_cancel_and_rearm(store).await;
    outbox_is_fifo_with_ack_and_len(store).await;
    seen_event_detects_duplicates(store).await;
    checks_run_in_contract_order(store).await;
    concurrent_creates_have_one_winner(store).await;
    concurrent_mixed_commits_each_get_their_own_result(store).await;
}

// ----- helpers ---------------------------------------------------------------------------------

pub fn idx(status: Option<&str>, user: Option<&str>) -> IndexValues {
    IndexValues {
        status: status.map(str::to_string),
        user: user.map(str::to_string),
    }
}

/// A create (expected version 0 -> 1).
pub fn create(kind: Kind, id: &str, body: &str, indexes: IndexValues) -> EntityWrite {
    EntityWrite {
        kind,
        id: id.to_string(),
        expected_version: 0,
        new_version: 1,
        body: Some(body.to_string()),
        indexes,
        old_indexes: IndexValues::default(),
    }
}

/// An update from `expected` to `expected + 1`.
pub fn update(
    kind: Kind,
    id: &str,
    expected: u64,
    body: &str,
    indexes: IndexValues,
    old_indexes: IndexValues,
) -> EntityWrite {
    EntityWrite {
        kind,
        id: id.to_string(),
        expected_version: expected,
        new_version: expected + 1,
        body: Some(body.to_string()),
        indexes,
        old_indexes,
    }
}

pub fn delete(kind: Kind, id: &str, expected: u64, old_indexes: IndexValues) -> EntityWrite {
    EntityWrite {
        kind,
        id: id.to_string(),
        expected_version: expected,
        new_version: expected + 1,
        body: None,
        indexes: IndexValues::default(),
        old_indexes,
    }
}

pub fn writes(writes: Vec<EntityWrite>) -> Commit {
    Commit {
        writes,
        ..Commit::default()
    }
}

pub fn timer(id: &str, due_ms: i64, body: &str) -> TimerRecord {
    TimerRecord {
        id: id.to_string(),
        due_ms,
        body: body.to_string(),
    }
}

pub fn event(id: &str, n: u64) -> EventRecord {
    EventRecord {
        id: id.to_string(),
        time: Utc::now(),
        detail_type: "LeaseFrozen".to_string(),
        detail: json!({
            "leaseId": {"userEmail": "someone@example.gov.uk", "uuid": id},
            "accountId": "123456789012",
            "reason": format!("case {n} \u{e9}\u{1F600} \"quoted\" \n newline"),
            "schemaVersion": 1,
        }),
    }
}

async fn must_commit(store: &dyn StateStore, commit: Commit, what: &str) {
    if let Err(error) = store.commit(commit).await {
        panic!("{what}: commit failed: {error}");
    }
}

async fn load(store: &dyn StateStore, kind: Kind, id: &str) -> Option<Record> {
    store.load(kind, id).await.expect("load")
}

async fn ids(store: &dyn StateStore, query: IndexQuery) -> Vec<String> {
    store.ids(query).await.expect("ids")
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn both(kind: Kind, status: &str, user: &str) -> IndexQuery {
    IndexQuery {
        kind,
        status: Some(status.to_string()),
        user: Some(user.to_string()),
    }
}

/// Cancel every armed timer and ack every outbox entry.
pub async fn drain_queues(store: &dyn StateStore) {
    loop {
        let due = store.due_timers(i64::MAX, 1000).await.expect("due_timers");
        if due.is_empty() {
            break;
        }
        let commit = Commit {
            cancel_timers: due.into_iter().map(|t| t.id).collect(),
            ..Commit::default()
        };
        must_commit(store, commit, "drain timers").await;
    }
    loop {
        let entries = store.outbox(1000).await.expect("outbox");
        if entries.is_empty() {
            break;
        }
        let ids: Vec<String> = entries.into_iter().map(|e| e.id).collect();
        store.ack_outbox(&ids).await.expect("ack_outbox");
    }
    assert_eq!(store.timer_count().await.expect("timer_count"), 0);
    assert_eq!(store.outbox_len().await.expect("outbox_len"), 0);
}

// ----- cases -----------------------------------------------------------------------------------

pub async fn empty_commit_is_fine(store: &dyn StateStore) {
    must_commit(store, Commit::default(), "empty commit").await;
}

pub async fn create_only_conflicts_when_record_exists(store: &dyn StateStore) {
    let id = "create-only-1";
    assert_eq!(load(store, Kind::Lease, id).await, None);
    must_commit(
        store,
        writes(vec![create(
            Kind::Lease,
            id,
            r#"{"n":1}"#,
            idx(Some("Pending"), Some("u1")),
        )]),
        "create",
    )
    .await;
    assert_eq!(
        load(store, Kind::Lease, id).await,
        Some(Record {
            id: id.to_string(),
            version: 1,
            body: r#"{"n":1}"#.to_string()
        })
    );
    let again = store
        .commit(writes(vec![create(
            Kind::Lease,
            id,
            r#"{"n":2}"#,
            IndexValues::default(),
        )]))
        .await;
    assert_eq!(
        again,
        Err(StoreError::Conflict {
            kind: "lease",
            id: id.to_string(),
            expected: 0,
            found: 1
        }),
        "a second create of the same id conflicts"
    );
    assert_eq!(
        load(store, Kind::Lease, id).await.unwrap().body,
        r#"{"n":1}"#
    );

    // The same id under another kind is a different record.
    must_commit(
        store,
        writes(vec![create(
            Kind::Template,
            id,
            "{}",
            IndexValues::default(),
        )]),
        "create other kind",
    )
    .await;
    assert_eq!(load(store, Kind::Template, id).await.unwrap().version, 1);
    assert_eq!(load(store, Kind::Lease, id).await.unwrap().version, 1);
}

pub async fn stale_version_conflict_applies_nothing(store: &dyn StateStore) {
    drain_queues(store).await;
    let (a, b) = ("cas-a", "cas-b");
    must_commit(
        store,
        writes(vec![
            create(Kind::Lease, a, "a1", idx(Some("Active"), Some("cas-user"))),
            create(Kind::Lease, b, "b1", idx(Some("Active"), Some("cas-user"))),
        ]),
        "create a and b",
    )
    .await;
    let seen_key = "cas-seen-1";
    let commit = Commit {
        writes: vec![
            update(
                Kind::Lease,
                a,
                1,
                "a2",
                idx(Some("Frozen"), Some("cas-user")),
                idx(Some("Active"), Some("cas-user")),
            ),
            update(
                Kind::Lease,
                b,
                5,
                "b6",
                idx(Some("Frozen"), Some("cas-user")),
                idx(Some("Active"), Some("cas-user")),
            ),
        ],
        outbox: vec![event("cas-event-1", 1)],
        arm_timers: vec![timer("cas-timer-1", 1_000, "t")],
        cancel_timers: vec!["whatever".to_string()],
        seen_event: Some((seen_key.to_string(), Duration::from_secs(60))),
        ..Commit::default()
    };
    assert_eq!(
        store.commit(commit).await,
        Err(StoreError::Conflict {
            kind: "lease",
            id: b.to_string(),
            expected: 5,
            found: 1
        })
    );
    assert_eq!(
        load(store, Kind::Lease, a).await.unwrap().version,
        1,
        "first write not applied"
    );
    assert_eq!(load(store, Kind::Lease, a).await.unwrap().body, "a1");
    assert_eq!(load(store, Kind::Lease, b).await.unwrap().body, "b1");
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "Frozen")).await,
        Vec::<String>::new()
    );
    assert_eq!(
        ids(store, both(Kind::Lease, "Active", "cas-user")).await,
        strings(&[a, b])
    );
    assert_eq!(
        store.outbox_len().await.unwrap(),
        0,
        "no outbox entry from a failed commit"
    );
    assert_eq!(
        store.timer_count().await.unwrap(),
        0,
        "no timer from a failed commit"
    );

    // The duplicate key was not recorded either: a good commit with it goes through.
    must_commit(
        store,
        Commit {
            writes: vec![update(
                Kind::Lease,
                a,
                1,
                "a2",
                idx(Some("Frozen"), Some("cas-user")),
                idx(Some("Active"), Some("cas-user")),
            )],
            seen_event: Some((seen_key.to_string(), Duration::from_secs(60))),
            ..Commit::default()
        },
        "retry with fresh version",
    )
    .await;
    assert_eq!(load(store, Kind::Lease, a).await.unwrap().version, 2);

    // Updating a missing record with a non-zero expectation conflicts with found = 0.
    assert_eq!(
        store
            .commit(writes(vec![update(
                Kind::Lease,
                "cas-missing",
                3,
                "x",
                IndexValues::default(),
                IndexValues::default()
            )]))
            .await,
        Err(StoreError::Conflict {
            kind: "lease",
            id: "cas-missing".to_string(),
            expected: 3,
            found: 0
        })
    );
    assert_eq!(load(store, Kind::Lease, "cas-missing").await, None);
}

pub async fn delete_removes_record_and_index_entries(store: &dyn StateStore) {
    let id = "del-1";
    let values = idx(Some("DelStatus"), Some("del-user"));
    must_commit(
        store,
        writes(vec![create(Kind::Lease, id, "d1", values.clone())]),
        "create",
    )
    .await;
    assert!(ids(store, IndexQuery::all(Kind::Lease))
        .await
        .contains(&id.to_string()));

    // A delete with a stale version conflicts and keeps the record.
    assert!(matches!(
        store
            .commit(writes(vec![delete(Kind::Lease, id, 7, values.clone())]))
            .await,
        Err(StoreError::Conflict {
            expected: 7,
            found: 1,
            ..
        })
    ));
    assert!(load(store, Kind::Lease, id).await.is_some());

    must_commit(
        store,
        writes(vec![delete(Kind::Lease, id, 1, values.clone())]),
        "delete",
    )
    .await;
    assert_eq!(load(store, Kind::Lease, id).await, None);
    assert!(!ids(store, IndexQuery::all(Kind::Lease))
        .await
        .contains(&id.to_string()));
    assert!(ids(store, IndexQuery::by_status(Kind::Lease, "DelStatus"))
        .await
        .is_empty());
    assert!(ids(store, IndexQuery::by_user(Kind::Lease, "del-user"))
        .await
        .is_empty());
    assert!(store
        .load_many(Kind::Lease, &strings(&[id]))
        .await
        .unwrap()
        .is_empty());

    // Deleting again (now absent) conflicts; re-creating works.
    assert!(matches!(
        store
            .commit(writes(vec![delete(Kind::Lease, id, 1, values.clone())]))
            .await,
        Err(StoreError::Conflict {
            expected: 1,
            found: 0,
            ..
        })
    ));
    must_commit(
        store,
        writes(vec![create(Kind::Lease, id, "d2", values)]),
        "re-create",
    )
    .await;
    assert_eq!(load(store, Kind::Lease, id).await.unwrap().body, "d2");
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "DelStatus")).await,
        strings(&[id])
    );
}

/// Uses `Kind::Account` only, so the "all" listing is exact.
pub async fn indexes_move_intersect_and_sort(store: &dyn StateStore) {
    let k = Kind::Account;
    must_commit(
        store,
        writes(vec![
            create(k, "acc-3", "3", idx(Some("Available"), None)),
            create(k, "acc-1", "1", idx(Some("Available"), Some("alice"))),
            create(k, "acc-2", "2", idx(Some("Leased"), Some("alice"))),
            create(
                k,
                "acc-10",
                "10",
                idx(Some("Leased"), Some("bob@example.com")),
            ),
        ]),
        "create accounts",
    )
    .await;
    assert_eq!(
        ids(store, IndexQuery::all(k)).await,
        strings(&["acc-1", "acc-10", "acc-2", "acc-3"]),
        "all ids, sorted as strings"
    );
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Available")).await,
        strings(&["acc-1", "acc-3"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Leased")).await,
        strings(&["acc-10", "acc-2"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_user(k, "alice")).await,
        strings(&["acc-1", "acc-2"])
    );
    assert_eq!(
        ids(store, both(k, "Leased", "alice")).await,
        strings(&["acc-2"])
    );
    assert!(ids(store, both(k, "Available", "nobody")).await.is_empty());
    assert!(ids(store, IndexQuery::by_status(k, "NoSuchStatus"))
        .await
        .is_empty());
    assert!(
        ids(store, IndexQuery::by_status(Kind::Lease, "Available"))
            .await
            .is_empty(),
        "indexes are per kind"
    );

    // Move acc-1 from Available/alice to Leased/bob.
    must_commit(
        store,
        writes(vec![update(
            k,
            "acc-1",
            1,
            "1b",
            idx(Some("Leased"), Some("bob@example.com")),
            idx(Some("Available"), Some("alice")),
        )]),
        "move acc-1",
    )
    .await;
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Available")).await,
        strings(&["acc-3"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Leased")).await,
        strings(&["acc-1", "acc-10", "acc-2"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_user(k, "alice")).await,
        strings(&["acc-2"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_user(k, "bob@example.com")).await,
        strings(&["acc-1", "acc-10"])
    );
    assert_eq!(
        ids(store, both(k, "Leased", "bob@example.com")).await,
        strings(&["acc-1", "acc-10"])
    );

    // Clearing the status removes it from every status set but keeps it in "all".
    must_commit(
        store,
        writes(vec![update(
            k,
            "acc-3",
            1,
            "3b",
            idx(None, None),
            idx(Some("Available"), None),
        )]),
        "clear acc-3 status",
    )
    .await;
    assert!(ids(store, IndexQuery::by_status(k, "Available"))
        .await
        .is_empty());
    assert!(ids(store, IndexQuery::all(k))
        .await
        .contains(&"acc-3".to_string()));

    // The stores also remember the index values they wrote, so a move cleans up the previous
    // sets even when the caller's old_indexes are missing.
    must_commit(
        store,
        writes(vec![update(
            k,
            "acc-10",
            1,
            "10b",
            idx(Some("Quarantine"), None),
            IndexValues::default(),
        )]),
        "move acc-10 without old_indexes",
    )
    .await;
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Leased")).await,
        strings(&["acc-1", "acc-2"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_user(k, "bob@example.com")).await,
        strings(&["acc-1"])
    );
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Quarantine")).await,
        strings(&["acc-10"])
    );

    // Deleting removes it from its sets.
    must_commit(
        store,
        writes(vec![delete(
            k,
            "acc-2",
            1,
            idx(Some("Leased"), Some("alice")),
        )]),
        "delete acc-2",
    )
    .await;
    assert_eq!(
        ids(store, IndexQuery::by_status(k, "Leased")).await,
        strings(&["acc-1"])
    );
    assert!(ids(store, IndexQuery::by_user(k, "alice")).await.is_empty());
    assert_eq!(
        ids(store, IndexQuery::all(k)).await,
        strings(&["acc-1", "acc-10", "acc-3"])
    );
}

pub async fn load_many_keeps_order_and_skips_missing(store: &dyn StateStore) {
    let k = Kind::Lease;
    must_commit(
        store,
        writes(vec![
            create(k, "lm-a", "A", IndexValues::default()),
            create(k, "lm-b", "B", IndexValues::default()),
            create(k, "lm-c", "C", IndexValues::default()),
        ]),
        "create lm-*",
    )
    .await;
    must_commit(
        store,
        writes(vec![update(
            k,
            "lm-b",
            1,
            "B2",
            IndexValues::default(),
            IndexValues::default(),
        )]),
        "update lm-b",
    )
    .await;
    let got = store
        .load_many(k, &strings(&["lm-c", "lm-missing", "lm-a", "lm-b"]))
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![
            Record {
                id: "lm-c".into(),
                version: 1,
                body: "C".into()
            },
            Record {
                id: "lm-a".into(),
                version: 1,
                body: "A".into()
            },
            Record {
                id: "lm-b".into(),
                version: 2,
                body: "B2".into()
            },
        ]
    );
    assert!(store.load_many(k, &[]).await.unwrap().is_empty());
    assert!(store
        .load_many(Kind::Template, &strings(&["lm-a"]))
        .await
        .unwrap()
        .is_empty());

    // Enough records to cross the stores' batching boundaries, queried in reverse with gaps.
    let bulk: Vec<EntityWrite> = (0..2_500)
        .map(|n| {
            create(
                k,
                &format!("bulk-{n:05}"),
                &format!("{{\"n\":{n}}}"),
                IndexValues::default(),
            )
        })
        .collect();
    must_commit(store, writes(bulk), "bulk create").await;
    let mut wanted: Vec<String> = Vec::new();
    for n in (0..2_600).rev() {
        wanted.push(format!("bulk-{n:05}"));
    }
    let got = store.load_many(k, &wanted).await.unwrap();
    assert_eq!(got.len(), 2_500);
    for (i, record) in got.iter().enumerate() {
        let n = 2_499 - i;
        assert_eq!(record.id, format!("bulk-{n:05}"));
        assert_eq!(record.body, format!("{{\"n\":{n}}}"));
    }
}

pub async fn timers_arm_rearm_due_and_limit(store: &dyn StateStore) {
    drain_queues(store).await;
    let arm = |timers: Vec<TimerRecord>| Commit {
        arm_timers: timers,
        ..Commit::default()
    };
    must_commit(
        store,
        arm(vec![
            timer("t1", 100, "one"),
            timer("t2", 50, "two"),
            timer("t3", 300, "three"),
        ]),
        "arm",
    )
    .await;
    assert_eq!(store.timer_count().await.unwrap(), 3);
    let due = store.due_timers(200, 10).await.unwrap();
    assert_eq!(due, vec![timer("t2", 50, "two"), timer("t1", 100, "one")]);
    assert_eq!(
        store.due_timers(50, 10).await.unwrap(),
        vec![timer("t2", 50, "two")],
        "due_ms == until is due"
    );
    assert!(store.due_timers(49, 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_timers(1_000, 2).await.unwrap(),
        vec![timer("t2", 50, "two"), timer("t1", 100, "one")],
        "limit applies after ordering"
    );
    assert!(store.due_timers(1_000, 0).await.unwrap().is_empty());

    // Re-arming an existing id replaces its due time and body.
    must_commit(store, arm(vec![timer("t1", 10, "one-again")]), "re-arm t1").await;
    assert_eq!(store.timer_count().await.unwrap(), 3);
    assert_eq!(
        store.due_timers(1_000, 10).await.unwrap(),
        vec![
            timer("t1", 10, "one-again"),
            timer("t2", 50, "two"),
            timer("t3", 300, "three")
        ]
    );
    must_commit(
        store,
        arm(vec![timer("t1", 400, "later")]),
        "re-arm t1 later",
    )
    .await;
    assert_eq!(
        store.due_timers(1_000, 10).await.unwrap(),
        vec![
            timer("t2", 50, "two"),
            timer("t3", 300, "three"),
            timer("t1", 400, "later")
        ]
    );

    // Realistic epoch-millisecond due times survive exactly.
    let now_ms = 1_767_225_600_123_i64;
    must_commit(store, arm(vec![timer("t-epoch", now_ms, "e")]), "arm epoch").await;
    assert_eq!(
        store.due_timers(now_ms, 10).await.unwrap().last(),
        Some(&timer("t-epoch", now_ms, "e"))
    );
    assert!(!store
        .due_timers(now_ms - 1, 10)
        .await
        .unwrap()
        .iter()
        .any(|t| t.id == "t-epoch"));
    drain_queues(store).await;
}

pub async fn timers_consume_cancel_and_rearm(store: &dyn StateStore) {
    drain_queues(store).await;
    must_commit(
        store,
        Commit {
            arm_timers: vec![
                timer("c1", 10, "a"),
                timer("c2", 20, "b"),
                timer("c3", 30, "c"),
            ],
            ..Commit::default()
        },
        "arm c*",
    )
    .await;

    // Consuming a missing timer aborts the whole commit.
    let failing = Commit {
        writes: vec![create(Kind::Lease, "tc-rec", "x", IndexValues::default())],
        outbox: vec![event("tc-event", 1)],
        arm_timers: vec![timer("c-new", 5, "n")],
        consume_timers: vec!["c1".to_string(), "nope".to_string()],
        cancel_timers: vec!["c2".to_string()],
        ..Commit::default()
    };
    assert_eq!(
        store.commit(failing).await,
        Err(StoreError::TimerGone("nope".to_string()))
    );
    assert_eq!(load(store, Kind::Lease, "tc-rec").await, None);
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert_eq!(
        store.timer_count().await.unwrap(),
        3,
        "c1 and c2 still armed, c-new not armed"
    );

    // Cancelling a missing timer is fine.
    must_commit(
        store,
        Commit {
            cancel_timers: vec!["nope".to_string(), "c2".to_string()],
            ..Commit::default()
        },
        "cancel",
    )
    .await;
    assert_eq!(
        store.due_timers(i64::MAX, 10).await.unwrap(),
        vec![timer("c1", 10, "a"), timer("c3", 30, "c")]
    );

    // Consume once; a second consume of the same timer is TimerGone.
    let consume = |id: &str| Commit {
        consume_timers: vec![id.to_string()],
        ..Commit::default()
    };
    must_commit(store, consume("c1"), "consume c1").await;
    assert_eq!(store.timer_count().await.unwrap(), 1);
    assert_eq!(
        store.commit(consume("c1")).await,
        Err(StoreError::TimerGone("c1".to_string()))
    );

    // Consume and re-arm the same id in one commit: it stays armed with the new due time.
    must_commit(
        store,
        Commit {
            consume_timers: vec!["c3".to_string()],
            arm_timers: vec![timer("c3", 99, "c-next")],
            ..Commit::default()
        },
        "consume and re-arm c3",
    )
    .await;
    assert_eq!(
        store.due_timers(i64::MAX, 10).await.unwrap(),
        vec![timer("c3", 99, "c-next")]
    );
    // Likewise cancel + arm.
    must_commit(
        store,
        Commit {
            cancel_timers: vec!["c3".to_string()],
            arm_timers: vec![timer("c3", 7, "c-again")],
            ..Commit::default()
        },
        "cancel and re-arm c3",
    )
    .await;
    assert_eq!(
        store.due_timers(i64::MAX, 10).await.unwrap(),
        vec![timer("c3", 7, "c-again")]
    );
    drain_queues(store).await;
}

pub async fn outbox_is_fifo_with_ack_and_len(store: &dyn StateStore) {
    drain_queues(store).await;
    let (e1, e2, e3, e4) = (
        event("ob-1", 1),
        event("ob-2", 2),
        event("ob-3", 3),
        event("ob-4", 4),
    );
    must_commit(
        store,
        Commit {
            outbox: vec![e1.clone(), e2.clone(), e3.clone()],
            ..Commit::default()
        },
        "append 3",
    )
    .await;
    must_commit(
        store,
        Commit {
            outbox: vec![e4.clone()],
            ..Commit::default()
        },
        "append 1",
    )
    .await;
    assert_eq!(store.outbox_len().await.unwrap(), 4);
    assert_eq!(
        store.outbox(10).await.unwrap(),
        vec![e1.clone(), e2.clone(), e3.clone(), e4.clone()],
        "entries round-trip unchanged, oldest first"
    );
    assert_eq!(store.outbox(2).await.unwrap(), vec![e1.clone(), e2.clone()]);
    assert!(store.outbox(0).await.unwrap().is_empty());

    store
        .ack_outbox(&strings(&["ob-1", "ob-unknown", "ob-3"]))
        .await
        .unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 2);
    assert_eq!(
        store.outbox(10).await.unwrap(),
        vec![e2.clone(), e4.clone()]
    );
    store.ack_outbox(&[]).await.unwrap();
    store.ack_outbox(&strings(&["ob-1"])).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 2);

    // Later appends go after what is left.
    let e5 = event("ob-5", 5);
    must_commit(
        store,
        Commit {
            outbox: vec![e5.clone()],
            ..Commit::default()
        },
        "append after ack",
    )
    .await;
    assert_eq!(store.outbox(10).await.unwrap(), vec![e2, e4, e5]);
    store
        .ack_outbox(&strings(&["ob-2", "ob-4", "ob-5"]))
        .await
        .unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert!(store.outbox(10).await.unwrap().is_empty());

    // An id appended twice (a retried transition) is acked as a whole.
    let dup = event("ob-dup", 6);
    let other = event("ob-7", 7);
    must_commit(
        store,
        Commit {
            outbox: vec![dup.clone(), other.clone()],
            ..Commit::default()
        },
        "append dup",
    )
    .await;
    must_commit(
        store,
        Commit {
            outbox: vec![dup.clone()],
            ..Commit::default()
        },
        "append dup again",
    )
    .await;
    assert_eq!(
        store.outbox(10).await.unwrap(),
        vec![dup.clone(), other.clone(), dup]
    );
    store.ack_outbox(&strings(&["ob-dup"])).await.unwrap();
    assert_eq!(store.outbox(10).await.unwrap(), vec![other]);
    store.ack_outbox(&strings(&["ob-7"])).await.unwrap();
    assert_eq!(store.outbox_len().await.unwrap(), 0);
}

pub async fn seen_event_detects_duplicates(store: &dyn StateStore) {
    drain_queues(store).await;
    let first = Commit {
        writes: vec![create(
            Kind::Lease,
            "seen-rec-1",
            "s1",
            IndexValues::default(),
        )],
        seen_event: Some(("msg-1".to_string(), Duration::from_secs(3600))),
        ..Commit::default()
    };
    must_commit(store, first, "first delivery").await;
    let second = Commit {
        writes: vec![create(
            Kind::Lease,
            "seen-rec-2",
            "s2",
            IndexValues::default(),
        )],
        outbox: vec![event("seen-event", 1)],
        arm_timers: vec![timer("seen-timer", 1, "x")],
        seen_event: Some(("msg-1".to_string(), Duration::from_secs(3600))),
        ..Commit::default()
    };
    assert_eq!(
        store.commit(second).await,
        Err(StoreError::Duplicate("msg-1".to_string()))
    );
    assert_eq!(load(store, Kind::Lease, "seen-rec-2").await, None);
    assert_eq!(store.outbox_len().await.unwrap(), 0);
    assert_eq!(store.timer_count().await.unwrap(), 0);

    // Another key is independent.
    must_commit(
        store,
        Commit {
            seen_event: Some(("msg-2".to_string(), Duration::from_secs(3600))),
            ..Commit::default()
        },
        "other key",
    )
    .await;

    // A key is forgotten once its TTL passes.
    let short = || Commit {
        seen_event: Some(("msg-short".to_string(), Duration::from_millis(50))),
        ..Commit::default()
    };
    must_commit(store, short(), "short ttl").await;
    assert_eq!(
        store.commit(short()).await,
        Err(StoreError::Duplicate("msg-short".to_string()))
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    must_commit(store, short(), "after ttl").await;

    // An absurd TTL is clamped, not an error, and still detects the duplicate.
    let forever = || Commit {
        seen_event: Some(("msg-forever".to_string(), Duration::MAX)),
        ..Commit::default()
    };
    must_commit(store, forever(), "huge ttl").await;
    assert_eq!(
        store.commit(forever()).await,
        Err(StoreError::Duplicate("msg-forever".to_string()))
    );
}

/// Versions are checked before timers, and timers before the duplicate key.
pub async fn checks_run_in_contract_order(store: &dyn StateStore) {
    drain_queues(store).await;
    must_commit(
        store,
        Commit {
            writes: vec![create(Kind::Lease, "order-1", "o", IndexValues::default())],
            seen_event: Some(("order-seen".to_string(), Duration::from_secs(3600))),
            ..Commit::default()
        },
        "setup",
    )
    .await;
    let everything_wrong = Commit {
        writes: vec![create(Kind::Lease, "order-1", "o2", IndexValues::default())],
        consume_timers: vec!["order-missing-timer".to_string()],
        seen_event: Some(("order-seen".to_string(), Duration::from_secs(3600))),
        ..Commit::default()
    };
    assert!(matches!(
        store.commit(everything_wrong.clone()).await,
        Err(StoreError::Conflict { .. })
    ));
    let timer_and_seen = Commit {
        writes: vec![],
        ..everything_wrong
    };
    assert_eq!(
        store.commit(timer_and_seen).await,
        Err(StoreError::TimerGone("order-missing-timer".to_string()))
    );
}

pub async fn concurrent_creates_have_one_winner(store: &dyn StateStore) {
    let attempts = (0..20).map(|n| {
        store.commit(writes(vec![create(
            Kind::Lease,
            "race-1",
            &format!("{{\"writer\":{n}}}"),
            idx(Some("Race"), None),
        )]))
    });
    let results = futures::future::join_all(attempts).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(wins, 1, "exactly one concurrent create wins: {results:?}");
    for result in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(
                result,
                Err(StoreError::Conflict {
                    expected: 0,
                    found: 1,
                    ..
                })
            ),
            "losers see a conflict: {result:?}"
        );
    }
    assert_eq!(load(store, Kind::Lease, "race-1").await.unwrap().version, 1);
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "Race")).await,
        strings(&["race-1"])
    );
}

/// 200 commits at once: unique creates (all win), CAS updates on 5 shared records, consumers of 5
/// shared timers and holders of 5 shared duplicate keys (one winner each). Every commit gets its
/// own answer, a losing commit applies none of its parts, and the final state is the winners'.
pub async fn concurrent_mixed_commits_each_get_their_own_result(store: &dyn StateStore) {
    const TASKS: usize = 200;
    const SHARED: usize = 5;
    drain_queues(store).await;
    let shared_id = |n: usize| format!("burst-s-{}", n % SHARED);
    let timer_id = |n: usize| format!("burst-t-{}", n % SHARED);
    let seen_key = |n: usize| format!("burst-seen-{}", n % SHARED);
    let mut setup = Commit::default();
    for n in 0..SHARED {
        setup.writes.push(create(
            Kind::Lease,
            &shared_id(n),
            "initial",
            idx(Some("BurstS1"), None),
        ));
        setup
            .arm_timers
            .push(timer(&timer_id(n), 10_000 + n as i64, "tb"));
    }
    must_commit(store, setup, "burst setup").await;

    let commit_for = |n: usize| match n % 4 {
        0 => Commit {
            writes: vec![create(
                Kind::Lease,
                &format!("burst-u-{n:03}"),
                "unique",
                idx(Some("BurstU"), None),
            )],
            outbox: vec![event(&format!("burst-ev-{n:03}"), n as u64)],
            ..Commit::default()
        },
        1 => writes(vec![update(
            Kind::Lease,
            &shared_id(n),
            1,
            &format!("{{\"writer\":{n}}}"),
            idx(Some("BurstS2"), None),
            idx(Some("BurstS1"), None),
        )]),
        2 => Commit {
            writes: vec![create(
                Kind::Lease,
                &format!("burst-c-{n:03}"),
                "consumer",
                idx(Some("BurstC"), None),
            )],
            consume_timers: vec![timer_id(n)],
            ..Commit::default()
        },
        _ => Commit {
            writes: vec![create(
                Kind::Lease,
                &format!("burst-d-{n:03}"),
                "dedup",
                idx(Some("BurstD"), None),
            )],
            outbox: vec![event(&format!("burst-ev-{n:03}"), n as u64)],
            seen_event: Some((seen_key(n), Duration::from_secs(3600))),
            ..Commit::default()
        },
    };
    let results = futures::future::join_all((0..TASKS).map(|n| store.commit(commit_for(n)))).await;

    // Each answer is its own; one winner per shared record, timer and key.
    let mut winners: std::collections::BTreeMap<(usize, usize), usize> = Default::default();
    for (n, result) in results.iter().enumerate() {
        let (group, slot) = (n % 4, n % SHARED);
        match (group, result) {
            (0, Ok(())) => continue,
            (_, Ok(())) => {
                if let Some(other) = winners.insert((group, slot), n) {
                    panic!("burst: commits {other} and {n} both won ({group}, {slot})");
                }
            }
            (
                1,
                Err(StoreError::Conflict {
                    kind,
                    id,
                    expected: 1,
                    found: 2,
                }),
            ) if *kind == "lease" && *id == shared_id(n) => {}
            (2, Err(StoreError::TimerGone(id))) if *id == timer_id(n) => {}
            (3, Err(StoreError::Duplicate(key))) if *key == seen_key(n) => {}
            (_, other) => panic!("burst: commit {n} got {other:?}"),
        }
    }
    assert_eq!(
        winners.len(),
        3 * SHARED,
        "burst: one winner per shared record, timer and key: {winners:?}"
    );

    // The final state is exactly the winners' writes.
    for slot in 0..SHARED {
        let winner = winners[&(1, slot)];
        let record = load(store, Kind::Lease, &shared_id(slot)).await.unwrap();
        assert_eq!(
            (record.version, record.body),
            (2, format!("{{\"writer\":{winner}}}")),
            "burst: shared record {slot}"
        );
    }
    let expect_ids = |prefix: &str, keep: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..TASKS)
            .filter(|n| keep(*n))
            .map(|n| format!("{prefix}-{n:03}"))
            .collect()
    };
    let won = |group: usize, n: usize| winners.get(&(group, n % SHARED)) == Some(&n);
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "BurstS2")).await,
        (0..SHARED).map(shared_id).collect::<Vec<_>>(),
        "burst: every shared record moved"
    );
    assert!(ids(store, IndexQuery::by_status(Kind::Lease, "BurstS1"))
        .await
        .is_empty());
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "BurstU")).await,
        expect_ids("burst-u", &|n| n % 4 == 0)
    );
    let consumers = expect_ids("burst-c", &|n| n % 4 == 2 && won(2, n));
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "BurstC")).await,
        consumers,
        "burst: only the timer consumers that won wrote anything"
    );
    let deduped = expect_ids("burst-d", &|n| n % 4 == 3 && won(3, n));
    assert_eq!(
        ids(store, IndexQuery::by_status(Kind::Lease, "BurstD")).await,
        deduped,
        "burst: only the duplicate-key holders that won wrote anything"
    );
    for n in (0..TASKS).filter(|n| n % 4 == 2 || n % 4 == 3) {
        let prefix = if n % 4 == 2 { "burst-c" } else { "burst-d" };
        let id = format!("{prefix}-{n:03}");
        let present = load(store, Kind::Lease, &id).await.is_some();
        assert_eq!(present, won(n % 4, n), "burst: record {id}");
    }
    assert_eq!(
        store.timer_count().await.expect("timer_count"),
        0,
        "burst: every shared timer consumed once"
    );
    let mut published: Vec<String> = store
        .outbox(1000)
        .await
        .expect("outbox")
        .into_iter()
        .map(|e| e.id)
        .collect();
    published.sort();
    assert_eq!(
        published,
        expect_ids("burst-ev", &|n| n % 4 == 0 || (n % 4 == 3 && won(3, n))),
        "burst: the outbox holds the winners' events only"
    );
    drain_queues(store).await;
}
