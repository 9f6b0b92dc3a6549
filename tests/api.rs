//! The HTTP API end to end, in process: the real engine on the testkit fakes (memory store,
//! simulated cleanup, recording bus, simulated directory) behind actix-web's test service.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use std::time::Duration as StdDuration;

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::{Method, StatusCode};
use actix_web::{test, web, App};
use chrono::Duration;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sandboxd::http::auth::Auth;
use sandboxd::http::{configure, json_config, ApiState};
use sandboxd_actors::domain::{AccountStatus, Caller, GlobalConfig, LeaseId, Role};
use sandboxd_actors::engine::{Deps, EngineSettings};
use sandboxd_actors::ports::{Clock, IndexQuery, Kind, SystemClock};
use sandboxd_actors::testkit::sim::{RecordingBus, SimCleanupRunner, SimCostSource, SimDirectory};
use sandboxd_actors::testkit::MemoryStore;
use sandboxd_actors::Engine;
use serde_json::{json, Value};

const ADMIN: &str = "admin@example.com";
const MANAGER: &str = "manager@example.com";
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const PROTECTED_ACCOUNT: &str = "999999999999";

/// How a test's daemon is set up.
struct Setup {
    maintenance_mode: bool,
    /// Accounts registered and cleaned (Available) before the test starts.
    available_accounts: usize,
    /// Accounts in the simulated Entry OU.
    directory_accounts: usize,
    /// How long a simulated cleanup run takes (long = accounts stay in CleanUp).
    cleanup_delay: Duration,
    with_metrics: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            maintenance_mode: false,
            available_accounts: 3,
            directory_accounts: 5,
            cleanup_delay: Duration::zero(),
            with_metrics: false,
        }
    }
}

struct Harness {
    engine: Engine,
    auth: Auth,
    bus: Arc<RecordingBus>,
    state: web::Data<ApiState>,
    account_ids: Vec<String>,
}

impl Harness {
    fn token(&self, email: &str, roles: &[Role]) -> String {
        self.auth.issue(email, roles)
    }

    fn admin(&self) -> String {
        self.token(ADMIN, &[Role::Admin])
    }

    fn manager(&self) -> String {
        self.token(MANAGER, &[Role::Manager])
    }

    fn user(&self, email: &str) -> String {
        self.token(email, &[Role::User])
    }

    async fn lease_count(&self) -> usize {
        self.engine
            .ids(IndexQuery::all(Kind::Lease))
            .await
            .unwrap()
            .len()
    }

    async fn published(&self) -> Vec<String> {
        self.engine.flush_outbox().await.unwrap();
        self.bus.detail_types()
    }
}

/// One Prometheus recorder per test process (the recorder is global).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .expect("install the prometheus recorder")
        })
        .clone()
}

async fn wait_for_status(engine: &Engine, account_id: &str, wanted: AccountStatus) {
    for _attempt in 0..500 {
        let account = engine.get_account(account_id).await.unwrap();
        if account.as_ref().map(|account| account.status) == Some(wanted) {
            return;
        }
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    let account = engine.get_account(account_id).await.unwrap();
    panic!("account {account_id} never reached {wanted}: {account:?}");
}

async fn start(setup: Setup) -> Harness {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = GlobalConfig {
        maintenance_mode: setup.maintenance_mode,
        ..GlobalConfig::default()
    };
    config.cleanup.wait_before_rerun_successful_attempt_seconds = 0;
    config.cleanup.wait_before_retry_failed_attempt_seconds = 0;
    let settings = EngineSettings {
        arbiters: 1,
        timer_tick: StdDuration::from_millis(10),
        outbox_tick: StdDuration::from_millis(10),
        spend_sweep_interval: Duration::zero(),
        cleanup_poll_interval: Duration::milliseconds(10),
        protected_accounts: HashSet::from([PROTECTED_ACCOUNT.to_string()]),
        ..EngineSettings::default()
    };
    let bus = Arc::new(RecordingBus::default());
    let engine = Engine::start(Deps {
        store: Arc::new(MemoryStore::new()),
        clock: clock.clone(),
        config: Arc::new(config),
        bus: bus.clone(),
        runner: Arc::new(SimCleanupRunner::new(
            clock.clone(),
            setup.cleanup_delay,
            0.0,
        )),
        costs: Arc::new(SimCostSource {
            dollars_per_hour: 0.0,
        }),
        settings,
    })
    .await
    .expect("engine starts");
    let directory = SimDirectory::with_accounts(setup.directory_accounts);
    let account_ids: Vec<String> = directory
        .accounts
        .iter()
        .map(|entry| entry.aws_account_id.clone())
        .collect();
    for account_id in account_ids.iter().take(setup.available_accounts) {
        engine
            .register_account(account_id, None, None, &Caller::system())
            .await
            .expect("register a pool account");
    }
    for account_id in account_ids.iter().take(setup.available_accounts) {
        wait_for_status(&engine, account_id, AccountStatus::Available).await;
    }
    let auth = Auth::new("api-test-secret", 60);
    let state = web::Data::new(ApiState {
        engine: engine.clone(),
        auth: auth.clone(),
        metrics: setup.with_metrics.then(prometheus),
        directory: Arc::new(directory),
    });
    Harness {
        engine,
        auth,
        bus,
        state,
        account_ids,
    }
}

macro_rules! app {
    ($harness:expr) => {
        test::init_service(
            App::new()
                .app_data($harness.state.clone())
                .app_data(json_config())
                .configure(configure),
        )
        .await
    };
}

const NO_TOKEN: Option<&str> = None;

/// A JSON request with an optional bearer token.
fn build<T: AsRef<str>>(
    method: Method,
    path: &str,
    token: Option<T>,
    body: Option<Value>,
) -> test::TestRequest {
    let mut request = test::TestRequest::default().method(method).uri(path);
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {}", token.as_ref())));
    }
    if let Some(body) = body {
        request = request.set_json(body);
    }
    request
}

