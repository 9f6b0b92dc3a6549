//! `sandboxd bench`: throughput, latency, memory and rehydration figures.
//!
//! Lease requests go through the whole actor pipeline (Engine::request_lease -> approver ->
//! pool allocation -> one atomic commit) on the simulated AWS, against the embedded store and
//! against Redis. For each store:
//!
//! 1. seed `--accounts` Available accounts straight into the store (pure domain transitions,
//!    concurrent commits), before the engine starts, so the engine rehydrates them;
//! 2. "allocate": one auto-approved request per account, `--concurrency` in flight;
//! 3. "pending": the remaining `--leases - --accounts` requests on a requiresApproval template;
//! 4. the outbox drain, resident memory, the pool invariants, and the time a second engine takes
//!    to start (rehydrate) on the same store.
//!
//! With `--store both` each store runs in its own child process, so the memory figure of one is
//! not inflated by the other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt as _;
use sandboxd_actors::approver::RequestLease;
use sandboxd_actors::domain::account::RunOutcome;
use sandboxd_actors::domain::config::CleanupPolicy;
use sandboxd_actors::domain::template::TemplateInput;
use sandboxd_actors::domain::{
    Account, AccountStatus, Caller, EventRecord, GlobalConfig, Lease, Role,
};
use sandboxd_actors::engine::{Deps, EngineSettings};
use sandboxd_actors::entity::write_of;
use sandboxd_actors::ports::{Clock, Commit, EventBus, IndexQuery, Kind, StateStore, SystemClock};
use sandboxd_actors::testkit::sim::{SimCleanupRunner, SimCostSource};
use sandboxd_actors::Engine;

use crate::config::Settings;
use crate::store::{EmbeddedStore, RedisStore};

/// Targets (printed beside the figures; a miss does not fail the command).
const TARGET_REQUESTS_PER_SECOND: f64 = 5_000.0;
const TARGET_P99: StdDuration = StdDuration::from_millis(10);
const TARGET_RSS_MIB: f64 = 1024.0;
const TARGET_REHYDRATION: StdDuration = StdDuration::from_secs(5);

/// Accounts per seeding commit, and seeding commits in flight.
const SEED_BATCH: usize = 100;
const SEED_CONCURRENCY: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    Embedded,
    Redis,
    Both,
}

impl StoreChoice {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Redis => "redis",
            Self::Both => "both",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Store(s) to run against; "both" runs each in its own process.
    #[arg(long, value_enum, default_value_t = StoreChoice::Both)]
    pub store: StoreChoice,
    /// Redis to use (a unique key prefix is created and deleted afterwards).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Available accounts seeded into the pool (and auto-approved requests made).
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// Total leases stored at the end (the ones beyond --accounts are PendingApproval).
    #[arg(long, default_value_t = 100_000)]
    pub leases: usize,
    /// Lease requests in flight at once. 16 saturates this 2-core machine; more only adds
    /// queueing to the latency (Little's law), not throughput.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Small sizes for tests: 500 accounts, 5000 leases (overrides --accounts and --leases).
    #[arg(long)]
    pub quick: bool,
}

#[derive(Debug, Clone, Copy)]
struct Sizes {
    accounts: usize,
    leases: usize,
    concurrency: usize,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let sizes = if args.quick {
        Sizes {
            accounts: 500,
            leases: 5_000,
            concurrency: args.concurrency,
        }
    } else {
        Sizes {
            accounts: args.accounts,
            leases: args.leases,
            concurrency: args.concurrency,
        }
    };
    if sizes.accounts == 0 {
        bail!("--accounts: must be >= 1");
    }
    if sizes.accounts > 99_999_999 {
        bail!("--accounts: at most 99999999");
    }
    if sizes.leases < sizes.accounts {
        bail!(
            "--leases ({}) must be >= --accounts ({}): every account is leased first",
            sizes.leases,
            sizes.accounts
        );
    }
    if sizes.concurrency == 0 {
        bail!("--concurrency: must be >= 1");
    }
    match args.store {
        StoreChoice::Both => {
            for store in [StoreChoice::Embedded, StoreChoice::Redis] {
                run_child(store, &args.redis_url, sizes)?;
                println!();
            }
            Ok(())
        }
        store => run_in_process(store, &args.redis_url, sizes),
    }
}

