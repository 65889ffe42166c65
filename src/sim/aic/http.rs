//! The HTTP face of the simulated tenant: routes, the token grant, faults and authorization.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::tenant::{self, BadRequest, DeleteOutcome};
use super::token::{self, Expectations, OAuthError};
use super::{CallRecord, Inner, KnobsView, take_one};

type Shared = State<Arc<Inner>>;

pub(super) fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/am/oauth2/access_token", post(access_token))
        .route("/environment/csrs", get(list_csrs).post(create_csr))
        .route(
            "/environment/csrs/{id}",
            get(get_csr).patch(complete_csr).delete(delete_csr),
        )
        .route(
            "/environment/certificates",
            get(list_certificates).post(upload_certificate),
        )
        .route(
            "/environment/certificates/{id}",
            get(get_certificate)
                .patch(patch_certificate)
                .delete(delete_certificate),
        )
        .route("/__sim/knobs", get(get_knobs).post(set_knobs))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .layer(middleware::from_fn_with_state(inner.clone(), front_door))
        .with_state(inner)
}

/// `{code, message}`, the tenant's error body.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = json!({"code": status.as_u16(), "message": message.into()});
    (status, axum::Json(body)).into_response()
}

fn bad_request(e: BadRequest) -> Response {
    error(StatusCode::BAD_REQUEST, e.0)
}

/// The call took effect but its answer is lost on the way: a 200 whose body breaks off, as a
/// proxy cutting the connection mid-response leaves it.
fn lost_answer() -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        "{\"id\": \"",
    )
        .into_response()
}

fn ok_json(value: impl Serialize) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

/// Unknown ids answer 404 with an empty body (observed).
fn not_found() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

fn json_body(body: &Bytes) -> Result<Value, BadRequest> {
    serde_json::from_slice(body).map_err(|_| BadRequest("Invalid JSON body".to_owned()))
}

/// Faults an operator must survive, in the order a load balancer would produce them.
fn injected_fault(inner: &Inner) -> Option<Response> {
    let knobs = &inner.knobs;
    if take_one(&knobs.rate_limit_next) {
        let secs = knobs
            .retry_after_secs
            .load(std::sync::atomic::Ordering::SeqCst);
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return Some(response);
    }
    if take_one(&knobs.fail_next_5xx) {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable",
        ));
    }
    if take_one(&knobs.fail_next_empty_500) {
        return Some(StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    None
}

/// Beyond the tenant's request rate (every route, tokens included): 429 with the whole seconds
/// until a request would be accepted.
fn rate_limited(inner: &Inner) -> Option<Response> {
    let limit = inner.limit.as_ref()?;
    let wait = limit
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take(std::time::Instant::now())
        .err()?;
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    Some(response)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// 401 without a valid token, 403 when its scopes do not allow the method.
fn authorize(inner: &Inner, request: &Request) -> Option<Response> {
    let Some(scopes) = bearer(request.headers()).and_then(|t| inner.token_scopes(t)) else {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "Access token is missing, invalid or expired",
        ));
    };
    if !token::scope_allows(&scopes, request.method()) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "The access token does not have the scope this call needs",
        ));
    }
    None
}

/// The route a path belongs to, ids replaced by `{id}`, for the call log.
fn route_template(path: &str) -> String {
    for collection in ["/environment/csrs/", "/environment/certificates/"] {
        if let Some(id) = path.strip_prefix(collection)
            && !id.is_empty()
            && !id.contains('/')
        {
            return format!("{collection}{{id}}");
        }
    }
    path.to_owned()
}

/// Latency, faults and authorization in front of every route, and the call log behind them.
async fn front_door(State(inner): Shared, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    if path.starts_with("/__sim/") {
        return next.run(request).await;
    }
    let method = request.method().to_string();
    let route = route_template(&path);

    let latency = inner.knobs.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let early = match rate_limited(&inner) {
        Some(response) => Some(response),
        None if path.starts_with("/environment") => {
            injected_fault(&inner).or_else(|| authorize(&inner, &request))
        }
        None => None,
    };
    let response = match early {
        Some(response) => response,
        None => next.run(request).await,
    };
    inner.state().calls.push(CallRecord {
        route: format!("{method} {route}"),
        method,
        status: response.status().as_u16(),
    });
    response
}