/// The status and the JSON body (Null when the body is empty).
async fn parse<B: MessageBody>(response: ServiceResponse<B>) -> (StatusCode, Value) {
    let status = response.status();
    let bytes = test::read_body(response).await;
    if bytes.is_empty() {
        return (status, Value::Null);
    }
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        panic!(
            "body is not JSON ({error}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, body)
}

macro_rules! send {
    ($app:expr, $request:expr $(,)?) => {
        parse(test::call_service(&$app, $request.to_request()).await).await
    };
}

macro_rules! call {
    ($app:expr, $method:expr, $path:expr, $token:expr, $body:expr $(,)?) => {
        send!($app, build($method, $path, $token, $body))
    };
}

/// POST /leaseTemplates as a Manager; answers the created template.
macro_rules! create_template {
    ($app:expr, $token:expr, $body:expr $(,)?) => {{
        let (status, response) = call!(
            $app,
            Method::POST,
            "/leaseTemplates",
            Some($token),
            Some($body)
        );
        assert_eq!(status, StatusCode::CREATED, "{response}");
        response["data"].clone()
    }};
}

macro_rules! request_lease {
    ($app:expr, $token:expr, $template:expr $(,)?) => {
        call!(
            $app,
            Method::POST,
            "/leases",
            Some($token),
            Some(json!({ "leaseTemplateUuid": $template["uuid"] }))
        )
    };
}

fn template_body(name: &str, requires_approval: bool) -> Value {
    json!({
        "name": name,
        "requiresApproval": requires_approval,
        "maxSpend": 40.0,
        "leaseDurationInHours": 24.0,
    })
}

/// Assert a JSend fail with this status; answers its message.
fn assert_fail(response: &(StatusCode, Value), status: StatusCode) -> String {
    assert_eq!(response.0, status, "{}", response.1);
    assert_eq!(response.1["status"], "fail", "{}", response.1);
    let message = response.1["data"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {}", response.1));
    assert!(!message.is_empty());
    assert_eq!(response.1["data"]["errors"][0]["message"], message);
    message.to_string()
}

fn lease_path(lease: &Value, suffix: &str) -> String {
    format!("/leases/{}{suffix}", lease["leaseId"].as_str().unwrap())
}

#[actix_web::test]
async fn the_whole_isb_lease_lifecycle_works_over_http() {
    let harness = start(Setup::default()).await;
    let app = app!(harness);
    let manager = harness.manager();
    let alice = harness.user(ALICE);

    // Auto-approved template: Active at once, LeaseApproved published.
    let standard = create_template!(app, &harness.manager(), template_body("Standard", false));
    assert_eq!(standard["createdBy"], MANAGER);
    let (status, body) = request_lease!(app, &alice, &standard);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "success");
    let active = body["data"].clone();
    assert_eq!(active["status"], "Active");
    assert_eq!(active["userEmail"], ALICE);
    assert_eq!(active["approvedBy"], "AUTO_APPROVED");
    assert_eq!(active["originalLeaseTemplateName"], "Standard");
    assert!(active["awsAccountId"].as_str().unwrap().len() == 12);
    let expected_id = LeaseId {
        user_email: ALICE.into(),
        uuid: active["uuid"].as_str().unwrap().into(),
    }
    .encode();
    assert_eq!(active["leaseId"], expected_id.as_str());
    assert!(!active["history"].as_array().unwrap().is_empty());
    let published = harness.published().await;
    assert!(
        published.contains(&"LeaseApproved".to_string()),
        "{published:?}"
    );

    // Approval template: PendingApproval, then Approve -> Active.
    let reviewed = create_template!(app, &harness.manager(), template_body("Reviewed", true));
    let (status, body) = request_lease!(app, &harness.user(BOB), &reviewed);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pending = body["data"].clone();
    assert_eq!(pending["status"], "PendingApproval");
    assert!(pending["awsAccountId"].is_null());
    let (status, body) = call!(
        app,
        Method::POST,
        &lease_path(&pending, "/review"),
        Some(&manager),
        Some(json!({ "action": "Approve" })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "Active");
    assert_eq!(body["data"]["approvedBy"], MANAGER);

    // Deny -> ApprovalDenied; reviewing it again (or an Active lease) -> 409.
    let (_, body) = request_lease!(app, &harness.user("carol@example.com"), &reviewed);
    let to_deny = body["data"].clone();
    let (status, body) = call!(
        app,
        Method::POST,
        &lease_path(&to_deny, "/review"),
        Some(&manager),
        Some(json!({ "action": "Deny" })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "ApprovalDenied");
    for lease in [&to_deny, &active] {
        let response = call!(
            app,
            Method::POST,
            &lease_path(lease, "/review"),
            Some(&manager),
            Some(json!({ "action": "Approve" })),
        );
        assert_fail(&response, StatusCode::CONFLICT);
    }
    let response = call!(
        app,
        Method::POST,
        &lease_path(&active, "/review"),
        Some(&manager),
        Some(json!({ "action": "Maybe" })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "action");

    // Freeze, freeze again (409), unfreeze.
    let (status, body) = call!(
        app,
        Method::POST,
        &lease_path(&active, "/freeze"),
        Some(&manager),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "Frozen");
    let response = call!(
        app,
        Method::POST,
        &lease_path(&active, "/freeze"),
        Some(&manager),
        None,
    );
    assert_fail(&response, StatusCode::CONFLICT);
    let (status, body) = call!(
        app,
        Method::POST,
        &lease_path(&active, "/unfreeze"),
        Some(&manager),
        Some(json!({ "reason": "budget raised" })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "Active");

    // Terminate: ManuallyTerminated; the account is cleaned and Available again.
    let account_id = active["awsAccountId"].as_str().unwrap().to_string();
    let (status, body) = call!(
        app,
        Method::POST,
        &lease_path(&active, "/terminate"),
        Some(&manager),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "ManuallyTerminated");
    assert!(body["data"]["endDate"].is_string());
    wait_for_status(&harness.engine, &account_id, AccountStatus::Available).await;
    let (status, body) = call!(
        app,
        Method::GET,
        &format!("/accounts/{account_id}"),
        Some(&harness.admin()),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let went_through_cleanup = body["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["from"] == "Frozen" || entry["from"] == "Active")
        && body["data"]["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["to"] == "CleanUp")
            .count()
            >= 2;
    assert!(went_through_cleanup, "{}", body["data"]["history"]);
    let response = call!(
        app,
        Method::POST,
        &lease_path(&active, "/terminate"),
        Some(&manager),
        None,
    );
    assert_fail(&response, StatusCode::CONFLICT);

    // The lease reads back with its history.
    let (status, body) = call!(
        app,
        Method::GET,
        &lease_path(&active, ""),
        Some(&alice),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "ManuallyTerminated");
    let statuses: Vec<&str> = body["data"]["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "PendingApproval",
            "Active",
            "Frozen",
            "Active",
            "ManuallyTerminated"
        ]
    );
    let published = harness.published().await;
    for event in [
        "LeaseRequested",
        "LeaseDenied",
        "LeaseFrozen",
        "LeaseUnfrozen",
        "LeaseTerminated",
    ] {
        assert!(
            published.contains(&event.to_string()),
            "{event} in {published:?}"
        );
    }
}

#[actix_web::test]
async fn requests_without_a_valid_token_are_401() {
    let harness = start(Setup {
        available_accounts: 0,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let response = call!(app, Method::GET, "/leases", NO_TOKEN, None);
    assert_fail(&response, StatusCode::UNAUTHORIZED);
    let response = call!(app, Method::GET, "/leases", Some("not.a.jwt"), None);
    assert_fail(&response, StatusCode::UNAUTHORIZED);
    let foreign = Auth::new("another-secret", 60).issue(ALICE, &[Role::Admin]);
    let response = call!(app, Method::GET, "/leases", Some(&foreign), None);
    assert_fail(&response, StatusCode::UNAUTHORIZED);
    let expired = harness.auth.issue_at(
        ALICE,
        &[Role::Admin],
        chrono::Utc::now().timestamp() - 2 * 3600,
    );
    let response = call!(app, Method::GET, "/leases", Some(&expired), None);
    assert_eq!(
        assert_fail(&response, StatusCode::UNAUTHORIZED),
        "token expired"
    );
    let basic = test::TestRequest::get()
        .uri("/leaseTemplates")
        .insert_header(("Authorization", "Basic YWxpY2U6c2VjcmV0"));
    let response = send!(app, basic);
    assert_fail(&response, StatusCode::UNAUTHORIZED);
    // Even /configurations needs a token; /health does not.
    let response = call!(app, Method::GET, "/configurations", NO_TOKEN, None);
    assert_fail(&response, StatusCode::UNAUTHORIZED);
    let (status, _) = call!(app, Method::GET, "/health", NO_TOKEN, None);
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn wrong_roles_are_403_and_write_nothing() {
    let harness = start(Setup::default()).await;
    let app = app!(harness);
    let alice = harness.user(ALICE);
    let template = create_template!(app, &harness.manager(), template_body("Standard", false));
    let (status, body) = request_lease!(app, &alice, &template);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let lease = body["data"].clone();
    let leases_before = harness.lease_count().await;

    // A User cannot freeze, even their own lease.
    let response = call!(
        app,
        Method::POST,
        &lease_path(&lease, "/freeze"),
        Some(&alice),
        None
    );
    assert_fail(&response, StatusCode::FORBIDDEN);
    // A User cannot request for someone else, even with a malformed body after the check.
    let response = call!(
        app,
        Method::POST,
        "/leases",
        Some(&alice),
        Some(json!({ "leaseTemplateUuid": template["uuid"], "userEmail": BOB })),
    );
    assert_fail(&response, StatusCode::FORBIDDEN);
    assert_eq!(harness.lease_count().await, leases_before);
    let after = harness
        .engine
        .get_lease(lease["uuid"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status.as_str(), "Active");

    // Template writes need Manager; accounts need Admin.
    let response = call!(
        app,
        Method::POST,
        "/leaseTemplates",
        Some(&alice),
        Some(json!({ "name": 42 })),
    );
    assert_fail(&response, StatusCode::FORBIDDEN);
    let response = call!(
        app,
        Method::GET,
        "/accounts",
        Some(&harness.manager()),
        None
    );
    assert_fail(&response, StatusCode::FORBIDDEN);
    let response = call!(
        app,
        Method::DELETE,
        &format!("/leaseTemplates/{}", template["uuid"].as_str().unwrap()),
        Some(&alice),
        None,
    );
    assert_fail(&response, StatusCode::FORBIDDEN);

    // Users see only their own leases.
    let response = call!(
        app,
        Method::GET,
        &format!("/leases?userEmail={BOB}"),
        Some(&alice),
        None,
    );
    assert_fail(&response, StatusCode::FORBIDDEN);
    let (status, body) = call!(
        app,
        Method::GET,
        &lease_path(&lease, ""),
        Some(&harness.user(BOB)),
        None
    );
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (_, bob_lease) = request_lease!(app, &harness.user(BOB), &template);
    assert_eq!(bob_lease["data"]["status"], "Active", "{bob_lease}");
    let (status, body) = call!(app, Method::GET, "/leases", Some(&alice), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    let emails: Vec<&str> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lease| lease["userEmail"].as_str().unwrap())
        .collect();
    assert_eq!(emails, [ALICE]);
    let (status, body) = call!(app, Method::GET, "/leases", Some(&harness.manager()), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["result"].as_array().unwrap().len(), 2);

    // A token whose roles are all unknown has no role: 403 everywhere.
    let roleless =
        harness
            .auth
            .issue_raw(ALICE, vec!["Wizard".into()], chrono::Utc::now().timestamp());
    for path in ["/configurations", "/leases", "/leaseTemplates"] {
        let response = call!(app, Method::GET, path, Some(&roleless), None);
        assert_fail(&response, StatusCode::FORBIDDEN);
    }
}

#[actix_web::test]
async fn maintenance_mode_refuses_non_admins_except_configurations() {
    let harness = start(Setup {
        maintenance_mode: true,
        available_accounts: 1,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let alice = harness.user(ALICE);
    let admin = harness.admin();
    let template = create_template!(app, &admin, template_body("Standard", false));

    for token in [&alice, &harness.manager()] {
        let response = call!(app, Method::GET, "/leases", Some(token), None);
        assert_eq!(
            assert_fail(&response, StatusCode::FORBIDDEN),
            "maintenance mode"
        );
        let response = call!(app, Method::GET, "/leaseTemplates", Some(token), None);
        assert_fail(&response, StatusCode::FORBIDDEN);
    }
    let response = request_lease!(app, &alice, &template);
    assert_fail(&response, StatusCode::FORBIDDEN);
    assert_eq!(harness.lease_count().await, 0);

    let (status, body) = call!(app, Method::GET, "/configurations", Some(&alice), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["maintenanceMode"], true);
    assert_eq!(body["data"]["leases"]["maxLeasesPerUser"], 3);

    let (status, body) = call!(app, Method::GET, "/leases", Some(&admin), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = request_lease!(app, &admin, &template);
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[actix_web::test]
async fn malformed_and_invalid_bodies_are_400_naming_the_problem() {
    let harness = start(Setup {
        available_accounts: 0,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let manager = harness.manager();

    let broken = test::TestRequest::post()
        .uri("/leaseTemplates")
        .insert_header(("Authorization", format!("Bearer {manager}")))
        .insert_header(("Content-Type", "application/json"))
        .set_payload(r#"{"name": "Standard", "maxSpend": "#);
    let response = send!(app, broken);
    let message = assert_fail(&response, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("malformed JSON") && message.contains("line"),
        "{message}"
    );

    let response = call!(
        app,
        Method::POST,
        "/leaseTemplates",
        Some(&manager),
        Some(json!({ "name": "Standard", "maxSpend": "lots" })),
    );
    let message = assert_fail(&response, StatusCode::BAD_REQUEST);
    assert!(message.contains("invalid type"), "{message}");

    let response = call!(
        app,
        Method::POST,
        "/leaseTemplates",
        Some(&manager),
        Some(json!({ "name": "Standard", "colour": "red" })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "colour");

    let response = call!(
        app,
        Method::POST,
        "/leases",
        Some(&harness.user(ALICE)),
        Some(json!({}))
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "leaseTemplateUuid");

    // maxSpend over the global maximum (50) names maxSpend.
    let response = call!(
        app,
        Method::POST,
        "/leaseTemplates",
        Some(&manager),
        Some(json!({ "name": "Big", "maxSpend": 500.0, "leaseDurationInHours": 24.0 })),
    );
    let message = assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "maxSpend");
    assert_eq!(response.1["data"]["errors"][0]["field"], "maxSpend");
    assert!(message.contains("maxSpend"), "{message}");
    let templates = harness
        .engine
        .ids(IndexQuery::all(Kind::Template))
        .await
        .unwrap();
    assert!(templates.is_empty(), "nothing written: {templates:?}");

    // Unknown routes and methods answer JSend too.
    let response = call!(app, Method::GET, "/nowhere", Some(&manager), None);
    assert_fail(&response, StatusCode::NOT_FOUND);
    let response = call!(app, Method::DELETE, "/leases", Some(&manager), None);
    assert_fail(&response, StatusCode::METHOD_NOT_ALLOWED);
}

#[actix_web::test]
async fn unknown_leases_are_404_and_malformed_ids_400() {
    let harness = start(Setup {
        available_accounts: 1,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let alice = harness.user(ALICE);
    let unknown = LeaseId {
        user_email: ALICE.into(),
        uuid: "00000000-0000-4000-8000-000000000000".into(),
    }
    .encode();
    let response = call!(
        app,
        Method::GET,
        &format!("/leases/{unknown}"),
        Some(&alice),
        None
    );
    assert_fail(&response, StatusCode::NOT_FOUND);
    // An id whose base64 holds '/' and '+', URL-encoded, reaches the handler and decodes.
    let awkward = LeaseId {
        user_email: "ux??>>~~@example.com".into(),
        uuid: "00000000-0000-4000-8000-000000000001".into(),
    }
    .encode();
    assert!(awkward.contains('/') && awkward.contains('+') && awkward.ends_with('='));
    let encoded = awkward
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let response = call!(
        app,
        Method::GET,
        &format!("/leases/{encoded}"),
        Some(&alice),
        None
    );
    assert_eq!(
        assert_fail(&response, StatusCode::NOT_FOUND),
        "lease not found"
    );
    let response = call!(
        app,
        Method::GET,
        "/leases/not-a-lease-id",
        Some(&alice),
        None
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "leaseId");
    let response = call!(
        app,
        Method::POST,
        &format!("/leases/{unknown}/terminate"),
        Some(&harness.manager()),
        None,
    );
    assert_fail(&response, StatusCode::NOT_FOUND);

    // The id of a real lease, URL-encoded, addresses it; the same uuid under another
    // user's email does not.
    let template = create_template!(app, &harness.manager(), template_body("Standard", false));
    let (status, body) = request_lease!(app, &alice, &template);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let lease_id = body["data"]["leaseId"].as_str().unwrap().to_string();
    let url_encoded = lease_id
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let (status, read) = call!(
        app,
        Method::GET,
        &format!("/leases/{url_encoded}"),
        Some(&alice),
        None
    );
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read["data"]["leaseId"], lease_id.as_str());
    let unpadded = lease_id.trim_end_matches('=');
    let (status, _) = call!(
        app,
        Method::GET,
        &format!("/leases/{unpadded}"),
        Some(&alice),
        None
    );
    assert_eq!(status, StatusCode::OK);
    let forged = LeaseId {
        user_email: BOB.into(),
        uuid: body["data"]["uuid"].as_str().unwrap().into(),
    }
    .encode();
    let response = call!(
        app,
        Method::GET,
        &format!("/leases/{forged}"),
        Some(&harness.manager()),
        None
    );
    assert_fail(&response, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn the_per_user_limit_and_an_empty_pool_are_409() {
    let harness = start(Setup {
        available_accounts: 1,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let alice = harness.user(ALICE);
    let reviewed = create_template!(app, &harness.manager(), template_body("Reviewed", true));
    for _ in 0..3 {
        let (status, body) = request_lease!(app, &alice, &reviewed);
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let leases_before = harness.lease_count().await;
    let response = request_lease!(app, &alice, &reviewed);
    assert_fail(&response, StatusCode::CONFLICT);
    assert_eq!(harness.lease_count().await, leases_before);

    let standard = create_template!(app, &harness.manager(), template_body("Standard", false));
    let (status, body) = request_lease!(app, &harness.user(BOB), &standard);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let leases_before = harness.lease_count().await;
    let response = request_lease!(app, &harness.user("carol@example.com"), &standard);
    assert_fail(&response, StatusCode::CONFLICT);
    assert_eq!(harness.lease_count().await, leases_before);

    // A Manager assigning a lease to someone is auto-approved (and also needs an account).
    let (status, body) = call!(
        app,
        Method::POST,
        "/leases",
        Some(&harness.manager()),
        Some(json!({ "leaseTemplateUuid": reviewed["uuid"], "userEmail": "dave@example.com" })),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[actix_web::test]
async fn lists_paginate_with_an_opaque_cursor() {
    let harness = start(Setup {
        available_accounts: 0,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let alice = harness.user(ALICE);
    for index in 0..5 {
        let _created = create_template!(
            app,
            &harness.manager(),
            template_body(&format!("Template {index}"), false)
        );
    }
    let mut private = template_body("Hidden", false);
    private["visibility"] = json!("PRIVATE");
    let hidden = create_template!(app, &harness.manager(), private);

    let mut names = Vec::new();
    let mut pages = 0;
    let mut path = "/leaseTemplates?pageSize=2".to_string();
    loop {
        let (status, body) = call!(app, Method::GET, &path, Some(&alice), None);
        assert_eq!(status, StatusCode::OK, "{body}");
        pages += 1;
        let result = body["data"]["result"].as_array().unwrap();
        assert!(result.len() <= 2);
        names.extend(
            result
                .iter()
                .map(|template| template["name"].as_str().unwrap().to_string()),
        );
        match &body["data"]["nextPageIdentifier"] {
            Value::Null => break,
            Value::String(cursor) => {
                path = format!("/leaseTemplates?pageSize=2&pageIdentifier={cursor}")
            }
            other => panic!("unexpected cursor {other}"),
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(pages, 3);
    names.sort();
    assert_eq!(
        names,
        [
            "Template 0",
            "Template 1",
            "Template 2",
            "Template 3",
            "Template 4"
        ]
    );

    // The PRIVATE template: hidden from a User, listed for a Manager.
    let hidden_path = format!("/leaseTemplates/{}", hidden["uuid"].as_str().unwrap());
    let response = call!(app, Method::GET, &hidden_path, Some(&alice), None);
    assert_fail(&response, StatusCode::NOT_FOUND);
    let (status, body) = call!(
        app,
        Method::GET,
        "/leaseTemplates",
        Some(&harness.manager()),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["result"].as_array().unwrap().len(), 6);
    assert!(body["data"]["nextPageIdentifier"].is_null());

    for bad in ["pageIdentifier=%%%", "pageSize=0", "pageSize=many"] {
        let response = call!(
            app,
            Method::GET,
            &format!("/leaseTemplates?{bad}"),
            Some(&alice),
            None
        );
        assert_fail(&response, StatusCode::BAD_REQUEST);
    }

    // PUT accepts the template as read back; DELETE removes it.
    let (_, read) = call!(
        app,
        Method::GET,
        &hidden_path,
        Some(&harness.manager()),
        None
    );
    let mut edited = read["data"].clone();
    edited["name"] = json!("Renamed");
    let (status, body) = call!(
        app,
        Method::PUT,
        &hidden_path,
        Some(&harness.manager()),
        Some(edited)
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["name"], "Renamed");
    assert_eq!(body["data"]["uuid"], hidden["uuid"]);
    let (status, body) = call!(
        app,
        Method::DELETE,
        &hidden_path,
        Some(&harness.manager()),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "status": "success", "data": null }));
    let response = call!(
        app,
        Method::GET,
        &hidden_path,
        Some(&harness.manager()),
        None
    );
    assert_fail(&response, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn patch_updates_monitored_leases_only_and_null_clears() {
    let harness = start(Setup {
        available_accounts: 1,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let manager = harness.manager();
    let reviewed = create_template!(app, &harness.manager(), template_body("Reviewed", true));
    let (_, body) = request_lease!(app, &harness.user(BOB), &reviewed);
    let pending = body["data"].clone();
    let response = call!(
        app,
        Method::PATCH,
        &lease_path(&pending, ""),
        Some(&manager),
        Some(json!({ "maxSpend": 20.0 })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    let stored = harness
        .engine
        .get_lease(pending["uuid"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.max_spend, Some(40.0));

    let standard = create_template!(app, &harness.manager(), template_body("Standard", false));
    let (_, body) = request_lease!(app, &harness.user(ALICE), &standard);
    let active = body["data"].clone();
    assert_eq!(active["maxSpend"], 40.0);
    let (status, body) = call!(
        app,
        Method::PATCH,
        &lease_path(&active, ""),
        Some(&manager),
        Some(json!({ "maxSpend": 20.0, "costReportGroup": "Research" })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["maxSpend"], 20.0);
    assert_eq!(body["data"]["costReportGroup"], "Research");
    let (status, body) = call!(
        app,
        Method::PATCH,
        &lease_path(&active, ""),
        Some(&manager),
        Some(json!({ "maxSpend": null })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["data"]["maxSpend"].is_null(), "{body}");
    assert_eq!(body["data"]["costReportGroup"], "Research");

    let response = call!(
        app,
        Method::PATCH,
        &lease_path(&active, ""),
        Some(&manager),
        Some(json!({ "status": "Expired" })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "status");
    let response = call!(
        app,
        Method::PATCH,
        &lease_path(&active, ""),
        Some(&manager),
        Some(json!({ "maxSpend": -5 })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "maxSpend");
    let response = call!(
        app,
        Method::PATCH,
        &lease_path(&active, ""),
        Some(&harness.user(ALICE)),
        Some(json!({ "maxSpend": 1 })),
    );
    assert_fail(&response, StatusCode::FORBIDDEN);
}

#[actix_web::test]
async fn account_operations_follow_isb_rules() {
    let harness = start(Setup {
        available_accounts: 2,
        directory_accounts: 5,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let admin = harness.admin();
    let available = harness.account_ids[0].clone();

    let response = call!(
        app,
        Method::POST,
        "/accounts",
        Some(&admin),
        Some(json!({ "awsAccountId": PROTECTED_ACCOUNT })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "awsAccountId");
    let response = call!(
        app,
        Method::POST,
        "/accounts",
        Some(&admin),
        Some(json!({ "awsAccountId": "12345" })),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert!(harness
        .engine
        .get_account(PROTECTED_ACCOUNT)
        .await
        .unwrap()
        .is_none());
    let response = call!(
        app,
        Method::POST,
        "/accounts",
        Some(&admin),
        Some(json!({ "awsAccountId": available })),
    );
    assert_fail(&response, StatusCode::CONFLICT);

    // retryCleanup on an Available account: 409. Quarantine (reason required), then retry.
    let response = call!(
        app,
        Method::POST,
        &format!("/accounts/{available}/retryCleanup"),
        Some(&admin),
        None
    );
    assert_fail(&response, StatusCode::CONFLICT);
    let response = call!(
        app,
        Method::POST,
        &format!("/accounts/{available}/quarantine"),
        Some(&admin),
        Some(json!({})),
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "reason");
    let (status, body) = call!(
        app,
        Method::POST,
        &format!("/accounts/{available}/quarantine"),
        Some(&admin),
        Some(json!({ "reason": "suspicious activity" })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "Quarantine");
    let (status, body) = call!(
        app,
        Method::POST,
        &format!("/accounts/{available}/retryCleanup"),
        Some(&admin),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CleanUp");
    wait_for_status(&harness.engine, &available, AccountStatus::Available).await;

    // Listing, filtering, reading.
    let (status, body) = call!(
        app,
        Method::GET,
        "/accounts?status=Available",
        Some(&admin),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["result"].as_array().unwrap().len(), 2);
    let response = call!(
        app,
        Method::GET,
        "/accounts?status=Lost",
        Some(&admin),
        None
    );
    assert_fail(&response, StatusCode::BAD_REQUEST);
    assert_eq!(response.1["data"]["field"], "status");
    let response = call!(
        app,
        Method::GET,
        "/accounts/000000000000",
        Some(&admin),
        None
    );
    assert_fail(&response, StatusCode::NOT_FOUND);

    // The Entry OU minus the pool: 3 of 5, paginated.
    let (status, body) = call!(
        app,
        Method::GET,
        "/accounts/unregistered?pageSize=2",
        Some(&admin),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let first: Vec<&str> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["awsAccountId"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        [
            harness.account_ids[2].as_str(),
            harness.account_ids[3].as_str()
        ]
    );
    let cursor = body["data"]["nextPageIdentifier"].as_str().unwrap();
    let (_, body) = call!(
        app,
        Method::GET,
        &format!("/accounts/unregistered?pageSize=2&pageIdentifier={cursor}"),
        Some(&admin),
        None,
    );
    assert_eq!(
        body["data"]["result"][0]["awsAccountId"],
        harness.account_ids[4].as_str()
    );
    assert_eq!(body["data"]["result"][0]["name"], "pool-005");
    assert!(body["data"]["nextPageIdentifier"].is_null());
    let response = call!(
        app,
        Method::GET,
        "/accounts/unregistered",
        Some(&harness.manager()),
        None
    );
    assert_fail(&response, StatusCode::FORBIDDEN);

    // Eject an Available account: it leaves the pool and is listed as unregistered again.
    let (status, body) = call!(
        app,
        Method::POST,
        &format!("/accounts/{available}/eject"),
        Some(&admin),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = call!(
        app,
        Method::GET,
        "/accounts/unregistered",
        Some(&admin),
        None
    );
    let ids: Vec<&str> = body["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["awsAccountId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&available.as_str()), "{ids:?}");
}

#[actix_web::test]
async fn an_account_in_cleanup_cannot_be_ejected() {
    // Cleanup runs never finish here, so a registered account stays in CleanUp.
    let harness = start(Setup {
        available_accounts: 0,
        cleanup_delay: Duration::hours(1),
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let admin = harness.admin();
    let account_id = harness.account_ids[0].clone();
    let (status, body) = call!(
        app,
        Method::POST,
        "/accounts",
        Some(&admin),
        Some(json!({ "awsAccountId": account_id, "name": "first" })),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"]["status"], "CleanUp");
    assert_eq!(body["data"]["name"], "first");
    let response = call!(
        app,
        Method::POST,
        &format!("/accounts/{account_id}/eject"),
        Some(&admin),
        None
    );
    assert_fail(&response, StatusCode::CONFLICT);
    let (status, body) = call!(
        app,
        Method::POST,
        &format!("/accounts/{account_id}/retryCleanup"),
        Some(&admin),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CleanUp");
    let (status, body) = call!(
        app,
        Method::GET,
        &format!("/accounts/{account_id}"),
        Some(&admin),
        None
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CleanUp");
}

#[actix_web::test]
async fn health_and_metrics_need_no_token() {
    let harness = start(Setup {
        available_accounts: 0,
        with_metrics: true,
        ..Setup::default()
    })
    .await;
    let app = app!(harness);
    let (status, body) = call!(app, Method::GET, "/health", NO_TOKEN, None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "status": "success", "data": { "status": "ok" } })
    );
    let templates = format!("/leaseTemplates/{}", "some-uuid");
    let _ = call!(app, Method::GET, &templates, Some(&harness.manager()), None);

    let (status, _) = call!(app, Method::GET, "/no/such/path", NO_TOKEN, None);
    assert_eq!(status, StatusCode::NOT_FOUND);

    let response =
        test::call_service(&app, test::TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let text = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    assert!(text.contains("sandboxd_http_requests_total"), "{text}");
    assert!(text.contains(r#"route="/health""#), "{text}");
    assert!(text.contains(r#"route="/leaseTemplates/{uuid}""#), "{text}");
    assert!(
        !text.contains("some-uuid"),
        "raw paths never become labels: {text}"
    );
    assert!(text.contains(r#"route="unmatched""#), "{text}");
    assert!(!text.contains("/no/such/path"), "{text}");
    assert!(text.contains("sandboxd_http_request_seconds"), "{text}");

    // Without a handle, /metrics is 404.
    let quiet = start(Setup {
        available_accounts: 0,
        ..Setup::default()
    })
    .await;
    let quiet_app = app!(quiet);
    let response = call!(quiet_app, Method::GET, "/metrics", NO_TOKEN, None);
    assert_fail(&response, StatusCode::NOT_FOUND);
}
