//! The daemon's wiring: store, simulated AWS, engine, HTTP server, graceful shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use sandboxd_actors::domain::{Caller, Role};
use sandboxd_actors::engine::Deps;
use sandboxd_actors::ports::{AcceleratedClock, AccountDirectory, Clock, StateStore, SystemClock};
use sandboxd_actors::testkit::sim::{SimCleanupRunner, SimCostSource, SimDirectory};
use sandboxd_actors::Engine;

use crate::config::{EventSink, Settings, StoreKind};
use crate::http::auth::Auth;

pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn StateStore>> {
    Ok(match settings.store.kind {
        StoreKind::Embedded => {
            let path = settings.store.data_dir.join("sandboxd.redb");
            Arc::new(
                crate::store::embedded::EmbeddedStore::open(&path)
                    .with_context(|| format!("store.data_dir: opening {}", path.display()))?,
            )
        }
        StoreKind::Redis => Arc::new(
            crate::store::redis::RedisStore::connect(
                &settings.store.redis_url,
                &settings.store.key_prefix,
            )
            .await
            .with_context(|| {
                format!(
                    "store.redis_url: connecting to {}",
                    settings.store.redis_url
                )
            })?,
        ),
    })
}

pub fn clock_for(settings: &Settings) -> Arc<dyn Clock> {
    if settings.sim.clock_speed > 1.0 {
        Arc::new(AcceleratedClock::new(settings.sim.clock_speed))
    } else {
        Arc::new(SystemClock)
    }
}

/// The simulated organization: `accounts` to register plus `unregistered` left in Entry.
pub fn sim_directory(settings: &Settings) -> SimDirectory {
    SimDirectory::with_accounts(settings.sim.accounts + settings.sim.unregistered)
}

/// Build and start the engine on the configured store and the simulated AWS.
pub async fn start_engine(
    settings: &Settings,
    store: Arc<dyn StateStore>,
    clock: Arc<dyn Clock>,
    bus: Arc<dyn sandboxd_actors::ports::EventBus>,
) -> anyhow::Result<Engine> {
    let cleanup_delay =
        chrono::Duration::milliseconds((settings.sim.cleanup_seconds * 1000.0) as i64);
    let deps = Deps {
        store,
        clock: clock.clone(),
        config: Arc::new(settings.global.clone()),
        bus,
        runner: Arc::new(SimCleanupRunner::new(
            clock,
            cleanup_delay,
            settings.sim.cleanup_failure_rate,
        )),
        costs: Arc::new(SimCostSource {
            dollars_per_hour: settings.sim.dollars_per_hour,
        }),
        settings: settings.engine_settings(),
    };
    Engine::start(deps)
        .await
        .map_err(|error| anyhow::anyhow!("starting the engine: {error}"))
}

/// First start of the simulated pool: register the simulated accounts that are not yet known.
pub async fn bootstrap_sim_pool(
    engine: &Engine,
    directory: &SimDirectory,
    count: usize,
) -> anyhow::Result<usize> {
    let mut registered = 0;
    let system = Caller::system();
    for account in directory.accounts.iter().take(count) {
        if engine.get_account(&account.aws_account_id).await?.is_some() {
            continue;
        }
        engine
            .register_account(
                &account.aws_account_id,
                account.name.clone(),
                account.email.clone(),
                &system,
            )
            .await?;
        registered += 1;
    }
    Ok(registered)
}

/// The outbox's sink: log lines, or EventBridge.
pub async fn event_bus(settings: &Settings) -> Arc<dyn sandboxd_actors::ports::EventBus> {
    match settings.events.sink {
        EventSink::Log => Arc::new(crate::bus::LogBus),
        EventSink::EventBridge => {
            let sdk = crate::aws::sdk_config(&settings.aws).await;
            Arc::new(crate::aws::eventbridge::EventBridgeBus::new(
                &sdk,
                &settings.events.bus_name,
                &settings.events.source,
            ))
        }
    }
}

pub fn auth_for(settings: &Settings) -> anyhow::Result<Auth> {
    Ok(Auth::new(
        crate::secret::jwt_secret(settings)?,
        settings.global.auth.session_duration_in_minutes,
    ))
}

pub fn token_for(settings: &Settings, email: &str, role: Role) -> anyhow::Result<String> {
    Ok(auth_for(settings)?.issue(email, &[role]))
}

pub fn run(settings: Settings) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&settings.log);
    let metrics = crate::telemetry::metrics_handle();
    let system = actix_rt::System::new();
    system.block_on(serve(settings, metrics))
}

async fn serve(
    settings: Settings,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> anyhow::Result<()> {
    let auth = auth_for(&settings)?;
    let store = open_store(&settings).await?;
    let clock = clock_for(&settings);
    let bus = event_bus(&settings).await;
    let engine = start_engine(&settings, store, clock, bus).await?;
    let directory = Arc::new(sim_directory(&settings));
    let registered = bootstrap_sim_pool(&engine, &directory, settings.sim.accounts).await?;
    if registered > 0 {
        tracing::info!(
            registered,
            "registered the simulated pool accounts; each is cleaned before it is Available"
        );
    }
    let admin_token = auth.issue("admin@sandboxd.local", &[Role::Admin]);
    let listen = settings.server.listen.clone();
    eprintln!(
        "sandboxd listening on http://{listen} (store: {:?}, aws: {:?})",
        settings.store.kind, settings.aws.mode
    );
    eprintln!(
        "admin token (valid {} min; more with `sandboxd token`):\n{admin_token}",
        settings.global.auth.session_duration_in_minutes
    );
    let state = actix_web::web::Data::new(crate::http::ApiState {
        engine: engine.clone(),
        auth,
        metrics: Some(metrics),
        directory: directory as Arc<dyn AccountDirectory>,
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(state.clone())
            .app_data(crate::http::json_config())
            .configure(crate::http::configure)
    })
    .workers(settings.server.workers)
    .shutdown_timeout(30)
    .bind(&listen)
    .with_context(|| format!("server.listen: cannot listen on {listen}"))?
    .run();
    server.await.context("http server")?;
    // SIGTERM / SIGINT: the server has finished in-flight requests; publish what is left.
    match engine.flush_outbox().await {
        Ok(published) => tracing::info!(published, "outbox flushed; stopping"),
        Err(error) => {
            tracing::warn!(%error, "outbox not flushed; it is published at the next start")
        }
    }
    Ok(())
}