/// Run one store's bench in a child process (same binary), its output passed through.
fn run_child(store: StoreChoice, redis_url: &str, sizes: Sizes) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the sandboxd binary")?;
    let status = std::process::Command::new(&exe)
        .arg("bench")
        .args(["--store", store.name()])
        .args(["--redis-url", redis_url])
        .args(["--accounts", &sizes.accounts.to_string()])
        .args(["--leases", &sizes.leases.to_string()])
        .args(["--concurrency", &sizes.concurrency.to_string()])
        .status()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !status.success() {
        bail!("the {} bench failed ({status})", store.name());
    }
    Ok(())
}

fn run_in_process(store: StoreChoice, redis_url: &str, sizes: Sizes) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&crate::config::LogSettings {
        format: "text".into(),
        filter: "warn".into(),
    });
    // As the daemon does: metrics are recorded (and cost what they cost).
    let _metrics = crate::telemetry::metrics_handle();
    let settings = Settings::load(None)?;
    let system = actix_rt::System::new();
    let outcome = system.block_on(async move {
        let suffix = format!("{:08x}", rand::random::<u32>());
        match store {
            StoreChoice::Redis => {
                let prefix = format!("sandboxd-bench-{suffix}");
                let redis = RedisStore::connect(redis_url, &prefix).await.with_context(|| {
                    format!("the Redis bench needs a Redis at {redis_url} (or run --store embedded)")
                })?;
                let label = format!(
                    "redis ({}, key prefix {prefix})",
                    crate::store::redis::redact_url(redis_url)
                );
                let result = bench_store(&label, Arc::new(redis.clone()), &settings, sizes).await;
                match redis.delete_prefix().await {
                    Ok(deleted) => println!("cleanup: deleted {deleted} Redis keys under {prefix}:"),
                    Err(error) => eprintln!("cleanup: could not delete the keys under {prefix}: {error:#}"),
                }
                result
            }
            StoreChoice::Embedded => {
                let dir = std::env::temp_dir().join(format!("sandboxd-bench-{suffix}"));
                let path = dir.join("bench.redb");
                let result = match EmbeddedStore::open(&path) {
                    Ok(embedded) => {
                        let label = format!("embedded (redb file {})", path.display());
                        bench_store(&label, Arc::new(embedded), &settings, sizes).await
                    }
                    Err(error) => Err(error),
                };
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    eprintln!("cleanup: could not remove {}: {error}", dir.display());
                }
                result
            }
            StoreChoice::Both => unreachable!("both runs each store in a child process"),
        }
    });
    // The engines have no stop: their actors live until the process ends. Dropping the runtime
    // under them makes actix poll (and start) actors outside the runtime, which panics; leave
    // the System to the process exit.
    std::mem::forget(system);
    outcome
}

/// Counts what the outbox drainer publishes; does nothing else.
#[derive(Default)]
struct CountingBus {
    published: AtomicU64,
}

#[async_trait]
impl EventBus for CountingBus {
    async fn publish(&self, events: &[EventRecord]) -> Vec<Result<(), String>> {
        self.published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        events.iter().map(|_| Ok(())).collect()
    }
}

fn account_id(index: usize) -> String {
    format!("{:012}", 200_000_000_000u64 + index as u64)
}

/// An Available account, built with the pure domain transitions: registered, then cleaned.
fn seeded_account(
    index: usize,
    policy: &CleanupPolicy,
    now: DateTime<Utc>,
) -> anyhow::Result<Account> {
    let id = account_id(index);
    let mut account = Account::register(
        &id,
        Some(format!("bench-{index:06}")),
        Some(format!("bench-{index:06}@sandbox.example")),
        "bench",
        now,
    )?
    .state;
    let mut run = 0;
    while account.status == AccountStatus::CleanUp {
        run += 1;
        if run > 100 {
            bail!("account {id} is still in CleanUp after {run} successful runs");
        }
        let run_id = format!("seed-{id}-{run}");
        account = account
            .begin_cleanup_run(&run_id, now)
            .ok_or_else(|| anyhow!("account {id}: cleanup run {run} did not start"))?;
        account = account
            .finish_cleanup_run(&run_id, RunOutcome::Succeeded, "seeded", policy, now)
            .ok_or_else(|| anyhow!("account {id}: cleanup run {run} did not finish"))?
            .state;
    }
    if account.status != AccountStatus::Available {
        bail!("seeded account {id} is {}, not Available", account.status);
    }
    Ok(account)
}

