//! `sandboxd demo`: a scripted walk-through on an accelerated clock.
//!
//! Everything runs in this process: the in-memory store, the simulated AWS (cleanup runs of a
//! few virtual minutes, simulated spend) and the engine with all its actors. The clock runs
//! 1200 times faster than the wall clock (1 s real = 20 min virtual), so the whole lifecycle of
//! a pool and its leases takes a few real seconds. Every published event is printed as one
//! timeline line at its virtual time since the start; narration lines (`#`) say what the script
//! does next. Any state that is not reached within a bounded wait ends the demo with an error.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use anyhow::{anyhow, bail};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sandboxd_actors::approver::RequestLease;
use sandboxd_actors::domain::lease::Patch;
use sandboxd_actors::domain::template::TemplateInput;
use sandboxd_actors::domain::{
    Account, AccountStatus, Caller, EventRecord, GlobalConfig, Lease, LeasePatch, LeaseStatus, Role,
};
use sandboxd_actors::engine::{Deps, EngineSettings};
use sandboxd_actors::ports::{AcceleratedClock, Clock, EventBus, IndexQuery, Kind};
use sandboxd_actors::testkit::sim::{SimCleanupRunner, SimCostSource, SimDirectory};
use sandboxd_actors::testkit::MemoryStore;
use sandboxd_actors::Engine;
use serde_json::Value;

/// 1 s real = 20 min virtual.
const CLOCK_FACTOR: f64 = 1200.0;
/// One simulated aws-nuke run, in virtual time.
const CLEANUP_RUN_MINUTES: i64 = 5;
const POOL_SIZE: usize = 3;
/// The longest real time any one step may take before the demo gives up.
const STEP_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// The whole demo, in real time.
const DEMO_TIMEOUT: StdDuration = StdDuration::from_secs(60);
const POLL: StdDuration = StdDuration::from_millis(5);

pub fn run() -> anyhow::Result<()> {
    crate::telemetry::init_logging(&crate::config::LogSettings {
        format: "text".into(),
        filter: "warn".into(),
    });
    let system = actix_rt::System::new();
    let outcome = system.block_on(async {
        match tokio::time::timeout(DEMO_TIMEOUT, script()).await {
            Ok(result) => result,
            Err(_) => Err(anyhow!(
                "the demo did not finish within {} s",
                DEMO_TIMEOUT.as_secs()
            )),
        }
    });
    // The engine has no stop: its actors live until the process ends. Dropping the runtime
    // under them makes actix poll actors outside the runtime (a panic at exit), so leave the
    // System to the process exit.
    std::mem::forget(system);
    outcome.map_err(|error| anyhow!("demo failed: {error:#}"))
}

/// `+HH:MM:SS` of virtual time since the start.
fn offset(start: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let seconds = (at - start).num_seconds().max(0);
    format!(
        "+{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds % 3600 / 60,
        seconds % 60
    )
}

fn short_uuid(uuid: &str) -> String {
    format!("{}…", uuid.chars().take(8).collect::<String>())
}

fn lease_label(lease: &Lease) -> String {
    format!("{}/{}", lease.user_email, short_uuid(&lease.uuid))
}

/// The event bus of the demo: prints every event once, as a timeline line.
struct TimelineBus {
    start: DateTime<Utc>,
    seen: Mutex<HashSet<String>>,
    counts: Mutex<BTreeMap<String, usize>>,
}

impl TimelineBus {
    fn new(start: DateTime<Utc>) -> Self {
        Self {
            start,
            seen: Mutex::new(HashSet::new()),
            counts: Mutex::new(BTreeMap::new()),
        }
    }

