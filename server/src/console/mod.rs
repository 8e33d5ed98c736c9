//! The web console at `/console`, served by `communesync serve`: the province sees its communes.
//!
//! The contract.
//! - Operators log in with a username and password (argon2id hash, accounts made by
//!   `communesync admin create-operator`). A login creates a session stored in the database
//!   (so every replica knows it): a random token in a cookie (`HttpOnly`, `SameSite=Strict`,
//!   `Path=/console`, `Secure` when [`crate::http::ServerConfig::secure_cookies`] says the server
//!   is reached over HTTPS), valid for [`SESSION_HOURS`] hours, ended by logout.
//! - Every POST carries the session's CSRF token (a hidden form field), compared in constant
//!   time; a POST without it, or with another, changes nothing (403). `SameSite=Strict` is the
//!   second fence.
//! - Login attempts are limited per client address with the enrollment-attempt counters of
//!   storage (shared by replicas): [`LOGIN_ATTEMPTS`] per 15 minutes, then 429.
//! - Roles: `viewer` reads every page and downloads exports; `operator` also issues enrollment
//!   codes and revokes tablets; `admin` also revokes with wipe and publishes catalogues. A
//!   refused action is a 403 and is audited as refused.
//! - Every operator action (login, logout, refused login, code issued, revocation, catalogue
//!   published, export downloaded, refused action) is appended to the audit log (who, what, when)
//!   shown on the audit page.
//! - Pages are rendered on the server (plain HTML, inline SVG charts, no script), in Vietnamese
//!   or English (cookie `cs_lang`, switched by a link on every page); nothing is loaded from
//!   elsewhere.

mod html;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::Router;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use communesync_core::record::{DeviceId, RecordId};
use serde::Deserialize;

use crate::http::{AppState, RecordFilters, client_addr, hash_secret, new_token};
use crate::reports::{self, Format};
use crate::storage::{ConsoleSession, Scope, ServerStorage, StorageError};
use html::{esc, t, url};

/// Session lifetime.
pub const SESSION_HOURS: i64 = 12;
/// Login attempts per client address per window.
pub const LOGIN_ATTEMPTS: u32 = 10;
const LOGIN_WINDOW_MS: i64 = 15 * 60 * 1000;
const SESSION_COOKIE: &str = "cs_session";
const LANG_COOKIE: &str = "cs_lang";
/// Days without a sync after which a tablet is flagged silent.
pub const SILENT_DAYS: i64 = 3;
/// Waiting documents from which a tablet's queue is flagged.
pub const QUEUE_ALARM: u64 = 50;

/// The console's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Tiếng Việt (the default).
    Vi,
    /// English.
    En,
}

/// Roles, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads pages and exports.
    Viewer,
    /// Also enrolls and revokes tablets.
    Operator,
    /// Also wipes tablets and publishes catalogues.
    Admin,
}

impl Role {
    /// The role named `name`.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// Hashes a password for storage (argon2id, random salt, the crate's default cost).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Creates an operator account (`communesync admin create-operator`).
pub async fn create_operator(
    storage: &dyn ServerStorage,
    username: &str,
    password: &str,
    role: &str,
    now: i64,
) -> Result<(), String> {
    let username = username.trim();
    if username.is_empty() || username.len() > 64 || username.chars().any(char::is_whitespace) {
        return Err("a username is 1 to 64 characters without spaces".into());
    }
    if Role::parse(role).is_none() {
        return Err("the role is viewer, operator or admin".into());
    }
    if password.chars().count() < 12 {
        return Err("a password has at least 12 characters".into());
    }
    let hash = hash_password(password)?;
    storage
        .create_operator(username, &hash, role, now)
        .await
        .map_err(|e| match e {
            StorageError::AlreadyExists => format!("operator {username} already exists"),
            other => other.to_string(),
        })
}

/// The console's routes (merged into the server's router).
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/console", get(dashboard))
        .route("/console/", get(dashboard))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/lang", get(switch_lang))
        .route("/console/records", get(records))
        .route("/console/records/{id}", get(record))
        .route("/console/fleet", get(fleet))
        .route("/console/enrollment", get(enrollment))
        .route("/console/enrollment/codes", post(issue_code))
        .route("/console/devices/{id}/revoke", post(revoke))
        .route("/console/catalogue", get(catalogue))
        .route("/console/catalogue/check", post(check_catalogue))
        .route("/console/catalogue/publish", post(publish_catalogue))
        .route("/console/exports", get(exports))
        .route("/console/exports/report", get(export_report))
        .route("/console/exports/records", get(export_records))
        .route("/console/audit", get(audit))
}

