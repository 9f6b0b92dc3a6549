//! The HTTP API: ISB's REST paths and JSend responses over the engine.
//!
//! `configure` registers every route; the caller adds `web::Data<ApiState>` (and may add
//! `json_config()`, which `configure` also registers). Every request is counted in
//! `sandboxd_http_requests_total{method,route,status}` and timed in
//! `sandboxd_http_request_seconds{method,route}`, with the route pattern as the label, never
//! the raw path.

pub mod accounts;
pub mod auth;
pub mod jsend;
pub mod leases;
pub mod pagination;
pub mod templates;

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse};
use metrics_exporter_prometheus::PrometheusHandle;
use sandboxd_actors::ports::AccountDirectory;
use sandboxd_actors::Engine;
use serde_json::json;

use self::auth::{Auth, AuthenticatedInMaintenance};
use self::jsend::ApiError;

/// Largest JSON body accepted.
const JSON_LIMIT_BYTES: usize = 256 * 1024;

/// What every handler reads.
pub struct ApiState {
    pub engine: Engine,
    pub auth: Auth,
    /// The Prometheus recorder's handle; None disables /metrics (404).
    pub metrics: Option<PrometheusHandle>,
    /// Accounts waiting in the Entry OU (GET /accounts/unregistered).
    pub directory: Arc<dyn AccountDirectory>,
}

/// Register every route, the extractor error handlers and the JSend 404 fallback.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .app_data(json_config())
        .app_data(path_config())
        .app_data(query_config())
        .service(
            web::scope("")
                .wrap(from_fn(record_request))
                .service(resource("/health").route(web::get().to(health)))
                .service(resource("/metrics").route(web::get().to(prometheus)))
                .service(resource("/configurations").route(web::get().to(configurations)))
                .service(
                    resource("/leases")
                        .route(web::get().to(leases::list))
                        .route(web::post().to(leases::request)),
                )
                .service(
                    resource("/leases/{leaseId}")
                        .route(web::get().to(leases::get))
                        .route(web::patch().to(leases::patch)),
                )
                .service(resource("/leases/{leaseId}/review").route(web::post().to(leases::review)))
                .service(resource("/leases/{leaseId}/freeze").route(web::post().to(leases::freeze)))
                .service(
                    resource("/leases/{leaseId}/unfreeze").route(web::post().to(leases::unfreeze)),
                )
                .service(
                    resource("/leases/{leaseId}/terminate")
                        .route(web::post().to(leases::terminate)),
                )
                .service(
                    resource("/leaseTemplates")
                        .route(web::get().to(templates::list))
                        .route(web::post().to(templates::create)),
                )
                .service(
                    resource("/leaseTemplates/{uuid}")
                        .route(web::get().to(templates::get))
                        .route(web::put().to(templates::replace))
                        .route(web::delete().to(templates::delete)),
                )
                .service(
                    resource("/accounts")
                        .route(web::get().to(accounts::list))
                        .route(web::post().to(accounts::register)),
                )
                // Before /accounts/{id}, which would otherwise capture it.
                .service(
                    resource("/accounts/unregistered").route(web::get().to(accounts::unregistered)),
                )
                .service(resource("/accounts/{awsAccountId}").route(web::get().to(accounts::get)))
                .service(
                    resource("/accounts/{awsAccountId}/retryCleanup")
                        .route(web::post().to(accounts::retry_cleanup)),
                )
                .service(
                    resource("/accounts/{awsAccountId}/eject")
                        .route(web::post().to(accounts::eject)),
                )
                .service(
                    resource("/accounts/{awsAccountId}/quarantine")
                        .route(web::post().to(accounts::quarantine)),
                )
                .default_service(web::to(not_found)),
        );
}

/// A resource whose unsupported methods answer 405 in JSend.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// JSON bodies: 400 naming the problem (serde's message carries the field or the position).
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(JSON_LIMIT_BYTES)
        .content_type_required(false)
        .error_handler(|error, _request| json_error(error).into())
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|error: PathError, _request| {
        ApiError::bad_request(format!("invalid path: {error}")).into()
    })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|error: QueryPayloadError, _request| {
        ApiError::bad_request(format!("invalid query string: {error}")).into()
    })
}

fn json_error(error: JsonPayloadError) -> ApiError {
    match error {
        JsonPayloadError::Deserialize(error) => {
            let message = error.to_string();
            let problem = if error.is_data() {
                "invalid request body"
            } else {
                "malformed JSON"
            };
            ApiError::BadRequest {
                field: jsend::field_of_serde_message(&message),
                message: format!("{problem}: {message}"),
            }
        }
        JsonPayloadError::ContentType => ApiError::Client {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: "Content-Type must be application/json".into(),
        },
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => ApiError::Client {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("request body larger than {limit} bytes"),
        },
        other => ApiError::bad_request(format!("could not read the request body: {other}")),
    }
}

/// Decode `%XX` escapes (ISB clients URL-encode the `+`, `/` and `=` of base64 lease ids).
/// Malformed escapes are kept as written; None if the result is not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%'
            && index + 2 < bytes.len()
            && bytes[index + 1..index + 3]
                .iter()
                .all(u8::is_ascii_hexdigit))
        .then(|| std::str::from_utf8(&bytes[index + 1..index + 3]).ok())
        .flatten()
        .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}

async fn method_not_allowed(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::MethodNotAllowed(format!(
        "method {} not allowed here",
        request.method()
    )))
}

/// GET /health (no auth).
async fn health() -> HttpResponse {
    jsend::ok(json!({ "status": "ok" }))
}

/// GET /metrics (no auth): Prometheus text exposition.
async fn prometheus(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let handle = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("metrics are not enabled".into()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render()))
}

/// GET /configurations: the global configuration (it holds no secrets); open to every role,
/// even in maintenance mode, so clients can tell they are in it.
async fn configurations(
    state: web::Data<ApiState>,
    AuthenticatedInMaintenance(_caller): AuthenticatedInMaintenance,
) -> HttpResponse {
    jsend::ok(state.engine.config())
}

/// A bounded method label.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

async fn record_request(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(request.method());
    let result = next.call(request).await;
    let (status, route) = match &result {
        Ok(response) => (
            response.status(),
            response
                .request()
                .match_pattern()
                .filter(|route| !route.is_empty()),
        ),
        Err(error) => (error.as_response_error().status_code(), None),
    };
    let route = route.unwrap_or_else(|| "unmatched".to_string());
    metrics::counter!(
        "sandboxd_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_u16().to_string()
    )
    .increment(1);
    metrics::histogram!("sandboxd_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_escapes_and_leaves_the_rest() {
        assert_eq!(percent_decode("ab%2Bc%2Fd%3D").as_deref(), Some("ab+c/d="));
        assert_eq!(percent_decode("a+b").as_deref(), Some("a+b"));
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
        assert_eq!(percent_decode("%+1").as_deref(), Some("%+1"));
        assert_eq!(percent_decode("%FF"), None);
    }
}