    fn line(&self, record: &EventRecord) -> String {
        let detail = &record.detail;
        let mut fields = Vec::new();
        if let Some(lease) = detail.get("leaseId") {
            let user = lease
                .get("userEmail")
                .and_then(Value::as_str)
                .unwrap_or("?");
            let uuid = lease.get("uuid").and_then(Value::as_str).unwrap_or("?");
            fields.push(format!("lease={user}/{}", short_uuid(uuid)));
        }
        if let Some(account) = detail.get("accountId").and_then(Value::as_str) {
            fields.push(format!("account={account}"));
        }
        for key in ["approvedBy", "deniedBy"] {
            if let Some(who) = detail.get(key).and_then(Value::as_str) {
                fields.push(format!("{key}={who}"));
            }
        }
        if let Some(manual) = detail
            .get("requiresManualApproval")
            .and_then(Value::as_bool)
        {
            fields.push(format!("manualApproval={manual}"));
        }
        if let Some(runs) = detail
            .get("cleanupExecutionContext")
            .and_then(|context| context.get("runs"))
            .and_then(Value::as_array)
        {
            fields.push(format!("runs={}", runs.len()));
        }
        match detail.get("reason") {
            Some(Value::String(reason)) if reason.contains(char::is_whitespace) => {
                fields.push(format!("reason=\"{reason}\""))
            }
            Some(Value::String(reason)) => fields.push(format!("reason={reason}")),
            Some(Value::Object(reason)) => {
                if let Some(kind) = reason.get("type").and_then(Value::as_str) {
                    fields.push(format!("reason={kind}"));
                }
            }
            _ => {}
        }
        if let (Some(spend), Some(budget)) = (
            detail.get("totalSpend").and_then(Value::as_f64),
            detail.get("budget").and_then(Value::as_f64),
        ) {
            fields.push(format!("spend=${spend:.2}/${budget:.2}"));
        }
        format!(
            "{}    {:<24} {}",
            offset(self.start, record.time),
            record.detail_type,
            fields.join("  ")
        )
    }

    fn count(&self, detail_type: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(detail_type)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl EventBus for TimelineBus {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for record in events {
            // A periodic drain and a flush may hand over the same entry: print it once.
            if seen.insert(record.id.clone()) {
                *counts.entry(record.detail_type.clone()).or_default() += 1;
                println!("{}", self.line(record));
            }
        }
        events.iter().map(|_| Ok(())).collect()
    }
}

struct Demo {
    engine: Engine,
    clock: Arc<dyn Clock>,
    bus: Arc<TimelineBus>,
    start: DateTime<Utc>,
}

impl Demo {
    fn now(&self) -> String {
        offset(self.start, self.clock.now())
    }

    /// A narration line, after every event committed so far has been printed.
    async fn say(&self, text: &str) -> anyhow::Result<()> {
        self.engine
            .flush_outbox()
            .await
            .map_err(|error| anyhow!("flushing the outbox: {error}"))?;
        println!("{}  # {text}", self.now());
        Ok(())
    }

    /// Let some virtual time pass (real time / 1200).
    async fn pause(&self, virtual_minutes: i64) {
        tokio::time::sleep(self.clock.real_duration(Duration::minutes(virtual_minutes))).await;
    }

    async fn lease(&self, uuid: &str) -> anyhow::Result<Lease> {
        self.engine
            .get_lease(uuid)
            .await?
            .ok_or_else(|| anyhow!("lease {uuid} is not in the store"))
    }

    async fn account(&self, id: &str) -> anyhow::Result<Account> {
        self.engine
            .get_account(id)
            .await?
            .ok_or_else(|| anyhow!("account {id} is not in the store"))
    }