// --- requests ---------------------------------------------------------------------------------

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

fn lang(headers: &HeaderMap) -> Lang {
    match cookie(headers, LANG_COOKIE) {
        Some("en") => Lang::En,
        _ => Lang::Vi,
    }
}

/// A logged-in request.
struct Operator {
    session: ConsoleSession,
    role: Role,
    lang: Lang,
    token_hash: [u8; 32],
}

impl Operator {
    fn page(&self, title: &str, body: &str) -> Response {
        html_response(
            StatusCode::OK,
            html::page(
                self.lang,
                title,
                Some((&self.session.operator.username, &self.session.operator.role)),
                &self.session.csrf,
                body,
            ),
        )
    }

    fn name(&self) -> &str {
        &self.session.operator.username
    }
}

fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing of the console is framed, cached or scripted from elsewhere.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// The operator of a request, or the login page.
async fn operator(state: &AppState, headers: &HeaderMap) -> Result<Operator, Response> {
    let to_login = || Redirect::to("/console/login").into_response();
    let Some(token) = cookie(headers, SESSION_COOKIE) else {
        return Err(to_login());
    };
    let token_hash = hash_secret(token);
    let session = state
        .storage
        .session(token_hash, state.clock.now_ms())
        .await
        .map_err(|e| storage_failure(lang(headers), e))?;
    let Some(session) = session else {
        return Err(to_login());
    };
    let role = Role::parse(&session.operator.role).unwrap_or(Role::Viewer);
    Ok(Operator {
        session,
        role,
        lang: lang(headers),
        token_hash,
    })
}