/// Write `count` Available accounts straight to the store (no engine), concurrently.
async fn seed(
    store: &Arc<dyn StateStore>,
    policy: &CleanupPolicy,
    count: usize,
) -> anyhow::Result<StdDuration> {
    let started = Instant::now();
    let now = Utc::now();
    let mut commits = Vec::with_capacity(count.div_ceil(SEED_BATCH));
    let mut batch = Vec::with_capacity(SEED_BATCH);
    for index in 0..count {
        batch.push(write_of(None, &seeded_account(index, policy, now)?));
        if batch.len() == SEED_BATCH || index + 1 == count {
            commits.push(Commit {
                writes: std::mem::take(&mut batch),
                ..Commit::default()
            });
        }
    }
    let mut results = futures::stream::iter(commits)
        .map(|commit| {
            let store = store.clone();
            async move { store.commit(commit).await }
        })
        .buffer_unordered(SEED_CONCURRENCY);
    while let Some(result) = results.next().await {
        result.map_err(|error| anyhow!("seeding accounts: {error}"))?;
    }
    Ok(started.elapsed())
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    requests: usize,
    elapsed: StdDuration,
    /// Request-to-decision latency of every request, sorted.
    latencies: Vec<StdDuration>,
    outcomes: BTreeMap<String, usize>,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn quantile(&self, q: f64) -> StdDuration {
        quantile(&self.latencies, q)
    }

    fn count(&self, outcome: &str) -> usize {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }

    fn outcomes_text(&self) -> String {
        self.outcomes
            .iter()
            .map(|(outcome, count)| format!("{count} {outcome}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn quantile(sorted: &[StdDuration], q: f64) -> StdDuration {
    if sorted.is_empty() {
        return StdDuration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Make `count` requests, `concurrency` in flight, timing each from send to decision.
async fn drive(
    engine: &Engine,
    name: &'static str,
    count: usize,
    concurrency: usize,
    make: impl Fn(usize) -> RequestLease,
) -> Phase {
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(count);
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_errors: Vec<String> = Vec::new();
    let mut results = futures::stream::iter(0..count)
        .map(|index| {
            let engine = engine.clone();
            let request = make(index);
            async move {
                let sent = Instant::now();
                let result = engine.request_lease(request).await;
                (sent.elapsed(), result.map(|lease| lease.status))
            }
        })
        .buffer_unordered(concurrency);
    while let Some((latency, result)) = results.next().await {
        latencies.push(latency);
        let outcome = match result {
            Ok(status) => status.as_str().to_string(),
            Err(error) => {
                if first_errors.len() < 3 {
                    first_errors.push(error.to_string());
                }
                format!("error:{}", error.label())
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    let elapsed = started.elapsed();
    for error in first_errors {
        eprintln!("bench {name}: a request failed: {error}");
    }
    latencies.sort_unstable();
    Phase {
        name,
        requests: count,
        elapsed,
        latencies,
        outcomes,
    }
}

fn request_for(template_uuid: &str, user: String) -> RequestLease {
    RequestLease {
        template_uuid: template_uuid.to_string(),
        caller: Caller::new(user, vec![Role::User]),
        user_email: None,
        comments: None,
    }
}

/// VmRSS of this process, in MiB.
fn resident_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// No account bound to two leases, and every binding is mutual. Returns a one-line summary.
fn check_invariants(
    accounts: &[Account],
    leases: &[Lease],
    seeded: usize,
    allocate: &Phase,
    pending: &Phase,
    limit: u32,
) -> Result<String, String> {
    let by_uuid: HashMap<&str, &Lease> = leases
        .iter()
        .map(|lease| (lease.uuid.as_str(), lease))
        .collect();
    let by_account: HashMap<&str, &Account> = accounts
        .iter()
        .map(|account| (account.aws_account_id.as_str(), account))
        .collect();
    if accounts.len() != seeded {
        return Err(format!(
            "{} accounts stored, {seeded} seeded",
            accounts.len()
        ));
    }
    let mut bound_leases = HashSet::new();
    let mut holding = 0;
    for account in accounts {
        let holds = matches!(
            account.status,
            AccountStatus::Active | AccountStatus::Frozen
        );
        match (&account.lease_uuid, holds) {
            (Some(uuid), true) => {
                holding += 1;
                if !bound_leases.insert(uuid.as_str()) {
                    return Err(format!(
                        "lease {uuid} is bound to two accounts (one is {})",
                        account.aws_account_id
                    ));
                }
                let lease = by_uuid.get(uuid.as_str()).ok_or_else(|| {
                    format!(
                        "account {} names lease {uuid}, which is not stored",
                        account.aws_account_id
                    )
                })?;
                if lease.aws_account_id.as_deref() != Some(account.aws_account_id.as_str())
                    || !lease.status.is_monitored()
                {
                    return Err(format!(
                        "account {} names lease {uuid}, which is {} on {:?}",
                        account.aws_account_id, lease.status, lease.aws_account_id
                    ));
                }
            }
            (None, false) => {}
            (bound, _) => {
                return Err(format!(
                    "account {} is {} with lease {bound:?}",
                    account.aws_account_id, account.status
                ))
            }
        }
    }
    let mut used_accounts = HashSet::new();
    let mut live_per_user: HashMap<&str, u32> = HashMap::new();
    let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
    for lease in leases {
        *statuses.entry(lease.status.as_str()).or_default() += 1;
        if lease.status.counts_toward_limit() {
            let live = live_per_user.entry(lease.user_email.as_str()).or_default();
            *live += 1;
            if *live > limit {
                return Err(format!(
                    "{} holds more than {limit} live leases",
                    lease.user_email
                ));
            }
        }
        if !lease.status.is_monitored() {
            continue;
        }
        let Some(account_id) = lease.aws_account_id.as_deref() else {
            return Err(format!(
                "lease {} is {} without an account",
                lease.uuid, lease.status
            ));
        };
        if !used_accounts.insert(account_id) {
            return Err(format!("account {account_id} is bound to two leases"));
        }
        let account = by_account
            .get(account_id)
            .ok_or_else(|| format!("lease {} names unknown account {account_id}", lease.uuid))?;
        if account.lease_uuid.as_deref() != Some(lease.uuid.as_str()) {
            return Err(format!(
                "lease {} is on account {account_id}, which names lease {:?}",
                lease.uuid, account.lease_uuid
            ));
        }
    }
    let active = statuses.get("Active").copied().unwrap_or(0);
    let waiting = statuses.get("PendingApproval").copied().unwrap_or(0);
    let approved = allocate.count("Active");
    let held = allocate.count("PendingApproval") + pending.count("PendingApproval");
    if active != approved || waiting != held {
        return Err(format!(
            "the store holds {active} Active and {waiting} PendingApproval leases, the requests were answered {approved} Active and {held} PendingApproval"
        ));
    }
    let available = accounts
        .iter()
        .filter(|account| account.status == AccountStatus::Available)
        .count();
    if available + holding != seeded {
        return Err(format!(
            "{available} Available + {holding} leased accounts != {seeded} seeded"
        ));
    }
    Ok(format!(
        "{holding} leased accounts each bound to exactly one Active lease and back; {available} Available; {waiting} PendingApproval; no user over {limit} live leases"
    ))
}

struct Row {
    figure: String,
    measured: String,
    target: String,
    result: &'static str,
}

fn row(figure: impl Into<String>, measured: impl Into<String>) -> Row {
    Row {
        figure: figure.into(),
        measured: measured.into(),
        target: String::new(),
        result: "",
    }
}

fn judged(
    figure: impl Into<String>,
    measured: impl Into<String>,
    target: impl Into<String>,
    pass: Option<bool>,
) -> Row {
    Row {
        figure: figure.into(),
        measured: measured.into(),
        target: target.into(),
        result: match pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "info",
        },
    }
}

fn millis(duration: StdDuration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn thousands(value: f64) -> String {
    let whole = value.round() as u64;
    let text = whole.to_string();
    let mut out = String::new();
    for (index, digit) in text.chars().enumerate() {
        if index > 0 && (text.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn print_table(rows: &[Row]) {
    let width = |pick: fn(&Row) -> &str, title: &str| {
        rows.iter()
            .map(|row| pick(row).chars().count())
            .chain([title.len()])
            .max()
            .unwrap_or(0)
    };
    let figure_width = width(|row| &row.figure, "figure");
    let measured_width = width(|row| &row.measured, "measured");
    let target_width = width(|row| &row.target, "target");
    println!(
        "  {:<figure_width$}  {:<measured_width$}  {:<target_width$}  result",
        "figure", "measured", "target"
    );
    println!(
        "  {}  {}  {}  ------",
        "-".repeat(figure_width),
        "-".repeat(measured_width),
        "-".repeat(target_width)
    );
    for row in rows {
        println!(
            "  {:<figure_width$}  {:<measured_width$}  {:<target_width$}  {}",
            row.figure, row.measured, row.target, row.result
        );
    }
}

fn phase_rows(rows: &mut Vec<Row>, phase: &Phase, judge_rate: bool) {
    let rate = phase.rate();
    let p99 = phase.quantile(0.99);
    let (rate_target, rate_pass) = if judge_rate {
        (
            format!(">= {}", thousands(TARGET_REQUESTS_PER_SECOND)),
            Some(rate >= TARGET_REQUESTS_PER_SECOND),
        )
    } else {
        (
            format!(">= {} (Redis)", thousands(TARGET_REQUESTS_PER_SECOND)),
            None,
        )
    };
    rows.push(judged(
        format!("{:<8}  requests/s", phase.name),
        format!(
            "{} ({} in {:.2} s)",
            thousands(rate),
            phase.requests,
            phase.elapsed.as_secs_f64()
        ),
        rate_target,
        rate_pass,
    ));
    rows.push(row(
        format!("{:<8}  latency p50", phase.name),
        millis(phase.quantile(0.50)),
    ));
    rows.push(judged(
        format!("{:<8}  latency p99", phase.name),
        millis(p99),
        format!("< {}", millis(TARGET_P99)),
        Some(p99 < TARGET_P99),
    ));
    rows.push(row(
        format!("{:<8}  latency max", phase.name),
        millis(phase.quantile(1.0)),
    ));
    rows.push(row(
        format!("{:<8}  outcomes", phase.name),
        phase.outcomes_text(),
    ));
}

async fn start_engine(
    store: Arc<dyn StateStore>,
    config: &GlobalConfig,
    engine_settings: &EngineSettings,
    bus: Arc<CountingBus>,
) -> anyhow::Result<Engine> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let deps = Deps {
        store,
        clock: clock.clone(),
        config: Arc::new(config.clone()),
        bus,
        runner: Arc::new(SimCleanupRunner::new(clock, Duration::seconds(3), 0.0)),
        costs: Arc::new(SimCostSource {
            dollars_per_hour: 0.5,
        }),
        settings: engine_settings.clone(),
    };
    Engine::start(deps)
        .await
        .map_err(|error| anyhow!("starting the engine: {error}"))
}

async fn bench_store(
    label: &str,
    store: Arc<dyn StateStore>,
    settings: &Settings,
    sizes: Sizes,
) -> anyhow::Result<()> {
    let is_redis = label.starts_with("redis");
    let config = GlobalConfig {
        maintenance_mode: false,
        ..settings.global.clone()
    };
    let mut engine_settings = settings.engine_settings();
    // No spend sweeps: the figures are about the request path.
    engine_settings.spend_sweep_interval = Duration::zero();
    let limit = config.leases.max_leases_per_user.max(1);
    let pending_count = sizes.leases - sizes.accounts;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);

    println!("== sandboxd bench: {label} ==");
    println!(
        "   {} accounts, {} leases ({} auto-approved + {} pending approval), concurrency {}, {} CPUs, {} engine arbiters",
        sizes.accounts,
        sizes.leases,
        sizes.accounts,
        pending_count,
        sizes.concurrency,
        cpus,
        engine_settings.arbiters
    );

    // a. Seed the pool straight into the store.
    let seeding = seed(&store, &config.cleanup, sizes.accounts).await?;
    println!(
        "   seed: {} Available accounts written directly in {:.2} s ({}/s; not part of the figures)",
        sizes.accounts,
        seeding.as_secs_f64(),
        thousands(sizes.accounts as f64 / seeding.as_secs_f64().max(1e-9))
    );

    // b. The engine, rehydrating the seeded pool.
    let bus = Arc::new(CountingBus::default());
    let started = Instant::now();
    let engine = start_engine(store.clone(), &config, &engine_settings, bus.clone()).await?;
    println!(
        "   engine start on the seeded pool: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let admin = Caller::new("bench-admin@example.gov.uk", vec![Role::Admin]);
    let auto = engine
        .create_template(
            TemplateInput {
                name: "Bench auto-approved".into(),
                requires_approval: false,
                max_spend: Some(50.0_f64.min(config.leases.max_budget)),
                lease_duration_in_hours: Some(24.0_f64.min(config.leases.max_duration_hours)),
                ..TemplateInput::default()
            },
            &admin,
        )
        .await
        .map_err(|error| anyhow!("creating the auto-approved template: {error}"))?;
    let review = engine
        .create_template(
            TemplateInput {
                name: "Bench reviewed".into(),
                requires_approval: true,
                max_spend: Some(50.0_f64.min(config.leases.max_budget)),
                lease_duration_in_hours: Some(24.0_f64.min(config.leases.max_duration_hours)),
                ..TemplateInput::default()
            },
            &admin,
        )
        .await
        .map_err(|error| anyhow!("creating the reviewed template: {error}"))?;

    println!(
        "   phase allocate: {} requests on the auto-approved template, one user each ...",
        sizes.accounts
    );
    let auto_uuid = auto.uuid.clone();
    let allocate = drive(
        &engine,
        "allocate",
        sizes.accounts,
        sizes.concurrency,
        |index| request_for(&auto_uuid, format!("user{index:07}@bench.example")),
    )
    .await;

    // Pending: users round-robin, at most `limit` live leases each.
    let pending_users = pending_count.div_ceil(limit as usize).max(1);
    println!(
        "   phase pending: {pending_count} requests on the requiresApproval template, {pending_users} users round-robin ..."
    );
    let review_uuid = review.uuid.clone();
    let pending = drive(
        &engine,
        "pending",
        pending_count,
        sizes.concurrency,
        |index| {
            request_for(
                &review_uuid,
                format!("reviewer-user{:07}@bench.example", index % pending_users),
            )
        },
    )
    .await;

    // e. The outbox: what the drainer had not published yet, and one full drain.
    let outbox_left = engine.store().outbox_len().await.unwrap_or(0);
    let flushing = Instant::now();
    let flushed = engine
        .flush_outbox()
        .await
        .map_err(|error| anyhow!("draining the outbox: {error}"))?;
    let flush_time = flushing.elapsed();
    let published = bus.published.load(Ordering::Relaxed);

    // c. Resident memory with everything stored and every actor live.
    let rss = resident_mib();

    // Invariants (loads every record: after the memory figure, which it would inflate).
    let checking = Instant::now();
    let account_ids = engine.ids(IndexQuery::all(Kind::Account)).await?;
    let accounts = engine.accounts_of(&account_ids).await?;
    let lease_ids = engine.ids(IndexQuery::all(Kind::Lease)).await?;
    let leases = engine.leases_of(&lease_ids).await?;
    let invariants = check_invariants(
        &accounts,
        &leases,
        sizes.accounts,
        &allocate,
        &pending,
        limit,
    );
    let live_leases = leases
        .iter()
        .filter(|lease| !lease.status.is_terminal())
        .count();
    let live_accounts = accounts
        .iter()
        .filter(|account| account.status.is_live())
        .count();
    let check_time = checking.elapsed();
    drop((accounts, leases, account_ids, lease_ids));

    // d. Rehydration: a second engine on the same store.
    let rehydrating = Instant::now();
    let second = start_engine(
        store.clone(),
        &config,
        &engine_settings,
        Arc::new(CountingBus::default()),
    )
    .await?;
    let rehydration = rehydrating.elapsed();
    let rss_two = resident_mib();

    // The table.
    let mut all_latencies: Vec<StdDuration> = allocate
        .latencies
        .iter()
        .chain(&pending.latencies)
        .copied()
        .collect();
    all_latencies.sort_unstable();
    let all = Phase {
        name: "all",
        requests: allocate.requests + pending.requests,
        elapsed: allocate.elapsed + pending.elapsed,
        latencies: all_latencies,
        outcomes: BTreeMap::new(),
    };
    let mut rows = Vec::new();
    phase_rows(&mut rows, &allocate, is_redis);
    phase_rows(&mut rows, &pending, is_redis);
    let all_rate = all.rate();
    let all_p99 = all.quantile(0.99);
    rows.push(judged(
        "all       requests/s",
        format!(
            "{} ({} in {:.2} s)",
            thousands(all_rate),
            all.requests,
            all.elapsed.as_secs_f64()
        ),
        if is_redis {
            format!(">= {}", thousands(TARGET_REQUESTS_PER_SECOND))
        } else {
            format!(">= {} (Redis)", thousands(TARGET_REQUESTS_PER_SECOND))
        },
        is_redis.then_some(all_rate >= TARGET_REQUESTS_PER_SECOND),
    ));
    rows.push(row("all       latency p50", millis(all.quantile(0.5))));
    rows.push(judged(
        "all       latency p99",
        millis(all_p99),
        format!("< {}", millis(TARGET_P99)),
        Some(all_p99 < TARGET_P99),
    ));
    rows.push(row("all       latency max", millis(all.quantile(1.0))));
    rows.push(match &invariants {
        Ok(_) => judged(
            "invariants",
            format!("invariants OK ({:.2} s to check)", check_time.as_secs_f64()),
            "no account bound twice",
            Some(true),
        ),
        Err(reason) => judged(
            "invariants",
            format!("FAILED: {reason}"),
            "no account bound twice",
            Some(false),
        ),
    });
    rows.push(match rss {
        Some(mib) => judged(
            "resident memory (VmRSS)",
            format!(
                "{mib:.0} MiB ({live_leases} live leases, {live_accounts} accounts, actors live)"
            ),
            format!("< {TARGET_RSS_MIB:.0} MiB"),
            Some(mib < TARGET_RSS_MIB),
        ),
        None => row("resident memory (VmRSS)", "unknown (no /proc/self/status)"),
    });
    rows.push(judged(
        "rehydration (Engine::start)",
        format!(
            "{:.2} s ({live_leases} leases, {live_accounts} accounts)",
            rehydration.as_secs_f64()
        ),
        format!("< {} s", TARGET_REHYDRATION.as_secs()),
        Some(rehydration < TARGET_REHYDRATION),
    ));
    if let Some(mib) = rss_two {
        rows.push(row("VmRSS with both engines", format!("{mib:.0} MiB")));
    }
    rows.push(row(
        "outbox after the phases",
        format!("{outbox_left} events not yet published"),
    ));
    rows.push(row(
        "outbox drain (flush_outbox)",
        format!("{:.3} s ({flushed} events)", flush_time.as_secs_f64()),
    ));
    rows.push(row("events published", published.to_string()));
    println!();
    print_table(&rows);
    if let Ok(summary) = &invariants {
        println!("  invariants: {summary}");
    }
    println!();
    drop(second);
    if let Err(reason) = invariants {
        bail!("invariants violated: {reason}");
    }
    Ok(())
}
