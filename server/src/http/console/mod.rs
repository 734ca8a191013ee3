//! The web console at `/console`: server-rendered pages (maud) for nurses, the program manager
//! and billing staff. Sessions are HttpOnly + Secure + SameSite=Strict cookies; every form carries
//! the session's CSRF token; every page is scoped to the user's facilities; every patient view is
//! audited. No scripts: the pages work on a tablet's browser as plain HTML.

// Helpers return a ready `Response` as their error so handlers can `return` it directly.
#![allow(clippy::result_large_err)]

mod chart;
mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::server::Shared;
use crate::services::accounts::{self, AccountError, Session, User};
use crate::services::security::AuditRecord;

const SESSION_COOKIE: &str = "rounds_session";
const LOGIN_CSRF_COOKIE: &str = "rounds_login_csrf";

const CSS: &str = r#"
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2433;background:#f6f7f9;font-size:16px}
header{background:#1f3a5f;color:#fff;padding:.6rem 1rem;display:flex;gap:1.2rem;align-items:center;flex-wrap:wrap}
header a{color:#fff;text-decoration:none;font-weight:500}header .who{margin-left:auto;opacity:.9}
header form{display:inline}header button{background:none;border:1px solid #fff;color:#fff;border-radius:4px;padding:.2rem .6rem}
main{padding:1rem;max-width:1200px;margin:auto}
h1{font-size:1.4rem;margin:.2rem 0 1rem}h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0001}
th,td{padding:.45rem .6rem;border-bottom:1px solid #e4e7ec;text-align:left;vertical-align:top}
th a{color:inherit}tr:hover td{background:#f0f5ff}
.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:9px;font-size:.85rem;background:#e4e7ec}
.urgent{background:#fde2e1;color:#9b1c1c}.warning{background:#fef3c7;color:#92400e}.ok{background:#dcfce7;color:#166534}
.empty{padding:1.2rem;background:#fff;border:1px dashed #c5cbd6;color:#556}
.error{padding:.8rem;background:#fde2e1;color:#9b1c1c;border-radius:4px;margin-bottom:1rem}
.notice{padding:.8rem;background:#dcfce7;color:#166534;border-radius:4px;margin-bottom:1rem}
form.inline{display:inline}form.filters{display:flex;gap:.6rem;flex-wrap:wrap;margin-bottom:.8rem;align-items:end}
input,select,button{font-size:1rem;padding:.35rem .5rem}button{cursor:pointer}
.card{background:#fff;padding:.8rem 1rem;box-shadow:0 1px 2px #0001;margin-bottom:.8rem}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.8rem}
.chart svg{max-width:100%;height:auto}
.login{max-width:360px;margin:4rem auto;background:#fff;padding:1.5rem;box-shadow:0 1px 3px #0002}
.login input{width:100%;box-sizing:border-box;margin:.2rem 0 .8rem}
.muted{color:#667}
"#;

/// A signed-in request: the user, the session and its cookie value.
pub struct Ctx {
    pub user: User,
    pub session: Session,
    sid: String,
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: i64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The signed-in user, or a redirect to the login page.
pub fn ctx(shared: &Shared, headers: &HeaderMap) -> Result<Ctx, Response> {
    let sid = cookie(headers, SESSION_COOKIE).unwrap_or_default();
    match shared.accounts.session(sid, Utc::now()) {
        Some((session, user)) => Ok(Ctx {
            user,
            session,
            sid: sid.to_string(),
        }),
        None => Err(Redirect::to("/console/login").into_response()),
    }
}

/// Handlers take a `Ctx` argument: signed in, or redirected to the login page.
impl axum::extract::FromRequestParts<Arc<Shared>> for Ctx {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        shared: &Arc<Shared>,
    ) -> Result<Self, Self::Rejection> {
        ctx(shared, &parts.headers)
    }
}

/// Refuse a form post whose CSRF token is not the session's.
pub fn check_csrf(ctx: &Ctx, form: &HashMap<String, String>) -> Result<(), Response> {
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if crate::services::auth::constant_time_eq(given.as_bytes(), ctx.session.csrf.as_bytes()) {
        Ok(())
    } else {
        Err(error_page(
            Some(ctx),
            StatusCode::FORBIDDEN,
            "This form has expired or did not come from this console (missing or wrong CSRF token). Reload the page and try again.",
        ))
    }
}

/// A full page with the navigation, and the security headers every page carries.
pub fn page(ctx: Option<&Ctx>, title: &str, body: Markup) -> Response {
    page_with(StatusCode::OK, ctx, title, body)
}

pub fn page_with(status: StatusCode, ctx: Option<&Ctx>, title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Rounds" }
                style { (PreEscaped(CSS)) }
            }
            body {
                @if let Some(c) = ctx {
                    header {
                        strong { "Rounds" }
                        a href="/console/" { "Worklist" }
                        @if c.user.role.can_bill() {
                            a href="/console/close" { "Month close" }
                            a href="/console/push" { "Push status" }
                        }
                        @if c.user.is_company() {
                            a href="/console/company" { "Practices" }
                        } @else if let Some(p) = c.user.practices.first() {
                            a href=(format!("/console/summary?practice={}", crate::http::urlencode(p))) { "Practice summary" }
                        }
                        @if c.user.role.is_admin() {
                            a href="/console/devices" { "Devices" }
                            a href="/console/audit" { "Audit" }
                        }
                        span.who { (c.user.username) " (" (c.user.role.as_str()) ")" }
                        form method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(c.session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    let mut resp = (status, markup.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

pub fn error_page(ctx: Option<&Ctx>, status: StatusCode, message: &str) -> Response {
    page_with(
        status,
        ctx,
        status.canonical_reason().unwrap_or("Error"),
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
            div.error { (message) }
            p { a href="/console/" { "Back to the worklist" } }
        },
    )
}

/// 403 for a facility the user does not belong to; audited.
pub fn forbidden(shared: &Shared, ctx: &Ctx, facility: &str, patient: Option<&str>) -> Response {
    let mut a = AuditRecord::new("console-denied");
    a.device = Some(format!("user:{}", ctx.user.username));
    a.facility = Some(facility.to_string());
    a.patient = patient.map(str::to_string);
    shared.security.record(a);
    tracing::warn!(user = %ctx.user.username, facility, "console access denied");
    error_page(
        Some(ctx),
        StatusCode::FORBIDDEN,
        if patient.is_some() {
            "You do not have access to this patient."
        } else {
            "You do not have access to this facility."
        },
    )
}

/// 403 for a practice the user does not work for; audited.
pub fn forbidden_practice(shared: &Shared, ctx: &Ctx, practice: &str) -> Response {
    let mut a = AuditRecord::new("console-denied");
    a.device = Some(format!("user:{}", ctx.user.username));
    a.detail = Some(format!("practice {practice}"));
    shared.security.record(a);
    tracing::warn!(user = %ctx.user.username, practice, "console access denied");
    error_page(
        Some(ctx),
        StatusCode::FORBIDDEN,
        "You do not have access to this practice.",
    )
}

/// Audit an action of a console user.
pub fn audit(
    shared: &Shared,
    ctx: &Ctx,
    action: &str,
    facility: Option<&str>,
    patient: Option<&str>,
    detail: Option<String>,
) {
    let mut a = AuditRecord::new(action);
    a.device = Some(format!("user:{}", ctx.user.username));
    a.facility = facility.map(str::to_string);
    a.patient = patient.map(str::to_string);
    a.detail = detail;
    shared.security.record(a);
}

async fn login_form(headers: HeaderMap) -> Response {
    login_page(&headers, None)
}

fn login_page(headers: &HeaderMap, error: Option<&str>) -> Response {
    let token = cookie(headers, LOGIN_CSRF_COOKIE)
        .map(str::to_string)
        .or_else(|| accounts::random_token(16).ok())
        .unwrap_or_default();
    let mut resp = page_with(
        if error.is_some() {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::OK
        },
        None,
        "Sign in",
        html! {
            div.login {
                h1 { "Rounds — sign in" }
                @if let Some(e) = error { div.error { (e) } }
                form method="post" action="/console/login" {
                    input type="hidden" name="csrf" value=(token);
                    label for="username" { "Username" }
                    input #username name="username" autocomplete="username" required;
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                    button type="submit" { "Sign in" }
                }
            }
        },
    );
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_CSRF_COOKIE, &token, 3600),
    );
    resp
}

/// How long a sign-in waits for a free password-hashing slot before it is turned away.
const SIGN_IN_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

async fn login(
    State(shared): State<Arc<Shared>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if expected.is_empty()
        || !crate::services::auth::constant_time_eq(given.as_bytes(), expected.as_bytes())
    {
        return error_page(
            None,
            StatusCode::FORBIDDEN,
            "The sign-in form expired (missing or wrong CSRF token). Open the sign-in page again.",
        );
    }
    let username = form.get("username").cloned().unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let client = shared.limits.network.client_ip(peer, &headers);
    let busy = |why: &str| {
        shared.metrics.sign_ins_refused.inc();
        let mut a = AuditRecord::new("console-login-refused");
        a.device = Some(format!("user:{username}"));
        a.detail = Some(format!("{why} (from {client})"));
        shared.audit_noisy(&client.to_string(), why, a);
        error_page(
            None,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many sign-in attempts right now. Wait a minute and try again.",
        )
    };
    // Limits before any password work: per client address and per account, then a bounded
    // number of password hashes at once (a flood waits briefly, then is turned away).
    if !shared.admit_sign_in(&client.to_string(), &username) {
        return busy("rate limited");
    }
    let Ok(Ok(_slot)) = tokio::time::timeout(SIGN_IN_WAIT, shared.sign_in_slots.acquire()).await
    else {
        return busy("every password check busy");
    };
    let s2 = shared.clone();
    let u2 = username.clone();
    let result = shared
        .hashers
        .run(move || s2.accounts.login(&u2, &password, Utc::now()))
        .await
        .unwrap_or(Err(AccountError::Store("login task failed".into())));
    let mut a = AuditRecord::new(match &result {
        Ok(_) => "console-login",
        Err(AccountError::Locked(_)) => "console-login-locked",
        Err(_) => "console-login-failed",
    });
    a.device = Some(format!("user:{username}"));
    a.detail = Some(format!("from {client}"));
    match &result {
        // Failed and locked-out attempts are anyone's to repeat: aggregated per client address
        // and account (the first of each in full).
        Err(AccountError::BadCredentials | AccountError::Locked(_)) => {
            let why = format!("{} user:{username}", a.action);
            shared.audit_noisy(&client.to_string(), &why, a);
        }
        _ => shared.security.record(a),
    }
    match result {
        Ok((sid, _)) => {
            let mut resp = Redirect::to("/console/").into_response();
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                set_cookie(SESSION_COOKIE, &sid, accounts::SESSION_HOURS * 3600),
            );
            h.append(header::SET_COOKIE, set_cookie(LOGIN_CSRF_COOKIE, "", 0));
            resp
        }
        Err(AccountError::Locked(until)) => login_page(
            &headers,
            Some(&format!(
                "Too many failed attempts: this account is locked until {} UTC.",
                until.format("%Y-%m-%d %H:%M")
            )),
        ),
        Err(AccountError::BadCredentials) => {
            login_page(&headers, Some("Wrong username or password."))
        }
        Err(e) => {
            tracing::error!(error = %e, "login failed");
            login_page(&headers, Some("Sign-in is not available right now."))
        }
    }
}

async fn logout(
    State(shared): State<Arc<Shared>>,
    c: Ctx,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_csrf(&c, &form) {
        return r;
    }
    shared.accounts.logout(&c.sid);
    audit(&shared, &c, "console-logout", None, None, None);
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut()
        .append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    resp
}

/// The console's routes (mounted at the server root).
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", post(logout))
        .route("/console/", get(pages::worklist))
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/patient", get(pages::patient))
        .route(
            "/console/close",
            get(pages::close_page).post(pages::close_month),
        )
        .route("/console/push-month", post(pages::push_month))
        .route("/console/download", get(pages::download))
        .route("/console/summary", get(pages::practice_summary))
        .route("/console/summary.csv", get(pages::practice_summary_csv))
        .route("/console/company", get(pages::company))
        .route("/console/company.csv", get(pages::company_csv))
        .route(
            "/console/practices",
            get(pages::practices_page).post(pages::practices_post),
        )
        .route(
            "/console/push",
            get(pages::push_status).post(pages::push_retry),
        )
        .route(
            "/console/devices",
            get(pages::devices).post(pages::devices_post),
        )
        .route("/console/audit", get(pages::audit_page))
        .route("/api/v1/users", get(api_users).post(api_add_user))
}

#[derive(serde::Deserialize)]
pub struct NewUser {
    username: String,
    role: accounts::Role,
    #[serde(default)]
    facilities: Vec<String>,
    #[serde(default)]
    practices: Vec<String>,
    password: String,
}

/// `POST /api/v1/users` (admin token): create a console account.
pub async fn api_add_user(
    _: crate::http::api_error::Admin,
    State(shared): State<Arc<Shared>>,
    axum::Json(b): axum::Json<NewUser>,
) -> Result<axum::Json<serde_json::Value>, crate::http::api_error::ApiError> {
    let u = shared
        .add_console_user(b.username, b.password, b.role, b.facilities, b.practices)
        .await?;
    Ok(axum::Json(
        serde_json::json!({"username": u.username, "role": u.role, "facilities": u.facilities, "practices": u.practices}),
    ))
}

/// `GET /api/v1/users` (admin token).
pub async fn api_users(
    _: crate::http::api_error::Admin,
    State(shared): State<Arc<Shared>>,
) -> axum::Json<Vec<serde_json::Value>> {
    axum::Json(
        shared
            .accounts
            .users()
            .into_iter()
            .map(|u| serde_json::json!({"username": u.username, "role": u.role, "facilities": u.facilities, "practices": u.practices, "created_at": u.created_at}))
            .collect(),
    )
}