fn storage_failure(lang: Lang, error: StorageError) -> Response {
    tracing::error!(%error, "console: storage error");
    crate::metrics::storage_error("backend");
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        html::page(
            lang,
            "Error",
            None,
            "",
            "<p class=\"error\">storage error</p>",
        ),
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the CSRF token and the role of a POST; audits a refusal.
async fn allow(
    state: &AppState,
    who: &Operator,
    csrf: &str,
    needed: Role,
    action: &str,
) -> Result<(), Response> {
    let now = state.clock.now_ms();
    if !constant_time_eq(csrf.as_bytes(), who.session.csrf.as_bytes()) {
        let _ = state
            .storage
            .append_audit(who.name(), "refused_csrf", action, now)
            .await;
        return Err(error_page(who, StatusCode::FORBIDDEN, "csrf"));
    }
    if who.role < needed {
        let _ = state
            .storage
            .append_audit(who.name(), "refused_role", action, now)
            .await;
        return Err(error_page(who, StatusCode::FORBIDDEN, "forbidden"));
    }
    Ok(())
}

fn error_page(who: &Operator, status: StatusCode, key: &str) -> Response {
    let mut response = who.page(
        t(who.lang, key),
        &format!("<p class=\"error\" id=\"error\">{}</p>", t(who.lang, key)),
    );
    *response.status_mut() = status;
    response
}

async fn audit_action(state: &AppState, who: &str, action: &str, detail: &str) {
    if let Err(error) = state
        .storage
        .append_audit(who, action, detail, state.clock.now_ms())
        .await
    {
        tracing::error!(%error, action, "console: audit entry not written");
    }
}

fn day_time(ms: i64) -> String {
    let text = reports::rfc3339(ms);
    text.get(..16).unwrap_or(&text).replace('T', " ")
}

fn opt_time(ms: Option<i64>) -> String {
    ms.map(day_time).unwrap_or_else(|| "—".into())
}

// --- login ------------------------------------------------------------------------------------

async fn login_page(headers: HeaderMap) -> Response {
    login_form(lang(&headers), StatusCode::OK, "")
}

fn login_form(lang: Lang, status: StatusCode, message: &str) -> Response {
    let body = format!(
        "{message}<form method=\"post\" action=\"/console/login\" id=\"login-form\">\
         <p><label>{}<br><input name=\"username\" id=\"username\" autocomplete=\"username\" required></label></p>\
         <p><label>{}<br><input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label></p>\
         <p><button id=\"login\">{}</button></p></form>",
        t(lang, "username"),
        t(lang, "password"),
        t(lang, "login")
    );
    html_response(status, html::page(lang, t(lang, "login"), None, "", &body))
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    password: String,
}

async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let lang = lang(&headers);
    let now = state.clock.now_ms();
    let ip = client_addr::client_ip(peer.ip(), &headers, &state.config.trusted_proxies);
    let source = format!("console-login:{}", client_addr::source_key(ip));
    let attempt = match state
        .storage
        .reserve_enrollment_attempt(&source, now, LOGIN_WINDOW_MS)
        .await
    {
        Ok(attempt) => attempt,
        Err(e) => return storage_failure(lang, e),
    };
    if attempt > LOGIN_ATTEMPTS {
        return login_form(
            lang,
            StatusCode::TOO_MANY_REQUESTS,
            &format!(
                "<p class=\"error\" id=\"error\">{}</p>",
                t(lang, "too_many")
            ),
        );
    }
    let username = form.username.trim();
    let account = match state.storage.operator(username).await {
        Ok(account) => account,
        Err(e) => return storage_failure(lang, e),
    };
    // Hashing runs on the blocking pool (tens of ms of CPU); an unknown name is verified against
    // a fixed hash too, so that timing does not tell which names exist.
    let stored = account
        .as_ref()
        .filter(|a| !a.disabled)
        .map(|a| a.password_hash.clone());
    let password = form.password.clone();
    let verified = tokio::task::spawn_blocking(move || match stored {
        Some(hash) => verify_password(&password, &hash),
        None => {
            let _ = verify_password(&password, DUMMY_HASH);
            false
        }
    })
    .await
    .unwrap_or(false);
    if !verified {
        audit_action(&state, &esc_name(username), "login_failed", "").await;
        return login_form(
            lang,
            StatusCode::UNAUTHORIZED,
            &format!(
                "<p class=\"error\" id=\"error\">{}</p>",
                t(lang, "login_failed")
            ),
        );
    }
    let _ = state.storage.refund_enrollment_attempt(&source, now).await;
    let token = new_token();
    let csrf = new_token();
    let expires = now + SESSION_HOURS * 3_600_000;
    if let Err(e) = state
        .storage
        .create_session(hash_secret(&token), username, &csrf, now, expires)
        .await
    {
        return storage_failure(lang, e);
    }
    audit_action(&state, username, "login", "").await;
    let secure = if state.config.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let mut response = Redirect::to("/console").into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// A username as typed, bounded for the audit log.
fn esc_name(name: &str) -> String {
    crate::storage::truncate_utf8(name, 64).to_owned()
}

/// A valid argon2id hash of a random password, for unknown usernames.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Vn5bQ1Hq2jSXcZV0VVdXWYJ6+7n1uB3G2wQnYb3l2y8";

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let who = match operator(&state, &headers).await {
        Ok(who) => who,
        Err(response) => return response,
    };
    if let Err(response) = allow(&state, &who, &form.csrf, Role::Viewer, "logout").await {
        return response;
    }
    let _ = state.storage.delete_session(who.token_hash).await;
    audit_action(&state, who.name(), "logout", "").await;
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "cs_session=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[derive(Deserialize)]
struct LangQuery {
    to: String,
}

async fn switch_lang(headers: HeaderMap, Query(query): Query<LangQuery>) -> Response {
    let to = if query.to == "en" { "en" } else { "vi" };
    let back = headers
        .get(header::REFERER)
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.find("/console").map(|at| r[at..].to_owned()))
        .unwrap_or_else(|| "/console".into());
    let mut response = Redirect::to(&back).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={to}; Path=/console; SameSite=Strict; Max-Age=31536000"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

// --- pages ------------------------------------------------------------------------------------

macro_rules! logged_in {
    ($state:expr, $headers:expr) => {
        match operator(&$state, &$headers).await {
            Ok(who) => who,
            Err(response) => return response,
        }
    };
}

macro_rules! or_fail {
    ($who:expr, $result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => return storage_failure($who.lang, error.into()),
        }
    };
}