fn oauth_error(e: OAuthError) -> Response {
    let body = json!({"error": e.error, "error_description": e.description});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn invalid(error: &'static str, description: &str) -> OAuthError {
    OAuthError {
        error,
        description: description.to_owned(),
    }
}

async fn access_token(State(inner): Shared, headers: HeaderMap, body: Bytes) -> Response {
    match grant(&inner, &headers, &body) {
        Ok(response) => response,
        Err(e) => oauth_error(e),
    }
}

fn grant(inner: &Inner, headers: &HeaderMap, body: &[u8]) -> Result<Response, OAuthError> {
    let form = token::parse_form(body);
    if form.get("client_id").map(String::as_str) != Some(token::CLIENT_ID) {
        return Err(invalid(
            "invalid_client",
            "client_id must be service-account",
        ));
    }
    if form.get("grant_type").map(String::as_str) != Some(token::GRANT_TYPE) {
        return Err(invalid(
            "unsupported_grant_type",
            "grant_type must be the JWT bearer grant",
        ));
    }
    let assertion = form
        .get("assertion")
        .ok_or_else(|| invalid("invalid_request", "assertion is missing"))?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let audience = token::expected_audience(host);
    let accepted = token::verify_assertion(
        assertion,
        &Expectations {
            service_account_id: &inner.service_account_id,
            modulus: &inner.public_modulus,
            exponent: &inner.public_exponent,
            audience: &audience,
            now: jiff::Timestamp::now().as_second(),
        },
    )?;
    if !inner.state().seen_jtis.insert(accepted.jti) {
        return Err(invalid("invalid_grant", "jti has already been used"));
    }
    let scopes = token::granted_scopes(form.get("scope").map(String::as_str), &inner.scopes)?;
    let scope = scopes.join(" ");
    let (access_token, lifetime) = inner.issue_token(scopes);
    Ok(ok_json(json!({
        "access_token": access_token,
        "scope": scope,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    })))
}

// --- CSRs ---

async fn list_csrs(State(inner): Shared) -> Response {
    let state = inner.state();
    let views: Vec<_> = state
        .csrs
        .iter()
        .filter(|c| !c.deleted)
        .map(tenant::csr_view)
        .collect();
    ok_json(views)
}

async fn get_csr(State(inner): Shared, Path(id): Path<String>) -> Response {
    let state = inner.state();
    match state.csrs.iter().find(|c| c.id == id && !c.deleted) {
        Some(csr) => ok_json(tenant::csr_view(csr)),
        None => not_found(),
    }
}

async fn create_csr(State(inner): Shared, body: Bytes) -> Response {
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let (subject, algorithm) = match tenant::parse_csr_request(&request) {
        Ok(parsed) => parsed,
        Err(e) => return bad_request(e),
    };
    // RSA key generation takes a while; keep it off the async workers.
    let made = tokio::task::spawn_blocking(move || {
        tenant::new_csr(&subject, algorithm, jiff::Timestamp::now())
    })
    .await;
    match made {
        Ok(Ok(csr)) => {
            let view = tenant::csr_view(&csr);
            inner.state().csrs.push(csr);
            if inner.knobs.take_lost_create() {
                return lost_answer();
            }
            ok_json(view)
        }
        Ok(Err(e)) => bad_request(e),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "CSR generation failed"),
    }
}

async fn complete_csr(State(inner): Shared, Path(id): Path<String>, body: Bytes) -> Response {
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let Some(chain) = request.get("certificate").and_then(Value::as_str) else {
        return error(StatusCode::BAD_REQUEST, "certificate is required");
    };
    let mut state = inner.state();
    let Some(index) = state.csrs.iter().position(|c| c.id == id && !c.deleted) else {
        return not_found();
    };
    if state.csrs[index].certificate_id.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "This CSR already has a certificate",
        );
    }
    let mut cert = match tenant::new_certificate(chain, &state.csrs[index].key_pem) {
        Ok(cert) => cert,
        Err(e) => return bad_request(e),
    };
    cert.csr_id = Some(id);
    state.csrs[index].certificate_id = Some(cert.id.clone());
    state.certs.push(cert);
    ok_json(tenant::csr_view(&state.csrs[index]))
}

/// An unknown or already deleted id answers 404 with an empty body, as GET does: a client must
/// take that as "already gone" (a lost answer to its own DELETE ends the same way).
async fn delete_csr(State(inner): Shared, Path(id): Path<String>) -> Response {
    match inner
        .state()
        .csrs
        .iter_mut()
        .find(|c| c.id == id && !c.deleted)
    {
        Some(csr) => {
            csr.deleted = true;
            StatusCode::OK.into_response()
        }
        None => not_found(),
    }
}

// --- certificates ---