    async fn wait_lease(&self, uuid: &str, status: LeaseStatus) -> anyhow::Result<Lease> {
        let started = Instant::now();
        loop {
            let lease = self.lease(uuid).await?;
            if lease.status == status {
                return Ok(lease);
            }
            if started.elapsed() > STEP_TIMEOUT {
                bail!(
                    "lease {} did not reach {status} within {} s real (it is {})",
                    lease_label(&lease),
                    STEP_TIMEOUT.as_secs(),
                    lease.status
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn wait_account(&self, id: &str, status: AccountStatus) -> anyhow::Result<Account> {
        self.wait_account_in(id, &[status]).await
    }

    async fn wait_account_in(
        &self,
        id: &str,
        statuses: &[AccountStatus],
    ) -> anyhow::Result<Account> {
        let started = Instant::now();
        loop {
            let account = self.account(id).await?;
            if statuses.contains(&account.status) {
                return Ok(account);
            }
            if started.elapsed() > STEP_TIMEOUT {
                let wanted: Vec<&str> = statuses.iter().map(|status| status.as_str()).collect();
                bail!(
                    "account {id} did not reach {} within {} s real (it is {})",
                    wanted.join(" or "),
                    STEP_TIMEOUT.as_secs(),
                    account.status
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Wait until every account is Available, narrating each cleanup run as it is seen.
    async fn wait_cleaned(&self, ids: &[String]) -> anyhow::Result<()> {
        let started = Instant::now();
        // Per account: runs seen started, successes seen.
        let mut seen: BTreeMap<String, (usize, u32)> = BTreeMap::new();
        loop {
            let mut done = 0;
            for id in ids {
                let account = self.account(id).await?;
                match account.status {
                    AccountStatus::Available => done += 1,
                    AccountStatus::Quarantine => bail!(
                        "account {id} was quarantined: {}",
                        account.quarantine_reason.unwrap_or_default()
                    ),
                    _ => {}
                }
                let Some(context) = &account.cleanup_execution_context else {
                    continue;
                };
                let entry = seen.entry(id.clone()).or_default();
                if context.successes > entry.1 {
                    entry.1 = context.successes;
                    self.say(&format!(
                        "account {id}: cleanup run #{} succeeded; another run follows (2 consecutive successes are needed)",
                        context.successes
                    ))
                    .await?;
                }
                while context.runs.len() > entry.0 {
                    entry.0 += 1;
                    self.say(&format!(
                        "account {id}: cleanup run #{} started (simulated aws-nuke, ~{CLEANUP_RUN_MINUTES} min)",
                        entry.0
                    ))
                    .await?;
                }
            }
            if done == ids.len() {
                return Ok(());
            }
            if started.elapsed() > STEP_TIMEOUT {
                bail!(
                    "{} of {} accounts were not Available within {} s real",
                    ids.len() - done,
                    ids.len(),
                    STEP_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn demo_config() -> GlobalConfig {
    GlobalConfig {
        maintenance_mode: false,
        ..GlobalConfig::default()
    }
}

async fn script() -> anyhow::Result<()> {
    let real_start = Instant::now();
    let accelerated = AcceleratedClock::new(CLOCK_FACTOR);
    let clock: Arc<dyn Clock> = Arc::new(accelerated);
    let start = clock.now();
    let bus = Arc::new(TimelineBus::new(start));
    let config = demo_config();
    let settings = EngineSettings {
        arbiters: 2,
        timer_tick: StdDuration::from_millis(10),
        outbox_tick: StdDuration::from_millis(10),
        spend_sweep_interval: Duration::hours(1),
        cleanup_poll_interval: Duration::seconds(15),
        ..EngineSettings::default()
    };
    let deps = Deps {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        config: Arc::new(config.clone()),
        bus: bus.clone(),
        runner: Arc::new(SimCleanupRunner::new(
            clock.clone(),
            Duration::minutes(CLEANUP_RUN_MINUTES),
            0.0,
        )),
        costs: Arc::new(SimCostSource {
            dollars_per_hour: 0.5,
        }),
        settings,
    };
    let engine = Engine::start(deps)
        .await
        .map_err(|error| anyhow!("starting the engine: {error}"))?;
    let demo = Demo {
        engine,
        clock,
        bus,
        start,
    };
    let engine = &demo.engine;

    println!(
        "sandboxd demo: accelerated clock (x{CLOCK_FACTOR}: 1 s real = 20 min virtual), in-memory store, simulated AWS"
    );
    println!(
        "cleanup: {} consecutive successful runs of ~{CLEANUP_RUN_MINUTES} virtual min each; at most {} leases per user",
        config.cleanup.number_of_successful_attempts_to_finish_cleanup,
        config.leases.max_leases_per_user
    );
    println!("virtual time  event (or # narration)");

    let admin = Caller::new("admin@example.gov.uk", vec![Role::Admin]);
    let manager = Caller::new("manager@example.gov.uk", vec![Role::Manager]);
    let alice = Caller::new("alice@example.gov.uk", vec![Role::User]);
    let bob = Caller::new("bob@example.gov.uk", vec![Role::User]);
    let carol = Caller::new("carol@example.gov.uk", vec![Role::User]);

    // 1. The pool.
    demo.say(&format!(
        "admin registers {POOL_SIZE} accounts from the Entry OU; each is cleaned before it is Available"
    ))
    .await?;
    let directory = SimDirectory::with_accounts(POOL_SIZE);
    let mut pool = Vec::new();
    for entry in &directory.accounts {
        engine
            .register_account(
                &entry.aws_account_id,
                entry.name.clone(),
                entry.email.clone(),
                &admin,
            )
            .await
            .map_err(|error| anyhow!("registering {}: {error}", entry.aws_account_id))?;
        pool.push(entry.aws_account_id.clone());
    }
    demo.wait_cleaned(&pool).await?;
    demo.say(&format!("all {POOL_SIZE} accounts are Available"))
        .await?;
    demo.pause(5).await;

    // 2. Templates.
    let standard = engine
        .create_template(
            TemplateInput {
                name: "Standard sandbox".into(),
                description: Some("Auto-approved, $50, 24 hours".into()),
                requires_approval: false,
                max_spend: Some(50.0),
                lease_duration_in_hours: Some(24.0),
                ..TemplateInput::default()
            },
            &admin,
        )
        .await
        .map_err(|error| anyhow!("creating the Standard template: {error}"))?;
    demo.say(&format!(
        "admin creates template \"{}\" (auto-approved, maxSpend $50, 24 h)",
        standard.name
    ))
    .await?;
    let review = engine
        .create_template(
            TemplateInput {
                name: "Reviewed sandbox".into(),
                description: Some("A manager approves each request".into()),
                requires_approval: true,
                max_spend: Some(50.0),
                lease_duration_in_hours: Some(72.0),
                ..TemplateInput::default()
            },
            &admin,
        )
        .await
        .map_err(|error| anyhow!("creating the Reviewed template: {error}"))?;
    demo.say(&format!(
        "admin creates template \"{}\" (requiresApproval, maxSpend $50, 72 h)",
        review.name
    ))
    .await?;
    demo.pause(5).await;

    // 3. alice: auto-approved.
    demo.say("alice requests a Standard sandbox").await?;
    let alice_lease = engine
        .request_lease(request(&standard.uuid, &alice))
        .await
        .map_err(|error| anyhow!("alice's request: {error}"))?;
    if alice_lease.status != LeaseStatus::Active {
        bail!(
            "alice's lease should be Active at once (auto-approved), it is {}",
            alice_lease.status
        );
    }
    let alice_account = alice_lease
        .aws_account_id
        .clone()
        .ok_or_else(|| anyhow!("alice's Active lease has no account"))?;
    demo.say(&format!(
        "alice's lease {} is Active on account {alice_account} (auto-approved)",
        lease_label(&alice_lease)
    ))
    .await?;
    demo.pause(5).await;

    // 4. bob: reviewed, approved by a manager.
    demo.say("bob requests a Reviewed sandbox").await?;
    let bob_lease = engine
        .request_lease(request(&review.uuid, &bob))
        .await
        .map_err(|error| anyhow!("bob's request: {error}"))?;
    if bob_lease.status != LeaseStatus::PendingApproval {
        bail!(
            "bob's lease should be PendingApproval, it is {}",
            bob_lease.status
        );
    }
    demo.say(&format!(
        "bob's lease {} is PendingApproval; a manager reviews it",
        lease_label(&bob_lease)
    ))
    .await?;
    demo.pause(10).await;
    let bob_lease = engine
        .review(&bob_lease.uuid, true, &manager)
        .await
        .map_err(|error| anyhow!("approving bob's lease: {error}"))?;
    let bob_account = bob_lease
        .aws_account_id
        .clone()
        .ok_or_else(|| anyhow!("bob's approved lease has no account"))?;
    demo.say(&format!(
        "manager approved bob's lease: Active on account {bob_account}"
    ))
    .await?;
    demo.pause(5).await;

    // 5. carol: reviewed, denied.
    demo.say("carol requests a Reviewed sandbox").await?;
    let carol_lease = engine
        .request_lease(request(&review.uuid, &carol))
        .await
        .map_err(|error| anyhow!("carol's request: {error}"))?;
    demo.pause(10).await;
    let carol_lease = engine
        .review(&carol_lease.uuid, false, &manager)
        .await
        .map_err(|error| anyhow!("denying carol's lease: {error}"))?;
    if carol_lease.status != LeaseStatus::ApprovalDenied {
        bail!(
            "carol's lease should be ApprovalDenied, it is {}",
            carol_lease.status
        );
    }
    demo.say(&format!(
        "manager denied carol's lease {}: ApprovalDenied, no account used",
        lease_label(&carol_lease)
    ))
    .await?;
    demo.pause(5).await;

    // 6. Freeze and unfreeze alice.
    demo.say("manager freezes alice's lease").await?;
    engine
        .freeze(
            &alice_lease.uuid,
            &manager,
            "unexpected spend pattern, investigating",
        )
        .await
        .map_err(|error| anyhow!("freezing alice's lease: {error}"))?;
    demo.wait_account(&alice_account, AccountStatus::Frozen)
        .await?;
    demo.say(&format!(
        "alice's lease is Frozen and account {alice_account} followed it to Frozen"
    ))
    .await?;
    demo.pause(30).await;
    demo.say("manager unfreezes alice's lease").await?;
    engine
        .unfreeze(&alice_lease.uuid, &manager, "all clear")
        .await
        .map_err(|error| anyhow!("unfreezing alice's lease: {error}"))?;
    demo.wait_account(&alice_account, AccountStatus::Active)
        .await?;
    demo.say(&format!(
        "alice's lease is Active again and so is account {alice_account}"
    ))
    .await?;
    demo.pause(5).await;

    // 7. Terminate bob: his account is cleaned and returns to the pool.
    demo.say("manager terminates bob's lease").await?;
    engine
        .terminate(&bob_lease.uuid, &manager)
        .await
        .map_err(|error| anyhow!("terminating bob's lease: {error}"))?;
    demo.wait_lease(&bob_lease.uuid, LeaseStatus::ManuallyTerminated)
        .await?;
    // The account follows through a durable intent; its cleanup may even be over already.
    demo.wait_account_in(
        &bob_account,
        &[AccountStatus::CleanUp, AccountStatus::Available],
    )
    .await?;
    demo.say(&format!(
        "bob's lease is ManuallyTerminated; account {bob_account} is in CleanUp"
    ))
    .await?;
    demo.wait_cleaned(std::slice::from_ref(&bob_account))
        .await?;
    demo.say(&format!("account {bob_account} is Available again"))
        .await?;
    demo.pause(5).await;

    // 8. alice's lease runs to its (moved) expiry.
    let expires = demo.clock.now() + Duration::hours(1);
    engine
        .patch_lease(
            &alice_lease.uuid,
            LeasePatch {
                expiration_date: Patch::Set(expires),
                ..LeasePatch::default()
            },
            &manager,
        )
        .await
        .map_err(|error| anyhow!("moving alice's expiry: {error}"))?;
    demo.say(&format!(
        "manager moves alice's expirationDate to {} (now + 1 h); waiting for it to pass",
        offset(start, expires)
    ))
    .await?;
    let alice_final = demo
        .wait_lease(&alice_lease.uuid, LeaseStatus::Expired)
        .await?;
    demo.say(&format!(
        "alice's lease Expired; account {alice_account} goes to CleanUp"
    ))
    .await?;
    demo.wait_cleaned(std::slice::from_ref(&alice_account))
        .await?;
    demo.say(&format!("account {alice_account} is Available again"))
        .await?;

    // 9. The end state.
    engine.flush_outbox().await?;
    // Let any last drain finish printing before the summary.
    tokio::time::sleep(StdDuration::from_millis(30)).await;
    println!();
    println!("final pool:");
    let mut available = 0;
    for status in AccountStatus::ALL {
        let ids = engine
            .ids(IndexQuery::by_status(Kind::Account, status.as_str()))
            .await?;
        if ids.is_empty() {
            continue;
        }
        if status == AccountStatus::Available {
            available = ids.len();
        }
        println!(
            "  {:<12} {}  {}",
            status.as_str(),
            ids.len(),
            ids.join(", ")
        );
    }
    println!();
    println!("lease histories (from -> to, when, by, why):");
    for (who, uuid) in [
        ("alice", &alice_final.uuid),
        ("bob", &bob_lease.uuid),
        ("carol", &carol_lease.uuid),
    ] {
        let lease = demo.lease(uuid).await?;
        println!(
            "  {who}: {} on \"{}\": {}{}{}",
            lease_label(&lease),
            lease.original_lease_template_name,
            lease.status,
            lease
                .aws_account_id
                .as_ref()
                .map(|account| format!(", account {account}"))
                .unwrap_or_default(),
            if lease.total_cost_accrued > 0.0 {
                format!(", spend ${:.2}", lease.total_cost_accrued)
            } else {
                String::new()
            }
        );
        for entry in &lease.history {
            println!(
                "    {}  {:<15} -> {:<18} by {:<24} {}",
                offset(start, entry.at),
                entry.from.as_deref().unwrap_or("(new)"),
                entry.to,
                entry.by,
                entry.reason
            );
        }
    }

    // 10. Checks: the demo fails loudly rather than print a wrong story.
    let expected = [
        ("alice", &alice_final.uuid, LeaseStatus::Expired),
        ("bob", &bob_lease.uuid, LeaseStatus::ManuallyTerminated),
        ("carol", &carol_lease.uuid, LeaseStatus::ApprovalDenied),
    ];
    for (who, uuid, status) in expected {
        let lease = demo.lease(uuid).await?;
        if lease.status != status {
            bail!("{who}'s lease ended {}, expected {status}", lease.status);
        }
    }
    if available != POOL_SIZE {
        bail!("{available} of {POOL_SIZE} accounts are Available at the end");
    }
    for detail_type in [
        "LeaseRequested",
        "LeaseApproved",
        "LeaseDenied",
        "LeaseFrozen",
        "LeaseUnfrozen",
        "LeaseTerminated",
        "LeaseExpired",
        "CleanAccountRequest",
        "AccountCleanupSucceeded",
    ] {
        if demo.bus.count(detail_type) == 0 {
            bail!("no {detail_type} event was published");
        }
    }
    println!();
    println!(
        "demo complete: {} virtual in {:.1} s real",
        offset(start, demo.clock.now()).trim_start_matches('+'),
        real_start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn request(template_uuid: &str, caller: &Caller) -> RequestLease {
    RequestLease {
        template_uuid: template_uuid.to_string(),
        caller: caller.clone(),
        user_email: None,
        comments: None,
    }
}
