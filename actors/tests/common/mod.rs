//! Shared helpers for the engine-level scenario tests: an engine on the testkit fakes, callers,
//! templates, bounded waits, and the published events decoded back into typed events.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use chrono::{DateTime, Duration, TimeZone, Utc};
use sandboxd_actors::approver::RequestLease;
use sandboxd_actors::domain::template::TemplateInput;
use sandboxd_actors::domain::{
    Account, AccountStatus, Caller, Event, GlobalConfig, Lease, LeaseStatus, LeaseTemplate, Role,
};
use sandboxd_actors::engine::{Deps, EngineSettings};
use sandboxd_actors::ports::{CleanupRunner, Clock, CostSource, StateStore};
use sandboxd_actors::testkit::sim::{RecordingBus, ScriptedRunner, SimCostSource};
use sandboxd_actors::testkit::{ManualClock, MemoryStore};
use sandboxd_actors::{Engine, EngineError};

/// How long a test waits for the engine to get somewhere before it fails.
pub const WAIT: StdDuration = StdDuration::from_secs(5);
const POLL: StdDuration = StdDuration::from_millis(10);

pub const ACCOUNT_1: &str = "100000000001";
pub const ACCOUNT_2: &str = "100000000002";
pub const ACCOUNT_3: &str = "100000000003";

pub const ADA: &str = "ada@example.gov.uk";
pub const BOB: &str = "bob@example.gov.uk";
pub const MANAGER: &str = "manager@example.gov.uk";
pub const ADMIN: &str = "admin@example.gov.uk";

/// A fixed instant for pure-domain tests and manual clocks.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 3, 9, 0, 0).unwrap()
}

pub fn user(email: &str) -> Caller {
    Caller::new(email, vec![Role::User])
}

pub fn manager() -> Caller {
    Caller::new(MANAGER, vec![Role::Manager])
}

pub fn admin() -> Caller {
    Caller::new(ADMIN, vec![Role::Admin])
}

/// ISB's defaults, out of maintenance mode, with no waits between cleanup attempts.
pub fn fast_config() -> GlobalConfig {
    let mut config = GlobalConfig {
        maintenance_mode: false,
        ..GlobalConfig::default()
    };
    config.cleanup.wait_before_retry_failed_attempt_seconds = 0;
    config.cleanup.wait_before_rerun_successful_attempt_seconds = 0;
    config
}

/// Ticks of 10 ms, no spend sweeps, quick cleanup polls.
pub fn fast_settings() -> EngineSettings {
    EngineSettings {
        timer_tick: StdDuration::from_millis(10),
        outbox_tick: StdDuration::from_millis(10),
        spend_sweep_interval: Duration::zero(),
        cleanup_poll_interval: Duration::milliseconds(10),
        ..EngineSettings::default()
    }
}

/// 50 USD and 24 hours, the global maximum budget.
pub fn template_input(requires_approval: bool) -> TemplateInput {
    TemplateInput {
        name: if requires_approval {
            "Reviewed".into()
        } else {
            "Standard".into()
        },
        requires_approval,
        max_spend: Some(50.0),
        lease_duration_in_hours: Some(24.0),
        ..TemplateInput::default()
    }
}

/// What an engine is built from; change fields before `start`.
pub struct Setup {
    pub store: Arc<MemoryStore>,
    pub clock: Arc<dyn Clock>,
    pub bus: Arc<RecordingBus>,
    pub runner: Arc<dyn CleanupRunner>,
    pub costs: Arc<dyn CostSource>,
    pub config: GlobalConfig,
    pub settings: EngineSettings,
}

impl Setup {
    pub fn new(clock: Arc<dyn Clock>, runner: Arc<dyn CleanupRunner>) -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
            clock,
            bus: Arc::new(RecordingBus::default()),
            runner,
            costs: Arc::new(SimCostSource {
                dollars_per_hour: 0.0,
            }),
            config: fast_config(),
            settings: fast_settings(),
        }
    }

    pub async fn start(self) -> Harness {
        let store: Arc<dyn StateStore> = self.store.clone();
        let engine = Engine::start(Deps {
            store,
            clock: self.clock.clone(),
            config: Arc::new(self.config),
            bus: self.bus.clone(),
            runner: self.runner,
            costs: self.costs,
            settings: self.settings,
        })
        .await
        .expect("engine starts");
        Harness {
            engine,
            store: self.store,
            bus: self.bus,
            clock: self.clock,
        }
    }
}