async fn list_certificates(State(inner): Shared) -> Response {
    let now = Instant::now();
    let lagging = inner.knobs.take_list_lag();
    let state = inner.state();
    let views: Vec<_> = state
        .certs
        .iter()
        .filter(|c| !c.deleted && (!lagging || c.created_by_support))
        .map(|c| tenant::certificate_view(c, now))
        .collect();
    ok_json(views)
}

async fn get_certificate(State(inner): Shared, Path(id): Path<String>) -> Response {
    let now = Instant::now();
    let state = inner.state();
    match state.certs.iter().find(|c| c.id == id && !c.deleted) {
        Some(cert) => ok_json(tenant::certificate_view(cert, now)),
        None => not_found(),
    }
}

async fn upload_certificate(State(inner): Shared, body: Bytes) -> Response {
    if inner.knobs.take_upload_failure() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable");
    }
    if inner.knobs.take_upload_rejection() {
        return error(StatusCode::BAD_REQUEST, "Invalid certificate chain");
    }
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str);
    let (Some(chain), Some(key)) = (field("certificate"), field("privateKey")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "certificate and privateKey are required",
        );
    };
    if !key.trim_start().starts_with("-----BEGIN PRIVATE KEY-----") {
        return error(
            StatusCode::BAD_REQUEST,
            "privateKey must be an unencrypted PKCS#8 PEM (BEGIN PRIVATE KEY)",
        );
    }
    let active = match request.get("active") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(active)) => *active,
        Some(_) => return error(StatusCode::BAD_REQUEST, "active must be a boolean"),
    };
    let mut cert = match tenant::new_certificate(chain, key) {
        Ok(cert) => cert,
        Err(e) => return bad_request(e),
    };
    let (now, delay) = (Instant::now(), inner.knobs.live_delay());
    tenant::set_active(&mut cert, active, now, delay);
    let view = tenant::certificate_view(&cert, now);
    inner.state().certs.push(cert);
    if inner.knobs.take_lost_create() {
        return lost_answer();
    }
    ok_json(view)
}

async fn patch_certificate(State(inner): Shared, Path(id): Path<String>, body: Bytes) -> Response {
    let (now, delay) = (Instant::now(), inner.knobs.live_delay());
    let mut state = inner.state();
    let Some(cert) = state.certs.iter_mut().find(|c| c.id == id && !c.deleted) else {
        return not_found();
    };
    let request = match json_body(&body) {
        Ok(v) => v,
        Err(e) => return bad_request(e),
    };
    match tenant::parse_active_patch(&request) {
        Ok(active) => {
            // An eventually consistent read path may answer with the view before the change.
            let before = tenant::certificate_view(cert, now);
            tenant::set_active(cert, active, now, delay);
            if inner.knobs.take_stale_patch_answer() {
                return ok_json(before);
            }
            ok_json(tenant::certificate_view(cert, now))
        }
        Err(e) => bad_request(e),
    }
}

async fn delete_certificate(State(inner): Shared, Path(id): Path<String>) -> Response {
    let (now, window) = (Instant::now(), inner.knobs.delete_500_window());
    let mut state = inner.state();
    let Some(cert) = state.certs.iter_mut().find(|c| c.id == id && !c.deleted) else {
        return not_found();
    };
    match tenant::delete_outcome(cert, now, window) {
        DeleteOutcome::Active => error(
            StatusCode::BAD_REQUEST,
            "Cannot delete an active certificate, de-activate it first",
        ),
        DeleteOutcome::StillDetaching => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        DeleteOutcome::Deleted => {
            cert.deleted = true;
            StatusCode::OK.into_response()
        }
    }
}

// --- simulator control ---

async fn get_knobs(State(inner): Shared) -> Response {
    ok_json(inner.knobs.snapshot())
}

async fn set_knobs(State(inner): Shared, body: Bytes) -> Response {
    match serde_json::from_slice::<KnobsView>(&body) {
        Ok(update) => {
            inner.knobs.apply(&update);
            ok_json(inner.knobs.snapshot())
        }
        Err(e) => error(StatusCode::BAD_REQUEST, format!("invalid knobs: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn routes_name_ids_generically() {
        assert_eq!(
            route_template("/environment/certificates/ccrt-1"),
            "/environment/certificates/{id}"
        );
        assert_eq!(
            route_template("/environment/csrs/abc"),
            "/environment/csrs/{id}"
        );
        assert_eq!(route_template("/environment/csrs"), "/environment/csrs");
        assert_eq!(
            route_template("/environment/csrs/a/b"),
            "/environment/csrs/a/b"
        );
    }
}
