//! Kill -9 in the middle of a burst of lease requests, restart on the same store: no accepted
//! request is lost and no account is bound to two leases. Runs against Redis and the embedded
//! store, with the real binary over real HTTP.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::{token, write_config, Api, Daemon};

const ACCOUNTS: usize = 12;
const REQUESTS: usize = 240;

fn user_token(email: &str) -> String {
    let auth = sandboxd::http::auth::Auth::new(support::SECRET.as_bytes().to_vec(), 60);
    auth.issue(email, &[sandboxd_actors::domain::Role::User])
}

async fn burst_then_kill_then_check(store: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (config, base) = write_config(dir.path(), store, prefix, ACCOUNTS, "");
    let mut daemon = Daemon::new(config.clone(), base.clone());
    daemon.start().await;
    let admin = Api::new(&base, token(&config, "admin@example.gov.uk", "Admin"));
    admin.wait_available(ACCOUNTS).await;
    let (status, auto) = admin
        .post(
            "/leaseTemplates",
            json!({"name": "Auto", "maxSpend": 50, "leaseDurationInHours": 24}),
        )
        .await;
    assert_eq!(status, 201, "{auto}");
    let (status, review) = admin
        .post(
            "/leaseTemplates",
            json!({"name": "Review", "maxSpend": 50, "leaseDurationInHours": 24, "requiresApproval": true}),
        )
        .await;
    assert_eq!(status, 201, "{review}");
    let auto_uuid = auto["data"]["uuid"].as_str().unwrap().to_string();
    let review_uuid = review["data"]["uuid"].as_str().unwrap().to_string();

    // The burst: more requests than accounts, half on each template, each from its own user.
    let answered = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for index in 0..REQUESTS {
        let user = Api::new(&base, user_token(&format!("user{index}@example.gov.uk")));
        let template = if index % 2 == 0 {
            auto_uuid.clone()
        } else {
            review_uuid.clone()
        };
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            let result = user
                .call(
                    reqwest::Method::POST,
                    "/leases",
                    Some(json!({"leaseTemplateUuid": template})),
                )
                .await;
            if matches!(result, Ok((201, _))) {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            result.ok()
        }));
    }
    // Kill once part of the burst has been accepted: the rest is in flight or not yet sent.
    while answered.load(Ordering::SeqCst) < 20 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    daemon.kill();
    let mut accepted: Vec<Value> = Vec::new();
    let mut unanswered = 0;
    for task in tasks {
        match task.await.unwrap() {
            Some((201, body)) => accepted.push(body["data"].clone()),
            Some(_) => {}
            None => unanswered += 1,
        }
    }
    eprintln!(
        "{store}: {} of {REQUESTS} requests accepted, {unanswered} cut off by SIGKILL",
        accepted.len()
    );
    assert!(
        !accepted.is_empty(),
        "some requests were accepted before the kill"
    );
    assert!(
        unanswered > 0,
        "the kill landed after the whole burst; it proves nothing"
    );

    daemon.start().await;
    // Every accepted lease is there, in the state it was accepted in (or later).
    for lease in &accepted {
        let id = lease["leaseId"].as_str().expect("leaseId in the answer");
        let (status, body) = admin
            .get(&format!("/leases/{}", support::urlencode(id)))
            .await;
        assert_eq!(
            status, 200,
            "accepted lease {id} lost after SIGKILL: {body}"
        );
        let before = lease["status"].as_str().unwrap();
        let after = body["data"]["status"].as_str().unwrap();
        assert_eq!(before, after, "lease {id} changed state across the restart");
    }
    // No account bound to two live leases; every Active lease's account is bound to it.
    let leases = admin.list_all("/leases").await;
    let accounts: HashMap<String, Value> = admin
        .list_all("/accounts")
        .await
        .into_iter()
        .map(|account| {
            (
                account["awsAccountId"].as_str().unwrap().to_string(),
                account,
            )
        })
        .collect();
    let mut bound = HashSet::new();
    for lease in leases
        .iter()
        .filter(|lease| matches!(lease["status"].as_str(), Some("Active" | "Frozen")))
    {
        let account_id = lease["awsAccountId"].as_str().unwrap().to_string();
        assert!(
            bound.insert(account_id.clone()),
            "account {account_id} is bound to two live leases"
        );
        let account = &accounts[&account_id];
        assert_eq!(
            account["leaseUuid"], lease["uuid"],
            "account {account_id} does not name its lease"
        );
        assert_eq!(account["status"], "Active");
    }
    for (id, account) in &accounts {
        if account["status"] == "Active" {
            assert!(
                bound.contains(id),
                "account {id} is Active with no live lease"
            );
        }
    }
    // The daemon still works after the restart: the pool serves new requests.
    let available = accounts
        .values()
        .filter(|account| account["status"] == "Available")
        .count();
    if available > 0 {
        let late = Api::new(&base, user_token("late@example.gov.uk"));
        let (status, body) = late
            .post("/leases", json!({"leaseTemplateUuid": auto_uuid.clone()}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Kill again in the middle of the cleanups: every terminated lease's account is cleaned
    // and back in the pool after the restart.
    let live: Vec<Value> = admin.list_all("/leases?status=Active").await;
    assert!(!live.is_empty());
    for lease in &live {
        let id = support::urlencode(lease["leaseId"].as_str().unwrap());
        let (status, body) = admin
            .post(&format!("/leases/{id}/terminate"), json!({}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    daemon.kill();
    daemon.start().await;
    admin.wait_available(ACCOUNTS).await;
    for lease in &live {
        let id = support::urlencode(lease["leaseId"].as_str().unwrap());
        let (_, body) = admin.get(&format!("/leases/{id}")).await;
        assert_eq!(body["data"]["status"], "ManuallyTerminated");
    }
    // A graceful stop exits 0.
    assert!(daemon.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_on_redis() {
    let prefix = format!("sandboxd-test-crash-{}", uuid::Uuid::new_v4().simple());
    burst_then_kill_then_check("redis", &prefix).await;
    let store = sandboxd::store::redis::RedisStore::connect(&support::redis_url(), &prefix)
        .await
        .unwrap();
    store.delete_prefix().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_burst_loses_nothing_on_the_embedded_store() {
    burst_then_kill_then_check("embedded", "unused").await;
}