async fn dashboard(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let who = logged_in!(state, headers);
    let lang = who.lang;
    let lines = or_fail!(
        who,
        crate::http::dashboard(state.storage.as_ref(), state.clock.now_ms()).await
    );
    let mut rows = String::new();
    for line in &lines {
        let s = &line.summary;
        rows.push_str(&format!(
            "<tr data-commune=\"{c}\"><td>{c}</td><td class=\"week\">{}</td><td class=\"month\">{}</td>\
             <td class=\"open\">{}</td><td class=\"rate\">{}</td><td class=\"overdue\">{}</td></tr>",
            s.received_this_week,
            s.received_this_month,
            s.open,
            line.on_time_rate
                .map_or_else(|| "—".to_owned(), |r| format!("{:.0}%", r * 100.0)),
            if s.overdue > 0 {
                format!("<a href=\"/console/records?commune={}&amp;overdue=1\">{}</a>", url(&s.commune), s.overdue)
            } else {
                "0".into()
            },
            c = esc(&s.commune),
        ));
    }
    let received: Vec<(String, f64)> = lines
        .iter()
        .map(|l| {
            (
                l.summary.commune.clone(),
                l.summary.received_this_month as f64,
            )
        })
        .collect();
    let rates: Vec<(String, f64)> = lines
        .iter()
        .filter_map(|l| Some((l.summary.commune.clone(), l.on_time_rate? * 100.0)))
        .collect();
    let body = format!(
        "<table id=\"dashboard\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>{rows}</table>\
         <h2>{}</h2>{}<h2>{}</h2>{}",
        t(lang, "commune"),
        t(lang, "received_week"),
        t(lang, "received_month"),
        t(lang, "in_progress"),
        t(lang, "on_time_rate"),
        t(lang, "overdue"),
        t(lang, "received_month"),
        html::bar_chart("chart-received", &received, ""),
        t(lang, "on_time_rate"),
        html::bar_chart("chart-on-time", &rates, "%"),
    );
    who.page(t(lang, "dashboard"), &body)
}

fn filters_form(lang: Lang, f: &RecordFilters) -> String {
    let v = |value: &Option<String>| esc(value.as_deref().unwrap_or(""));
    format!(
        "<form method=\"get\" action=\"/console/records\" id=\"search-form\">\
         <input name=\"name\" id=\"search-name\" placeholder=\"{}\" value=\"{}\">\
         <input name=\"id_number\" placeholder=\"{}\" value=\"{}\">\
         <input name=\"dossier_number\" placeholder=\"{}\" value=\"{}\">\
         <input name=\"commune\" placeholder=\"{}\" value=\"{}\">\
         <input name=\"status\" placeholder=\"{}\" value=\"{}\">\
         <label><input type=\"checkbox\" name=\"overdue\" value=\"true\"{}> {}</label>\
         <button id=\"search\">{}</button></form>",
        t(lang, "name"),
        v(&f.name),
        t(lang, "id_number"),
        v(&f.id_number),
        t(lang, "dossier_number"),
        v(&f.dossier_number),
        t(lang, "commune"),
        v(&f.commune),
        t(lang, "status"),
        v(&f.status),
        if f.overdue == Some(true) {
            " checked"
        } else {
            ""
        },
        t(lang, "overdue"),
        t(lang, "search"),
    )
}

#[derive(Deserialize, Default)]
struct RecordParams {
    commune: Option<String>,
    status: Option<String>,
    name: Option<String>,
    id_number: Option<String>,
    dossier_number: Option<String>,
    overdue: Option<String>,
}

impl RecordParams {
    fn filters(&self) -> RecordFilters {
        RecordFilters {
            commune: self.commune.clone(),
            status: self.status.clone(),
            name: self.name.clone(),
            id_number: self.id_number.clone(),
            dossier_number: self.dossier_number.clone(),
            overdue: Some(matches!(self.overdue.as_deref(), Some("1" | "true" | "on"))),
            limit: Some(200),
            ..RecordFilters::default()
        }
    }
}

async fn records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(params): Query<RecordParams>,
) -> Response {
    let who = logged_in!(state, headers);
    let lang = who.lang;
    let filters = params.filters();
    let query = match filters.to_query(state.clock.now_ms()) {
        Ok(query) => query,
        Err(message) => {
            return who.page(
                t(lang, "records"),
                &format!("<p class=\"error\">{}</p>", esc(&message)),
            );
        }
    };
    let rows = or_fail!(who, state.storage.records(&query).await);
    let mut table = String::new();
    for row in &rows {
        table.push_str(&format!(
            "<tr><td><a class=\"record\" href=\"/console/records/{id}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(row.applicant_name.as_deref().unwrap_or("—")),
            esc(&row.commune),
            esc(row.procedure_code.as_deref().unwrap_or("")),
            esc(row.status.as_deref().unwrap_or("?")),
            opt_time(row.received_at),
            esc(row.due_on.as_deref().unwrap_or("")),
            if row.has_conflicts { "⚠" } else { "" },
            id = row.id,
        ));
    }
    let body = format!(
        "{}<p id=\"count\">{}</p><table id=\"records\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>{table}</table>",
        filters_form(lang, &filters),
        rows.len(),
        t(lang, "name"),
        t(lang, "commune"),
        t(lang, "procedure"),
        t(lang, "status"),
        t(lang, "received"),
        t(lang, "due"),
        t(lang, "conflicts"),
    );
    who.page(t(lang, "records"), &body)
}