/// The usual engine: manual clock at `t0`, scripted cleanup runner (unscripted runs succeed).
pub async fn manual_engine() -> (Harness, Arc<ManualClock>, Arc<ScriptedRunner>) {
    let clock = Arc::new(ManualClock::new(t0()));
    let runner = Arc::new(ScriptedRunner::default());
    let harness = Setup::new(clock.clone(), runner.clone()).start().await;
    (harness, clock, runner)
}

pub struct Harness {
    pub engine: Engine,
    pub store: Arc<MemoryStore>,
    pub bus: Arc<RecordingBus>,
    pub clock: Arc<dyn Clock>,
}

impl Harness {
    pub async fn account(&self, id: &str) -> Account {
        self.engine
            .get_account(id)
            .await
            .expect("store answers")
            .unwrap_or_else(|| panic!("account {id} is stored"))
    }

    pub async fn lease(&self, uuid: &str) -> Lease {
        self.engine
            .get_lease(uuid)
            .await
            .expect("store answers")
            .unwrap_or_else(|| panic!("lease {uuid} is stored"))
    }

    /// Poll the stored account until `done` holds; fail after `WAIT`.
    pub async fn wait_for_account(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&Account) -> bool,
    ) -> Account {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.engine.get_account(id).await.expect("store answers");
            if let Some(account) = seen.as_ref().filter(|account| done(account)) {
                return account.clone();
            }
            assert!(
                Instant::now() < deadline,
                "account {id}: timed out waiting for {what}; last seen {seen:#?}"
            );
            actix_rt::time::sleep(POLL).await;
        }
    }

    pub async fn wait_for_account_status(&self, id: &str, status: AccountStatus) -> Account {
        self.wait_for_account(id, status.as_str(), |account| account.status == status)
            .await
    }

    pub async fn wait_for_lease_status(&self, uuid: &str, status: LeaseStatus) -> Lease {
        let deadline = Instant::now() + WAIT;
        loop {
            let seen = self.engine.get_lease(uuid).await.expect("store answers");
            if let Some(lease) = seen.as_ref().filter(|lease| lease.status == status) {
                return lease.clone();
            }
            assert!(
                Instant::now() < deadline,
                "lease {uuid}: timed out waiting for {status}; last seen {seen:#?}"
            );
            actix_rt::time::sleep(POLL).await;
        }
    }

    /// Register an account and wait until its first cleanup made it Available.
    pub async fn register_available(&self, id: &str) -> Account {
        let registered = self
            .engine
            .register_account(id, Some(format!("pool-{id}")), None, &admin())
            .await
            .expect("registration is accepted");
        assert_eq!(registered.status, AccountStatus::CleanUp);
        self.wait_for_account_status(id, AccountStatus::Available)
            .await
    }

    pub async fn template(&self, requires_approval: bool) -> LeaseTemplate {
        self.engine
            .create_template(template_input(requires_approval), &manager())
            .await
            .expect("template is valid")
    }

    pub async fn request(
        &self,
        template: &LeaseTemplate,
        caller: &Caller,
    ) -> Result<Lease, EngineError> {
        self.engine
            .request_lease(RequestLease {
                template_uuid: template.uuid.clone(),
                caller: caller.clone(),
                user_email: None,
                comments: Some("for a spike".into()),
            })
            .await
    }

    pub async fn assign(
        &self,
        template: &LeaseTemplate,
        caller: &Caller,
        to: &str,
    ) -> Result<Lease, EngineError> {
        self.engine
            .request_lease(RequestLease {
                template_uuid: template.uuid.clone(),
                caller: caller.clone(),
                user_email: Some(to.to_string()),
                comments: None,
            })
            .await
    }

    /// Publish the outbox, then every event the bus has seen so far, in order, typed, and
    /// de-duplicated by entry id as a consumer would (the outbox publishes at least once).
    pub async fn events(&self) -> Vec<Event> {
        self.engine.flush_outbox().await.expect("outbox flushes");
        let mut seen = std::collections::HashSet::new();
        self.bus
            .events
            .lock()
            .unwrap()
            .iter()
            .filter(|record| seen.insert(record.id.clone()))
            .map(|record| {
                Event::decode(&record.detail_type, &record.detail)
                    .unwrap_or_else(|error| panic!("{record:?} decodes: {error}"))
            })
            .collect()
    }

    /// Wait until no timer is due (every intent and cleanup step was delivered) for a few
    /// consecutive looks.
    pub async fn settle(&self) {
        let deadline = Instant::now() + WAIT;
        let mut quiet_looks = 0;
        while quiet_looks < 5 {
            let now_ms = self.clock.now().timestamp_millis();
            let due = self.store.due_timers(now_ms, 10).await.expect("timers");
            quiet_looks = if due.is_empty() { quiet_looks + 1 } else { 0 };
            assert!(Instant::now() < deadline, "timers stay due: {due:#?}");
            actix_rt::time::sleep(POLL).await;
        }
    }
}

