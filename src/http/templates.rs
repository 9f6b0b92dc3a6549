//! /leaseTemplates: read by every role (PRIVATE templates hidden from plain Users), written by
//! Managers and Admins.

use actix_web::{web, HttpResponse};
use sandboxd_actors::domain::template::TemplateInput;
use sandboxd_actors::domain::{Caller, LeaseTemplate, Visibility};
use sandboxd_actors::ports::{IndexQuery, Kind};
use serde_json::Value;

use super::auth::{Authenticated, RequireManager};
use super::jsend::{self, ApiError};
use super::pagination::{paginate, PageQuery, PageRequest};
use super::ApiState;

fn visible_to(template: &LeaseTemplate, caller: &Caller) -> bool {
    template.visibility == Visibility::Public || caller.is_manager()
}

/// GET /leaseTemplates[?pageIdentifier][&pageSize]
pub async fn list(
    state: web::Data<ApiState>,
    Authenticated(caller): Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let page = PageRequest::parse(&query)?;
    let ids = state.engine.ids(IndexQuery::all(Kind::Template)).await?;
    let engine = &state.engine;
    let listed = paginate(
        ids,
        &page,
        |chunk| async move { engine.templates_of(&chunk).await },
        |template: &LeaseTemplate| visible_to(template, &caller),
        |template: &LeaseTemplate| template.uuid.clone(),
    )
    .await?;
    Ok(jsend::ok(listed))
}

/// POST /leaseTemplates: 201 with the template.
pub async fn create(
    state: web::Data<ApiState>,
    RequireManager(caller): RequireManager,
    body: web::Json<TemplateInput>,
) -> Result<HttpResponse, ApiError> {
    let template = state
        .engine
        .create_template(body.into_inner(), &caller)
        .await?;
    Ok(jsend::created(template))
}

/// GET /leaseTemplates/{uuid}: a PRIVATE template is "not found" to a plain User.
pub async fn get(
    state: web::Data<ApiState>,
    Authenticated(caller): Authenticated,
    uuid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let template = state
        .engine
        .get_template(&uuid)
        .await?
        .filter(|template| visible_to(template, &caller))
        .ok_or_else(|| ApiError::NotFound("lease template not found".into()))?;
    Ok(jsend::ok(template))
}

/// Fields a client may echo back from a GET but cannot change.
const READ_ONLY_FIELDS: [&str; 4] = ["uuid", "createdBy", "meta", "version"];

/// The editable part of a PUT body. Clients often send back the whole template they read, so
/// read-only fields are dropped; a `uuid` naming another template is refused.
fn template_input_of(mut body: Value, uuid: &str) -> Result<TemplateInput, ApiError> {
    let Value::Object(fields) = &mut body else {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
        ));
    };
    if let Some(given) = fields.get("uuid") {
        if given.as_str() != Some(uuid) {
            return Err(ApiError::invalid(
                "uuid",
                "uuid in the body does not match the path",
            ));
        }
    }
    for field in READ_ONLY_FIELDS {
        fields.remove(field);
    }
    serde_json::from_value(body).map_err(|error| {
        let message = error.to_string();
        ApiError::BadRequest {
            field: jsend::field_of_serde_message(&message),
            message: format!("invalid request body: {message}"),
        }
    })
}

/// PUT /leaseTemplates/{uuid}: replace the editable fields.
pub async fn replace(
    state: web::Data<ApiState>,
    RequireManager(_caller): RequireManager,
    uuid: web::Path<String>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let input = template_input_of(body.into_inner(), &uuid)?;
    let template = state.engine.replace_template(&uuid, input).await?;
    Ok(jsend::ok(template))
}

/// DELETE /leaseTemplates/{uuid}: 200 with `data: null`, as ISB answers.
pub async fn delete(
    state: web::Data<ApiState>,
    RequireManager(_caller): RequireManager,
    uuid: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.engine.delete_template(&uuid).await?;
    Ok(jsend::ok(Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_put_body_may_echo_read_only_fields() {
        let body = json!({
            "uuid": "t-1", "name": "Standard", "createdBy": "ada@example.com",
            "meta": {"createdTime": "2025-01-01T00:00:00Z"}, "version": 3, "maxSpend": 10.0,
        });
        let input = template_input_of(body, "t-1").unwrap();
        assert_eq!(input.name, "Standard");
        assert_eq!(input.max_spend, Some(10.0));
    }

    #[test]
    fn a_put_body_naming_another_template_or_an_unknown_field_is_refused() {
        let other = template_input_of(json!({"uuid": "t-2", "name": "x"}), "t-1").unwrap_err();
        assert!(
            matches!(other, ApiError::BadRequest { field: Some(ref field), .. } if field == "uuid")
        );
        let unknown = template_input_of(json!({"name": "x", "colour": "red"}), "t-1").unwrap_err();
        assert!(
            matches!(unknown, ApiError::BadRequest { field: Some(ref field), .. } if field == "colour")
        );
    }
}