async fn record(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let who = logged_in!(state, headers);
    let lang = who.lang;
    let Ok(id) = id.parse::<RecordId>() else {
        return error_page(&who, StatusCode::NOT_FOUND, "not_found");
    };
    let Some(row) = or_fail!(who, state.storage.record_row(id).await) else {
        return error_page(&who, StatusCode::NOT_FOUND, "not_found");
    };
    let history = or_fail!(
        who,
        crate::http::record_history(state.storage.as_ref(), id).await
    );
    let field = |key: &str, value: String| {
        format!("<tr><th>{}</th><td>{}</td></tr>", t(lang, key), esc(&value))
    };
    let mut facts = String::new();
    facts.push_str(&field(
        "name",
        row.applicant_name.clone().unwrap_or_default(),
    ));
    facts.push_str(&field(
        "id_number",
        row.id_number.clone().unwrap_or_default(),
    ));
    facts.push_str(&field(
        "dossier_number",
        row.dossier_number.clone().unwrap_or_default(),
    ));
    facts.push_str(&field("commune", row.commune.clone()));
    facts.push_str(&field(
        "procedure",
        row.procedure_code.clone().unwrap_or_default(),
    ));
    facts.push_str(&field("status", row.status.clone().unwrap_or_default()));
    facts.push_str(&field("received", opt_time(row.received_at)));
    facts.push_str(&field("due", row.due_on.clone().unwrap_or_default()));
    facts.push_str(&field("assignee", row.assignee.clone().unwrap_or_default()));
    facts.push_str(&field(
        "conflicts",
        if row.has_conflicts {
            "⚠".into()
        } else {
            t(lang, "none").into()
        },
    ));
    let mut changes = String::new();
    for change in &history {
        changes.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            day_time(change.device_time),
            esc(&change.officer),
            esc(&change.fields.join(", ")),
            day_time(change.received_at),
            esc(&change.pushed_by.to_string()),
        ));
    }
    let body = format!(
        "<table id=\"record\">{facts}</table><h2>{}</h2><table id=\"history\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>{changes}</table>",
        t(lang, "history"),
        t(lang, "when"),
        t(lang, "officer"),
        t(lang, "fields"),
        t(lang, "server_received"),
        t(lang, "device"),
    );
    who.page(row.applicant_name.as_deref().unwrap_or("—"), &body)
}

async fn fleet(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let who = logged_in!(state, headers);
    let lang = who.lang;
    let now = state.clock.now_ms();
    let devices = or_fail!(
        who,
        crate::http::list_devices(state.storage.as_ref(), None).await
    );
    let mut table = String::new();
    for device in &devices {
        let mut alarms = Vec::new();
        let last = device
            .last_seen_at
            .or(device.last_sync_at)
            .unwrap_or(device.enrolled_at);
        if !device.revoked && now - last > SILENT_DAYS * 86_400_000 {
            alarms.push(t(lang, "silent").replace("{}", &SILENT_DAYS.to_string()));
        }
        if device.pending_docs.unwrap_or(0) >= QUEUE_ALARM {
            alarms.push(t(lang, "growing_queue").to_owned());
        }
        if device.refused_docs > 0 {
            alarms.push(t(lang, "refused").to_owned());
        }
        table.push_str(&format!(
            "<tr data-device=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"alarm\">{}</td></tr>",
            device.id,
            esc(&device.label),
            esc(&scope_text(&device.scope)),
            opt_time(device.last_sync_at),
            device.pending_docs.map_or_else(|| "—".into(), |n| n.to_string()),
            device.refused_docs,
            if device.revoked { t(lang, "revoked") } else { "" },
            esc(&alarms.join("; ")),
        ));
    }
    let body = format!(
        "<table id=\"fleet\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th>{}</th><th></th><th>{}</th></tr>{table}</table>",
        t(lang, "device"),
        t(lang, "commune"),
        t(lang, "last_sync"),
        t(lang, "pending"),
        t(lang, "refused"),
        t(lang, "alarms"),
    );
    who.page(t(lang, "fleet"), &body)
}

fn scope_text(scope: &crate::http::ApiScope) -> String {
    match scope {
        crate::http::ApiScope::Commune(code) => code.clone(),
        crate::http::ApiScope::Province => "province".into(),
    }
}