pub fn clean_requests(events: &[Event], account: &str) -> Vec<Event> {
    events
        .iter()
        .filter(|event| {
            matches!(event, Event::CleanAccountRequest { account_id, .. } if account_id == account)
        })
        .cloned()
        .collect()
}

pub fn count_of(events: &[Event], detail_type: &str) -> usize {
    events
        .iter()
        .filter(|event| event.detail_type() == detail_type)
        .count()
}

/// Run `make()` to completion in a System of its own on its own thread, then stop that System
/// (and every arbiter an engine started in it): a daemon process that runs and then exits.
pub fn run_in_own_system<F, T>(make: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let outcome = std::thread::spawn(move || {
        let system = actix_rt::System::new();
        let outcome = system.block_on(make());
        actix_rt::System::current().stop();
        system.run().expect("system stops");
        outcome
    })
    .join()
    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    // Let the stopped arbiters' threads wind down before anything else touches the store.
    std::thread::sleep(StdDuration::from_millis(100));
    outcome
}

// ---- pure-domain fixtures ----

pub mod domain {
    use chrono::{DateTime, Duration, Utc};
    use sandboxd_actors::domain::account::RunOutcome;
    use sandboxd_actors::domain::config::CleanupPolicy;
    use sandboxd_actors::domain::lease::LeaseRequest;
    use sandboxd_actors::domain::{Account, AccountStatus, Lease, LeaseTemplate};

    use super::{t0, template_input, MANAGER};

    pub fn template(requires_approval: bool) -> LeaseTemplate {
        template_input(requires_approval).into_template(
            format!("template-{requires_approval}"),
            MANAGER.into(),
            t0() - Duration::days(1),
        )
    }

    pub fn pending_lease(uuid: &str, user_email: &str, now: DateTime<Utc>) -> Lease {
        Lease::requested(
            LeaseRequest {
                uuid: uuid.into(),
                user_email: user_email.into(),
                comments: None,
                created_by: user_email.into(),
            },
            &template(true),
            now,
        )
        .expect("a valid request")
    }

    /// Registered, then cleaned by as many consecutive successful runs as the policy needs.
    pub fn available_account(id: &str, cleaned_at: DateTime<Utc>) -> Account {
        let policy = CleanupPolicy::default();
        let mut account = Account::register(id, None, None, "admin", cleaned_at)
            .expect("a valid account id")
            .state;
        for attempt in 0..policy.number_of_successful_attempts_to_finish_cleanup {
            let run_id = format!("{id}-run-{attempt}");
            account = account
                .begin_cleanup_run(&run_id, cleaned_at)
                .expect("no run in flight");
            account = account
                .finish_cleanup_run(&run_id, RunOutcome::Succeeded, "ok", &policy, cleaned_at)
                .expect("the run in flight")
                .state;
        }
        assert_eq!(account.status, AccountStatus::Available);
        account
    }

    /// A lease approved onto an account, both sides of the binding, as the pool writes them.
    pub fn active_pair(now: DateTime<Utc>) -> (Lease, Account) {
        let lease = pending_lease("lease-1", super::ADA, now);
        let account = available_account(super::ACCOUNT_1, now - Duration::hours(1));
        let lease = lease
            .approve(&account.aws_account_id, "AUTO_APPROVED", now)
            .expect("pending")
            .state;
        let account = account
            .allocate(&lease.uuid, lease.version, &lease.user_email, now)
            .expect("available");
        (lease, account)
    }
}