async fn enrollment(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let who = logged_in!(state, headers);
    enrollment_page(&state, &who, "").await
}

async fn enrollment_page(state: &AppState, who: &Operator, issued: &str) -> Response {
    let lang = who.lang;
    let communes = or_fail!(who, state.storage.list_communes().await);
    let devices = or_fail!(
        who,
        crate::http::list_devices(state.storage.as_ref(), None).await
    );
    let options: String = communes
        .iter()
        .map(|c| {
            format!(
                "<option value=\"{}\">{} — {}</option>",
                esc(&c.code),
                esc(&c.code),
                esc(&c.name)
            )
        })
        .collect();
    let csrf = esc(&who.session.csrf);
    let mut table = String::new();
    for device in devices.iter().filter(|d| !d.revoked) {
        table.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>\
             <form method=\"post\" action=\"/console/devices/{id}/revoke\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button class=\"revoke\" data-device=\"{id}\">{}</button></form>\
             <form method=\"post\" action=\"/console/devices/{id}/revoke\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"wipe\" value=\"true\"><button class=\"wipe\" data-device=\"{id}\">{}</button></form></td></tr>",
            esc(&device.label),
            esc(&scope_text(&device.scope)),
            t(lang, "revoke"),
            t(lang, "revoke_wipe"),
            id = device.id,
        ));
    }
    let body = format!(
        "{issued}<h2>{}</h2><form method=\"post\" action=\"/console/enrollment/codes\" id=\"issue-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><select name=\"commune\" id=\"commune\">{options}</select>\
         <button id=\"issue\">{}</button></form><table id=\"devices\">{table}</table>",
        t(lang, "issue_code"),
        t(lang, "issue_code"),
    );
    who.page(t(lang, "enrollment"), &body)
}

#[derive(Deserialize)]
struct IssueForm {
    #[serde(default)]
    csrf: String,
    commune: String,
}

async fn issue_code(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<IssueForm>,
) -> Response {
    let who = logged_in!(state, headers);
    if let Err(response) = allow(&state, &who, &form.csrf, Role::Operator, "issue_code").await {
        return response;
    }
    let now = state.clock.now_ms();
    let scope = Scope::Commune(form.commune.clone());
    let (code, expires_at) = match crate::http::issue_enrollment_code(
        state.storage.as_ref(),
        &scope,
        Duration::from_secs(72 * 3600),
        now,
    )
    .await
    {
        Ok(issued) => issued,
        Err(StorageError::NotFound) => return error_page(&who, StatusCode::NOT_FOUND, "not_found"),
        Err(e) => return storage_failure(who.lang, e),
    };
    audit_action(
        &state,
        who.name(),
        "issue_code",
        &format!("commune {}", form.commune),
    )
    .await;
    let qr = qrcode::QrCode::new(code.as_bytes())
        .map(|qr| {
            qr.render::<qrcode::render::svg::Color<'_>>()
                .min_dimensions(200, 200)
                .build()
        })
        .unwrap_or_default();
    let issued = format!(
        "<div id=\"issued\"><p>{}: <code id=\"code\">{}</code> ({} {})</p><div id=\"qr\">{qr}</div></div>",
        t(who.lang, "code_issued"),
        esc(&code),
        t(who.lang, "expires"),
        day_time(expires_at),
    );
    enrollment_page(&state, &who, &issued).await
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    wipe: Option<String>,
}

async fn revoke(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<uuid::Uuid>,
    Form(form): Form<RevokeForm>,
) -> Response {
    let who = logged_in!(state, headers);
    let wipe = form.wipe.as_deref() == Some("true");
    let (needed, action) = if wipe {
        (Role::Admin, "revoke_wipe")
    } else {
        (Role::Operator, "revoke")
    };
    if let Err(response) = allow(&state, &who, &form.csrf, needed, action).await {
        return response;
    }
    let result = if wipe {
        state.storage.revoke_and_wipe_device(DeviceId(id)).await
    } else {
        state.storage.revoke_device(DeviceId(id)).await
    };
    match result {
        Ok(()) => {}
        Err(StorageError::NotFound) => return error_page(&who, StatusCode::NOT_FOUND, "not_found"),
        Err(e) => return storage_failure(who.lang, e),
    }
    audit_action(&state, who.name(), action, &format!("device {id}")).await;
    Redirect::to("/console/enrollment").into_response()
}

async fn catalogue(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let who = logged_in!(state, headers);
    catalogue_page(&state, &who, "").await
}

async fn catalogue_page(state: &AppState, who: &Operator, extra: &str) -> Response {
    let lang = who.lang;
    let current = or_fail!(who, state.storage.catalogue().await);
    let (version, json) = current.unwrap_or((0, String::new()));
    let body = format!(
        "{extra}<p>{}: <b id=\"catalogue-version\">{version}</b></p>\
         <form method=\"post\" action=\"/console/catalogue/check\" id=\"catalogue-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <textarea name=\"json\" id=\"catalogue-json\" rows=\"12\" cols=\"90\">{}</textarea><br>\
         <button id=\"check\">{}</button></form>",
        t(lang, "current_version"),
        esc(&who.session.csrf),
        esc(&json),
        t(lang, "upload"),
    );
    who.page(t(lang, "catalogue"), &body)
}

#[derive(Deserialize)]
struct CatalogueForm {
    #[serde(default)]
    csrf: String,
    json: String,
}

/// Procedures of a catalogue by code, as JSON values.
fn procedures(json: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()
        .and_then(|v| v.get("procedures").and_then(|p| p.as_array()).cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| Some((p.get("code")?.as_str()?.to_owned(), p)))
        .collect()
}

/// The difference between two catalogues by procedure code: added, removed, changed.
pub fn catalogue_diff(old: &str, new: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (old, new) = (procedures(old), procedures(new));
    let added = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .cloned()
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
        .map(|(k, _)| k.clone())
        .collect();
    (added, removed, changed)
}

async fn check_catalogue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<CatalogueForm>,
) -> Response {
    let who = logged_in!(state, headers);
    if let Err(response) = allow(&state, &who, &form.csrf, Role::Viewer, "check_catalogue").await {
        return response;
    }
    let lang = who.lang;
    if let Err(e) = crate::http::validate_catalogue(&form.json) {
        let extra = format!("<p class=\"error\" id=\"invalid\">{}</p>", esc(&e.message));
        return catalogue_page(&state, &who, &extra).await;
    }
    let current = or_fail!(who, state.storage.catalogue().await);
    let old = current.map(|(_, json)| json).unwrap_or_default();
    let (added, removed, changed) = catalogue_diff(&old, &form.json);
    let list = |key: &str, id: &str, codes: &[String]| {
        format!(
            "<p>{}: <span id=\"{id}\">{}</span></p>",
            t(lang, key),
            esc(&codes.join(", "))
        )
    };
    let extra = format!(
        "<div id=\"diff\"><p class=\"ok\" id=\"valid\">{}</p>{}{}{}\
         <form method=\"post\" action=\"/console/catalogue/publish\" id=\"publish-form\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"json\" value=\"{}\">\
         <button id=\"publish\">{}</button></form></div>",
        t(lang, "valid"),
        list("added", "added", &added),
        list("removed", "removed", &removed),
        list("changed", "changed", &changed),
        esc(&who.session.csrf),
        esc(&form.json),
        t(lang, "publish"),
    );
    catalogue_page(&state, &who, &extra).await
}

async fn publish_catalogue(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(form): Form<CatalogueForm>,
) -> Response {
    let who = logged_in!(state, headers);
    if let Err(response) = allow(&state, &who, &form.csrf, Role::Admin, "publish_catalogue").await {
        return response;
    }
    if let Err(e) = crate::http::validate_catalogue(&form.json) {
        let extra = format!("<p class=\"error\" id=\"invalid\">{}</p>", esc(&e.message));
        return catalogue_page(&state, &who, &extra).await;
    }
    let version = match state.storage.put_catalogue(&form.json).await {
        Ok(version) => version,
        // The file does not follow the published catalogue (a procedure changed without a new
        // version, a version lowered): the operator's to correct, nothing was published.
        Err(crate::storage::StorageError::Conflict(message)) => {
            audit_action(&state, who.name(), "publish_catalogue_refused", &message).await;
            let extra = format!("<p class=\"error\" id=\"invalid\">{}</p>", esc(&message));
            return catalogue_page(&state, &who, &extra).await;
        }
        Err(error) => return storage_failure(who.lang, error),
    };
    audit_action(
        &state,
        who.name(),
        "publish_catalogue",
        &format!("version {version}"),
    )
    .await;
    let extra = format!(
        "<p class=\"ok\" id=\"published\">{} {version}</p>",
        t(who.lang, "published")
    );
    catalogue_page(&state, &who, &extra).await
}

async fn exports(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let who = logged_in!(state, headers);
    let lang = who.lang;
    let today = reports::Periods::at(state.clock.now_ms()).today;
    let first = today
        .0
        .replace_day(1)
        .map(communesync_core::catalogue::CivilDate)
        .unwrap_or(today);
    let body = format!(
        "<h2>{}</h2><form method=\"get\" action=\"/console/exports/report\" id=\"report-form\">\
         {} <input name=\"from\" id=\"from\" value=\"{first}\"> {} <input name=\"to\" id=\"to\" value=\"{today}\">\
         <select name=\"format\" id=\"format\"><option value=\"csv\">CSV</option><option value=\"json\">JSON</option></select>\
         <button id=\"download-report\">{}</button></form>\
         <h2>{}</h2><p><a id=\"export-records-csv\" href=\"/console/exports/records?format=csv\">CSV</a> · \
         <a id=\"export-records-json\" href=\"/console/exports/records?format=json\">JSON</a></p>",
        t(lang, "report"),
        t(lang, "from"),
        t(lang, "to"),
        t(lang, "download"),
        t(lang, "records"),
    );
    who.page(t(lang, "exports"), &body)
}

#[derive(Deserialize)]
struct ReportQuery {
    from: String,
    to: String,
    format: Option<Format>,
}

async fn export_report(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ReportQuery>,
) -> Response {
    let who = logged_in!(state, headers);
    let range = match crate::http::parse_range(&query.from, &query.to) {
        Ok(range) => range,
        Err(message) => {
            return who.page(
                t(who.lang, "report"),
                &format!("<p class=\"error\">{}</p>", esc(&message)),
            );
        }
    };
    let report = or_fail!(
        who,
        reports::report(state.storage.as_ref(), range, state.clock.now_ms()).await
    );
    audit_action(
        &state,
        who.name(),
        "export_report",
        &format!("{} {}", report.from, report.to),
    )
    .await;
    let name = format!("report-{}-{}", report.from, report.to);
    match query.format.unwrap_or_default() {
        Format::Csv => crate::http::download(
            reports::report_csv(&report),
            "text/csv; charset=utf-8",
            &format!("{name}.csv"),
        ),
        Format::Json => crate::http::download(
            serde_json::to_string(&report).unwrap_or_default(),
            "application/json",
            &format!("{name}.json"),
        ),
    }
}

#[derive(Deserialize)]
struct ExportQuery {
    format: Option<Format>,
}

async fn export_records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<ExportQuery>,
) -> Response {
    let who = logged_in!(state, headers);
    let rows = or_fail!(
        who,
        state
            .storage
            .records(&crate::storage::RecordQuery::default())
            .await
    );
    audit_action(
        &state,
        who.name(),
        "export_records",
        &format!("{} records", rows.len()),
    )
    .await;
    match query.format.unwrap_or_default() {
        Format::Csv => crate::http::download(
            reports::records_csv(&rows),
            "text/csv; charset=utf-8",
            "records.csv",
        ),
        Format::Json => crate::http::download(
            serde_json::to_string(&rows).unwrap_or_default(),
            "application/json",
            "records.json",
        ),
    }
}

async fn audit(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let who = logged_in!(state, headers);
    let lang = who.lang;
    let entries = or_fail!(who, state.storage.audit_log(500).await);
    let rows: String = entries
        .iter()
        .map(|e| {
            format!(
                "<tr><td>{}</td><td>{}</td><td class=\"action\">{}</td><td>{}</td></tr>",
                day_time(e.at),
                esc(&e.username),
                esc(&e.action),
                esc(&e.detail)
            )
        })
        .collect();
    let body = format!(
        "<table id=\"audit\"><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>{rows}</table>",
        t(lang, "when"),
        t(lang, "who"),
        t(lang, "what"),
        t(lang, "detail"),
    );
    who.page(t(lang, "audit"), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_roles_and_diffs() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery", &hash));
        assert!(!verify_password("wrong", &hash));
        assert!(!verify_password("x", "not a hash"));
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
        assert_eq!(Role::parse("root"), None);
        assert!(
            constant_time_eq(b"abc", b"abc")
                && !constant_time_eq(b"abc", b"abd")
                && !constant_time_eq(b"ab", b"abc")
        );
        let old = r#"{"procedures":[{"code":"a","name":"A"},{"code":"b","name":"B"}]}"#;
        let new = r#"{"procedures":[{"code":"b","name":"B2"},{"code":"c","name":"C"}]}"#;
        assert_eq!(
            catalogue_diff(old, new),
            (
                vec!["c".to_owned()],
                vec!["a".to_owned()],
                vec!["b".to_owned()]
            )
        );
    }
}
