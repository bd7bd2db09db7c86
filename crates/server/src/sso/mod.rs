//! Single sign-on through an OpenID Connect provider (`kind: oidc` connectors).
//!
//! 1. `dbward login --auth NAME` generates a key, listens on a loopback port and calls
//!    `POST /v1/sso/oidc/login` with a certificate request and its loopback URL. The gateway
//!    answers with the provider's authorization URL: the authorization-code flow with PKCE
//!    (S256), a nonce, and a `state` that seals the rest ([`state`]).
//! 2. The person logs in at the provider, which sends the browser to the connector's
//!    `redirect_url`, the gateway's `GET /v1/sso/oidc/callback`. The gateway exchanges the code
//!    (with the client secret and the PKCE verifier), checks the ID token (signature against
//!    the provider's JWKS, issuer, audience, expiry, nonce, `max_age`), reads the userinfo
//!    endpoint, maps the claims to roles (`claims_to_roles`) and traits (every claim that is a
//!    string or a list of strings), creates or refreshes the dbward user, and issues the user
//!    certificate for the CLI's key.
//! 3. The browser is sent on to the CLI's loopback URL with the certificate.
//!
//! The user is created by its first login, marked with the connector that created it
//! ([`dbward_model::User::CREATED_BY_LABEL`]); a user of the same name that the connector
//! did not create (a local user, or another connector's) is never touched and the login is
//! refused.

pub mod http;
pub mod jwt;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use dbward_model::{OidcConnector, Resource, User};
use dbward_pki::{CertUsage, Identity};
use dbward_store::PutMode;
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::api::{SsoLoginRequest, SsoLoginResponse, SsoLoginResult};
use crate::catalog::{Snapshot, KIND_USER};
use crate::error::GatewayError;
use crate::metrics::LoginResult;
use crate::web::Peer;
use crate::Gateway;
use http::{Call, ProviderTls};
use jwt::Jwks;
use state::{PendingLogin, StateKey};

/// How long discovery documents and keys of a provider are reused.
const PROVIDER_CACHE: Duration = Duration::from_secs(300);
/// How long a failed fetch of a provider is remembered before it is tried again.
const FAILURE_BACKOFF: Duration = Duration::from_secs(30);
/// The shortest time between two fetches of a provider's keys forced by unknown keys.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// Connectors cached at most (stale entries of renamed or changed connectors go first).
const MAX_PROVIDER_SLOTS: usize = 64;
/// States remembered as used at most; beyond, callbacks are refused until some expire.
const MAX_USED_STATES: usize = 100_000;
/// The longest provider error text passed on to the CLI and the audit.
const MAX_ERROR_CHARS: usize = 200;
/// Clock skew tolerated between the gateway and the provider.
const LEEWAY_SECS: i64 = 60;
/// The longest connector name, CSR or loopback URL a login start may carry.
const MAX_FIELD_BYTES: usize = 16 << 10;

/// Claims of an ID token that describe the token, not the person: never traits, and never
/// overwritten by the userinfo answer.
const TOKEN_CLAIMS: &[&str] = &[
    "iss",
    "aud",
    "exp",
    "iat",
    "nbf",
    "nonce",
    "azp",
    "auth_time",
    "at_hash",
    "c_hash",
    "acr",
    "amr",
    "sid",
    "jti",
];

/// The single sign-on state of a gateway: the key that seals logins in progress, and the
/// providers' discovery documents and keys.
pub struct Sso {
    state_key: StateKey,
    /// Per connector (name, issuer, CA): its provider, fetched one request at a time.
    providers: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
    /// SHA-256 of the states already brought back by a callback, with their expiry: a state
    /// is good for one callback.
    used_states: std::sync::Mutex<HashMap<[u8; 32], i64>>,
}

/// What discovery told about a provider, and its keys.
struct Provider {
    fetched: Instant,
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    userinfo_endpoint: Option<String>,
    jwks: Jwks,
    tls: ProviderTls,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct TokenResponse {
    id_token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

impl Sso {
    /// The single sign-on state of the cluster whose user CA key is `user_ca_key_pem`.
    pub fn new(user_ca_key_pem: &str, cluster: &str) -> Sso {
        Sso {
            state_key: StateKey::derive(user_ca_key_pem, cluster),
            providers: std::sync::Mutex::new(HashMap::new()),
            used_states: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The provider of `connector`, from the cache when fresh; `refresh` fetches it again
    /// (after a token whose key the cache does not have, at most every
    /// [`MIN_REFRESH_INTERVAL`]).
    ///
    /// Each connector has its own slot: a slow or unreachable provider delays only its own
    /// logins, one fetch at a time, and a failed fetch is remembered for [`FAILURE_BACKOFF`]
    /// so that waiting and later requests get the error at once instead of fetching again.
    async fn provider(
        &self,
        connector: &OidcConnector,
        refresh: bool,
    ) -> Result<Arc<Provider>, String> {
        let ca_pem = match (&connector.spec.ca_cert, &connector.spec.ca_cert_file) {
            (Some(pem), _) => Some(pem.clone()),
            (None, Some(file)) => Some(
                tokio::fs::read_to_string(file)
                    .await
                    .map_err(|e| format!("reading the connector's ca_cert_file {file}: {e}"))?,
            ),
            (None, None) => None,
        };
        let cache_key = format!(
            "{}\n{}\n{}",
            connector.name(),
            connector.spec.issuer_url,
            ca_pem.as_deref().unwrap_or_default()
        );
        let slot = {
            let mut slots = self.lock_slots();
            if slots.len() > MAX_PROVIDER_SLOTS {
                slots.retain(|_, slot| Arc::strong_count(slot) > 1);
            }
            slots.entry(cache_key).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some((at, err)) = &slot.failed {
            if at.elapsed() < FAILURE_BACKOFF {
                return Err(err.clone());
            }
        }
        if let Some(p) = &slot.provider {
            let fresh = p.fetched.elapsed() < PROVIDER_CACHE;
            let refreshed_lately = p.fetched.elapsed() < MIN_REFRESH_INTERVAL;
            if (fresh && !refresh) || (refresh && refreshed_lately) {
                return Ok(p.clone());
            }
        }
        match fetch_provider(connector, ca_pem.as_deref()).await {
            Ok(provider) => {
                let provider = Arc::new(provider);
                slot.provider = Some(provider.clone());
                slot.failed = None;
                Ok(provider)
            }
            Err(err) => {
                slot.failed = Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    fn lock_slots(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Slot>>>> {
        self.providers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the use of a `state`; false when it was used before (a replayed callback).
    fn first_use(&self, state: &str, expires: i64, now: i64) -> Result<bool, String> {
        let digest = ring::digest::digest(&ring::digest::SHA256, state.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let mut used = self.used_states.lock().unwrap_or_else(|p| p.into_inner());
        if used.len() >= MAX_USED_STATES {
            used.retain(|_, until| *until >= now);
            if used.len() >= MAX_USED_STATES {
                return Err("the gateway is busy with other logins; try again in a moment".into());
            }
        }
        Ok(used.insert(key, expires).is_none())
    }
}

/// What the cache holds for one connector.
#[derive(Default)]
struct Slot {
    provider: Option<Arc<Provider>>,
    failed: Option<(Instant, String)>,
}

/// Discovery and keys, fetched now.
async fn fetch_provider(
    connector: &OidcConnector,
    ca_pem: Option<&str>,
) -> Result<Provider, String> {
    let tls = ProviderTls::new(ca_pem)?;
    let issuer = connector.spec.issuer_url.trim_end_matches('/');
    let url = format!("{issuer}/.well-known/openid-configuration");
    let discovery: Discovery = fetch_json(&tls, Call::get(&url)).await?;
    if discovery.issuer.trim_end_matches('/') != issuer {
        return Err(format!(
            "the provider at {issuer} calls itself \"{}\"; issuer_url must be exactly the provider's issuer",
            discovery.issuer
        ));
    }
    let jwks: Jwks = fetch_json(&tls, Call::get(&discovery.jwks_uri)).await?;
    Ok(Provider {
        fetched: Instant::now(),
        issuer: discovery.issuer,
        authorization_endpoint: discovery.authorization_endpoint,
        token_endpoint: discovery.token_endpoint,
        userinfo_endpoint: discovery.userinfo_endpoint,
        jwks,
        tls,
    })
}

async fn fetch_json<T: serde::de::DeserializeOwned>(
    tls: &ProviderTls,
    call: Call<'_>,
) -> Result<T, String> {
    let url = call.url.to_string();
    let (status, body) = http::send(tls, call).await?;
    if status != 200 {
        return Err(format!(
            "{url} answered HTTP {status}: {}",
            provider_error(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url} answered unreadable JSON: {e}"))
}

/// Provider text fit to show and record: control characters gone, at most
/// [`MAX_ERROR_CHARS`] characters.
fn clean_text(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_CHARS)
        .collect();
    cleaned.trim().to_string()
}

/// The `error` / `error_description` of an OAuth error answer, or the start of the body.
fn provider_error(body: &[u8]) -> String {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) {
        let error = map.get("error").and_then(Value::as_str).unwrap_or_default();
        let description = map
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !error.is_empty() {
            return clean_text(&format!("{error} {description}"));
        }
    }
    clean_text(&String::from_utf8_lossy(
        &body[..body.len().min(MAX_ERROR_CHARS)],
    ))
}

/// `POST /v1/sso/oidc/login`.
pub async fn start_login(
    State(gw): State<Arc<Gateway>>,
    Extension(peer): Extension<Peer>,
    Json(req): Json<SsoLoginRequest>,
) -> Result<Json<SsoLoginResponse>, GatewayError> {
    for (name, value) in [
        ("connector", &req.connector),
        ("csr_pem", &req.csr_pem),
        ("client_redirect_url", &req.client_redirect_url),
        ("client_state", &req.client_state),
    ] {
        if value.len() > MAX_FIELD_BYTES {
            return Err(GatewayError::BadRequest(format!("{name} is too long")));
        }
    }
    check_client_redirect(&req.client_redirect_url).map_err(GatewayError::BadRequest)?;
    let csr = csr_der(&req.csr_pem).map_err(GatewayError::BadRequest)?;
    let snapshot = gw.catalog.snapshot().await?;
    let connector = snapshot.oidc.get(&req.connector).ok_or_else(|| {
        GatewayError::NotFound(format!(
            "there is no single sign-on connector \"{}\" (`dbward get oidc` lists them)",
            req.connector
        ))
    })?;
    let provider = gw.sso.provider(connector, false).await.map_err(|e| {
        tracing::warn!(connector = %req.connector, err = %e, "OpenID provider unreachable");
        GatewayError::Unavailable(format!("the identity provider cannot be used: {e}"))
    })?;
    let random = |n| state::random_token(n).map_err(GatewayError::Internal);
    let verifier = random(32)?;
    let nonce = random(24)?;
    let login = PendingLogin {
        connector: req.connector.clone(),
        client_redirect: req.client_redirect_url.clone(),
        client_state: req.client_state.clone(),
        verifier: verifier.clone(),
        nonce: nonce.clone(),
        csr,
        client_ip: peer.addr.ip().to_canonical(),
        expires: OffsetDateTime::now_utc().unix_timestamp() + state::LOGIN_WINDOW_SECS,
    };
    let sealed = gw
        .sso
        .state_key
        .seal(&login)
        .map_err(GatewayError::Internal)?;
    let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    let mut scopes = vec!["openid".to_string()];
    for scope in &connector.spec.scope {
        for s in scope.split_whitespace() {
            if !scopes.iter().any(|have| have == s) {
                scopes.push(s.to_string());
            }
        }
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    query
        .append_pair("response_type", "code")
        .append_pair("client_id", &connector.spec.client_id)
        .append_pair("redirect_uri", &connector.spec.redirect_url[0])
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", &sealed)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if let Some(prompt) = connector.spec.prompt.as_deref().filter(|p| !p.is_empty()) {
        query.append_pair("prompt", prompt);
    }
    if let Some(max_age) = connector.spec.max_age {
        query.append_pair("max_age", &max_age.as_secs().to_string());
    }
    let separator = if provider.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    tracing::info!(connector = %req.connector, addr = %peer.addr, "single sign-on login started");
    Ok(Json(SsoLoginResponse {
        auth_url: format!(
            "{}{separator}{}",
            provider.authorization_endpoint,
            query.finish()
        ),
    }))
}

/// The query of the provider's redirect to the gateway.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /v1/sso/oidc/callback` (and Teleport's `/v1/webapi/oidc/callback`).
pub async fn callback(
    State(gw): State<Arc<Gateway>>,
    Extension(peer): Extension<Peer>,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let login = match query
        .state
        .as_deref()
        .ok_or_else(|| "the provider's answer has no state".to_string())
        .and_then(|s| {
            let login = gw.sso.state_key.open(s, now)?;
            if !gw.sso.first_use(s, login.expires, now)? {
                return Err("this login was already completed or refused; start again with `dbward login --auth`".into());
            }
            Ok(login)
        }) {
        Ok(login) => login,
        Err(message) => {
            tracing::info!(addr = %peer.addr, %message, "single sign-on callback refused");
            return page(StatusCode::BAD_REQUEST, "Login failed", &message);
        }
    };
    let outcome = match (&query.error, &query.code) {
        (Some(error), _) => Err((
            String::new(),
            format!(
                "the identity provider refused the login: {}",
                clean_text(&format!(
                    "{error} {}",
                    query.error_description.as_deref().unwrap_or_default()
                ))
            ),
        )),
        (None, Some(code)) => finish_login(&gw, &login, code).await,
        (None, None) => Err((String::new(), "the provider's answer has no code".into())),
    };
    // (The serializer is not Send: it is only built after the last await.)
    let mut to_client: Vec<(&str, String)> = vec![("client_state", login.client_state.clone())];
    let audited = |user: &str| crate::audit::SessionFields {
        user: user.to_string(),
        ..Default::default()
    };
    match outcome {
        Ok(result) => {
            tracing::info!(user = %result.user, connector = %login.connector, "single sign-on login succeeded");
            gw.metrics.login(LoginResult::Succeeded);
            gw.audit
                .emit(
                    crate::audit::USER_LOGIN,
                    &audited(&result.user),
                    serde_json::json!({"success": true, "method": "oidc", "connector": login.connector}),
                )
                .await;
            let json = serde_json::to_vec(&result).unwrap_or_default();
            to_client.push(("response", URL_SAFE_NO_PAD.encode(json)));
        }
        Err((user, message)) => {
            tracing::info!(connector = %login.connector, %message, "single sign-on login failed");
            gw.metrics.login(LoginResult::Failed);
            gw.audit
                .emit(
                    crate::audit::USER_LOGIN,
                    &audited(&user),
                    serde_json::json!({"success": false, "method": "oidc", "connector": login.connector, "error": message}),
                )
                .await;
            to_client.push(("error", message));
        }
    }
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(to_client)
        .finish();
    Redirect::to(&format!("{}?{query}", login.client_redirect)).into_response()
}

/// A small page for the browser when there is no CLI to send it to.
fn page(status: StatusCode, title: &str, message: &str) -> Response {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    (
        status,
        Html(format!(
            "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>dbward: {t}</title></head><body><h1>{t}</h1><p>{m}</p></body></html>",
            t = escape(title),
            m = escape(message)
        )),
    )
        .into_response()
}

/// Code exchange, token checks, user and certificate. A failure names the user when the
/// provider had already said who it is (for the audit).
async fn finish_login(
    gw: &Gateway,
    login: &PendingLogin,
    code: &str,
) -> Result<SsoLoginResult, (String, String)> {
    let mut who = String::new();
    finish_login_as(gw, login, code, &mut who)
        .await
        .map_err(|message| (who, message))
}

async fn finish_login_as(
    gw: &Gateway,
    login: &PendingLogin,
    code: &str,
    who: &mut String,
) -> Result<SsoLoginResult, String> {
    let snapshot = gw.catalog.snapshot().await.map_err(|e| e.to_string())?;
    let connector = snapshot
        .oidc
        .get(&login.connector)
        .ok_or_else(|| format!("the connector \"{}\" no longer exists", login.connector))?;
    let provider = gw.sso.provider(connector, false).await?;
    let token = exchange_code(connector, &provider, login, code).await?;
    let id_token = token.id_token.ok_or(
        "the identity provider returned no ID token (is `openid` allowed for the client?)",
    )?;
    let mut claims = match jwt::verify(&id_token, &provider.jwks) {
        // The provider may have rotated its keys, also under a kid it used before.
        Err(jwt::JwtError::UnknownKey(_) | jwt::JwtError::Signature) => {
            let provider = gw.sso.provider(connector, true).await?;
            jwt::verify(&id_token, &provider.jwks)
        }
        other => other,
    }
    .map_err(|e| e.to_string())?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    check_id_token_claims(&claims, connector, &provider.issuer, &login.nonce, now)?;
    if let (Some(endpoint), Some(access_token)) = (&provider.userinfo_endpoint, &token.access_token)
    {
        let userinfo: Map<String, Value> = fetch_json(
            &provider.tls,
            Call {
                authorization: Some(format!("Bearer {access_token}")),
                ..Call::get(endpoint)
            },
        )
        .await?;
        if userinfo.get("sub") != claims.get("sub") {
            return Err(
                "the provider's userinfo is about another subject than the ID token".into(),
            );
        }
        for (name, value) in userinfo {
            if !TOKEN_CLAIMS.contains(&name.as_str()) {
                claims.insert(name, value);
            }
        }
    }
    let unverified = match claims.get("email_verified") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(verified)) => !verified,
        Some(Value::String(verified)) => !verified.eq_ignore_ascii_case("true"),
        Some(_) => true,
    };
    if unverified && !connector.spec.allow_unverified_email {
        return Err(
            "the identity provider says this email address is not verified (the connector does not set allow_unverified_email)"
                .into(),
        );
    }
    let username = claims
        .get(connector.username_claim())
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            format!(
                "the identity provider sent no \"{}\" claim to name the user (the connector's username_claim)",
                connector.username_claim()
            )
        })?
        .to_string();
    who.clone_from(&username);
    check_sso_username(&username)?;
    // The person at the provider: the subject of the issuer, never a claim they may edit.
    let subject = subject_hash(
        &provider.issuer,
        claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or_default(),
    );
    let traits = claims_to_traits(&claims);
    let roles = map_roles(connector, &traits, &snapshot)?;
    let no_role = roles.is_empty();
    // A person the provider no longer puts in any mapped group loses the roles of the user
    // this connector created, so certificates issued earlier stop opening sessions; nobody
    // is created without a role.
    let user = save_user(
        gw,
        &snapshot,
        connector,
        SsoPerson {
            username: &username,
            subject: &subject,
        },
        roles,
        traits,
        !no_role,
    )
    .await?;
    if no_role {
        return Err(format!(
            "none of your claims maps to a role of this cluster (connector \"{}\", claims_to_roles)",
            connector.name()
        ));
    }
    issue_certificate(gw, &user, login).await
}

async fn exchange_code(
    connector: &OidcConnector,
    provider: &Provider,
    login: &PendingLogin,
    code: &str,
) -> Result<TokenResponse, String> {
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &connector.spec.redirect_url[0])
        .append_pair("code_verifier", &login.verifier)
        .finish();
    // client_secret_basic: both parts form-encoded first (RFC 6749 §2.3.1).
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = STANDARD.encode(format!(
        "{}:{}",
        encode(&connector.spec.client_id),
        encode(&connector.spec.client_secret)
    ));
    let (status, body) = http::send(
        &provider.tls,
        Call {
            method: hyper::Method::POST,
            url: &provider.token_endpoint,
            authorization: Some(format!("Basic {basic}")),
            form: Some(form),
        },
    )
    .await?;
    if status != 200 {
        return Err(format!(
            "the identity provider refused the code: {}",
            provider_error(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("unreadable token answer: {e}"))
}

/// The checks of OpenID Connect Core §3.1.3.7 that a signature does not make.
pub fn check_id_token_claims(
    claims: &Map<String, Value>,
    connector: &OidcConnector,
    issuer: &str,
    nonce: &str,
    now: i64,
) -> Result<(), String> {
    let text = |name: &str| claims.get(name).and_then(Value::as_str);
    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    if text("iss") != Some(issuer) {
        return Err(format!(
            "the ID token was issued by {:?}, not by {issuer}",
            text("iss")
        ));
    }
    let client_id = connector.spec.client_id.as_str();
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&client_id) {
        return Err(format!(
            "the ID token is not meant for client \"{client_id}\""
        ));
    }
    if audiences.len() > 1 && text("azp") != Some(client_id) {
        return Err(
            "the ID token has several audiences and is not authorised for this client".into(),
        );
    }
    if let Some(azp) = text("azp") {
        if azp != client_id {
            return Err(format!(
                "the ID token is authorised for \"{azp}\", not \"{client_id}\""
            ));
        }
    }
    let exp = number("exp").ok_or("the ID token has no expiry")?;
    if exp + LEEWAY_SECS < now {
        return Err("the ID token has expired".into());
    }
    if number("iat").is_some_and(|iat| iat > now + LEEWAY_SECS) {
        return Err("the ID token was issued in the future; check the clocks".into());
    }
    if number("nbf").is_some_and(|nbf| nbf > now + LEEWAY_SECS) {
        return Err("the ID token is not valid yet; check the clocks".into());
    }
    if text("nonce") != Some(nonce) {
        return Err("the ID token's nonce is not the one of this login (a replayed token?)".into());
    }
    if text("sub").is_none_or(str::is_empty) {
        return Err("the ID token has no subject".into());
    }
    if let Some(max_age) = connector.spec.max_age {
        let auth_time = number("auth_time")
            .ok_or("the connector sets max_age and the ID token has no auth_time")?;
        let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(auth_time) > max_age.saturating_add(LEEWAY_SECS) {
            return Err(
                "the last authentication at the provider is older than the connector's max_age"
                    .into(),
            );
        }
    }
    Ok(())
}

/// Every claim that is a string or a list of strings, as a trait (`{{external.<claim>}}`).
pub fn claims_to_traits(claims: &Map<String, Value>) -> BTreeMap<String, Vec<String>> {
    let mut traits = BTreeMap::new();
    for (name, value) in claims {
        if TOKEN_CLAIMS.contains(&name.as_str()) {
            continue;
        }
        let values: Vec<String> = match value {
            Value::String(s) => vec![s.clone()],
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => continue,
        };
        if !values.is_empty() {
            traits.insert(name.clone(), values);
        }
    }
    traits
}

/// The roles `claims_to_roles` gives, that exist in this cluster, each once.
fn map_roles(
    connector: &OidcConnector,
    traits: &BTreeMap<String, Vec<String>>,
    snapshot: &Snapshot,
) -> Result<Vec<String>, String> {
    let mut roles: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for mapping in &connector.spec.claims_to_roles {
        let Some(values) = traits.get(&mapping.claim) else {
            continue;
        };
        let matcher = claim_matcher(&mapping.value)?;
        for value in values {
            let Some(captures) = matcher.captures(value) else {
                continue;
            };
            for role in &mapping.roles {
                let mut name = String::new();
                captures.expand(role, &mut name);
                if name.is_empty() || roles.contains(&name) || unknown.contains(&name) {
                    continue;
                }
                if snapshot.roles.contains_key(&name) {
                    roles.push(name);
                } else {
                    unknown.push(name);
                }
            }
        }
    }
    if !unknown.is_empty() {
        tracing::warn!(connector = %connector.name(), roles = ?unknown, "claims_to_roles names roles that do not exist; skipped");
    }
    Ok(roles)
}

/// `value` of a claim mapping: `^regexp$`, else a literal with `*` globs, matched whole.
fn claim_matcher(value: &str) -> Result<regex::Regex, String> {
    let pattern = if value.len() >= 2 && value.starts_with('^') && value.ends_with('$') {
        // Grouped, so that an alternation inside matches the whole value too.
        format!("^(?:{})$", &value[1..value.len() - 1])
    } else {
        let parts: Vec<String> = value.split('*').map(regex::escape).collect();
        format!("^{}$", parts.join("(.*)"))
    };
    regex::Regex::new(&pattern)
        .map_err(|e| format!("claims_to_roles value \"{value}\" is not a valid pattern: {e}"))
}

/// The label binding an SSO user to the person at the provider (a hash of issuer and
/// subject).
pub const SUBJECT_LABEL: &str = "dbward.dev/oidc-subject";

/// Who logged in: the dbward name the claims give, and the hash of issuer and subject.
struct SsoPerson<'a> {
    username: &'a str,
    subject: &'a str,
}

/// SHA-256 of the issuer and the subject, hex (the same person for as long as the provider
/// keeps its subject identifiers).
fn subject_hash(issuer: &str, sub: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{issuer}\n{sub}").as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A user name from a claim: no surrounding spaces, no invisible or direction-changing
/// characters (which would make one name look like another in listings and audit).
fn check_sso_username(name: &str) -> Result<(), String> {
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{00AD}');
    if name.trim() != name
        || name.chars().any(|c| c.is_control() || invisible(c))
        || name.len() > 255
    {
        return Err(format!(
            "the identity provider's user name {name:?} cannot be used: no surrounding spaces, control or invisible characters, at most 255 bytes"
        ));
    }
    Ok(())
}

/// Creates the user at its first login, refreshes its roles and traits later; refuses a
/// user of that name that this connector did not create, or that another person at the
/// provider created.
async fn save_user(
    gw: &Gateway,
    snapshot: &Snapshot,
    connector: &OidcConnector,
    person: SsoPerson<'_>,
    roles: Vec<String>,
    traits: BTreeMap<String, Vec<String>>,
    create: bool,
) -> Result<User, String> {
    let username = person.username;
    let marker = format!("oidc/{}", connector.name());
    let not_ours = || {
        format!(
            "a dbward user named \"{username}\" already exists and was not created by the single sign-on connector \"{}\"; it is left unchanged",
            connector.name()
        )
    };
    let _lock = gw
        .store
        .lock(
            &format!("sso-user/{username}"),
            &gw.instance_id,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
    match gw
        .store
        .get_resource(KIND_USER, username)
        .await
        .map_err(|e| e.to_string())?
    {
        Some(json) => {
            let existing: Resource = serde_json::from_str(&json).map_err(|e| e.to_string())?;
            match existing {
                Resource::User(u) if u.created_by() == Some(marker.as_str()) => {
                    let owner = u.metadata.labels.get(SUBJECT_LABEL);
                    if owner.is_some_and(|owner| owner != person.subject) {
                        return Err(format!(
                            "the dbward user \"{username}\" belongs to another person at the identity provider (another subject); it is left unchanged"
                        ));
                    }
                }
                _ => return Err(not_ours()),
            }
        }
        None if snapshot.users.contains_key(username) => return Err(not_ours()),
        None if !create => return Ok(User::new(username, &roles)),
        None => {}
    }
    if gw
        .store
        .get_password_hash(username)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err(not_ours());
    }
    let mut user = User::new(username, &roles).with_traits(traits);
    user.metadata
        .labels
        .insert(User::CREATED_BY_LABEL.to_string(), marker);
    user.metadata
        .labels
        .insert(SUBJECT_LABEL.to_string(), person.subject.to_string());
    let resource = Resource::User(user.clone());
    resource
        .validate()
        .map_err(|e| format!("the identity provider's user name cannot be used: {e}"))?;
    let json = serde_json::to_string(&resource).map_err(|e| e.to_string())?;
    gw.store
        .put_resource(KIND_USER, username, &json, PutMode::Upsert)
        .await
        .map_err(|e| e.to_string())?;
    // Roles may have changed for sessions already open.
    gw.sessions.revalidate_soon();
    Ok(user)
}

async fn issue_certificate(
    gw: &Gateway,
    user: &User,
    login: &PendingLogin,
) -> Result<SsoLoginResult, String> {
    let snapshot = gw.catalog.snapshot().await.map_err(|e| e.to_string())?;
    let checker = snapshot.checker(user).map_err(|e| e.to_string())?;
    let ttl = checker.cap_ttl(gw.config.cert_ttl);
    let expires = time::Duration::try_from(ttl)
        .ok()
        .and_then(|ttl| OffsetDateTime::now_utc().checked_add(ttl))
        .ok_or("certificate lifetime out of range")?;
    let pinned_ip: Option<IpAddr> = checker.limits().pin_source_ip.then_some(login.client_ip);
    let identity = Identity {
        username: user.name().to_string(),
        cluster: gw.cluster.clone(),
        usage: CertUsage::Login,
        expires,
        route: None,
        pinned_ip,
        mfa_session_until: None,
    };
    let csr_pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        STANDARD.encode(
            URL_SAFE_NO_PAD
                .decode(&login.csr)
                .map_err(|e| e.to_string())?
        )
    );
    let cert_pem = dbward_pki::issue_user_cert(&gw.cas.user, &identity, &csr_pem)
        .map_err(|e| format!("certificate request refused: {e}"))?;
    Ok(SsoLoginResult {
        user: identity.username,
        cert_pem,
        host_ca_pem: gw.cas.host.cert_pem.clone(),
        cluster: gw.cluster.clone(),
        expires: expires
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    })
}

/// The CLI's loopback URL: `http://` on a loopback address with a port, a path, no query.
fn check_client_redirect(url: &str) -> Result<(), String> {
    let refused = || {
        format!("client_redirect_url \"{url}\" must be http://127.0.0.1:PORT/PATH on this machine's loopback")
    };
    let rest = url.strip_prefix("http://").ok_or_else(refused)?;
    let (authority, path) = rest.split_once('/').ok_or_else(refused)?;
    if !dbward_model::oidc::is_loopback_authority(authority)
        || !authority.contains(':')
        || authority.ends_with(']')
        || path.contains(['?', '#'])
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refused());
    }
    Ok(())
}

/// The DER of a PEM certificate request, base64url, after checking it parses and is signed
/// by its key (proof that the CLI holds the key).
fn csr_der(pem: &str) -> Result<String, String> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    let der = STANDARD
        .decode(body.as_bytes())
        .map_err(|_| "csr_pem is not a PEM certificate request".to_string())?;
    if !pem.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err("csr_pem is not a PEM certificate request".into());
    }
    dbward_pki::check_csr(pem).map_err(|e| format!("certificate request refused: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(extra: &str) -> OidcConnector {
        let text = format!(
            "kind: oidc\nversion: v3\nmetadata: {{name: idp}}\nspec:\n  issuer_url: https://idp.example.com\n  client_id: gw\n  client_secret: s\n  redirect_url: https://gw/v1/sso/oidc/callback\n  claims_to_roles: [{{claim: groups, value: admins, roles: [a]}}]\n{extra}"
        );
        match dbward_model::parse_resources(&text, "t.yaml")
            .unwrap()
            .resources
            .remove(0)
        {
            Resource::Oidc(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn claims(json: &str) -> Map<String, Value> {
        serde_json::from_str(json).unwrap()
    }

    const GOOD: &str = r#"{"iss":"https://idp.example.com","aud":"gw","exp":2000,"iat":1000,"nonce":"n1","sub":"alice","auth_time":990}"#;

    #[test]
    fn a_valid_token_passes_and_each_broken_claim_fails() {
        let c = connector("");
        check_id_token_claims(&claims(GOOD), &c, "https://idp.example.com", "n1", 1500).unwrap();
        let broken = [
            GOOD.replace("https://idp.example.com", "https://evil.example.com"),
            GOOD.replace(r#""aud":"gw""#, r#""aud":"other""#),
            GOOD.replace(r#""aud":"gw""#, r#""aud":["gw","other"]"#),
            GOOD.replace(r#""nonce":"n1""#, r#""nonce":"n2""#),
            GOOD.replace(r#","nonce":"n1""#, ""),
            GOOD.replace(r#""exp":2000"#, r#""exp":1400"#),
            GOOD.replace(r#""iat":1000"#, r#""iat":1700"#),
            GOOD.replace(r#","sub":"alice""#, ""),
        ];
        for token in broken {
            assert!(
                check_id_token_claims(&claims(&token), &c, "https://idp.example.com", "n1", 1500)
                    .is_err(),
                "{token}"
            );
        }
        let several = GOOD.replace(r#""aud":"gw""#, r#""aud":["gw","other"],"azp":"gw""#);
        check_id_token_claims(&claims(&several), &c, "https://idp.example.com", "n1", 1500)
            .unwrap();
        let c = connector("  max_age: 5m\n");
        check_id_token_claims(&claims(GOOD), &c, "https://idp.example.com", "n1", 1200).unwrap();
        assert!(
            check_id_token_claims(&claims(GOOD), &c, "https://idp.example.com", "n1", 1500)
                .is_err()
        );
    }

    #[test]
    fn traits_are_the_string_and_string_list_claims() {
        let traits = claims_to_traits(&claims(
            r#"{"sub":"alice","email":"a@x","groups":["g1",2,"g2"],"email_verified":true,"nonce":"n","aud":"gw","n":{"x":1}}"#,
        ));
        assert_eq!(traits["email"], ["a@x"]);
        assert_eq!(traits["groups"], ["g1", "g2"]);
        assert_eq!(traits["sub"], ["alice"]);
        assert!(!traits.contains_key("nonce") && !traits.contains_key("aud"));
        assert!(!traits.contains_key("email_verified") && !traits.contains_key("n"));
    }

    #[test]
    fn claim_values_match_literally_by_glob_or_by_regexp_with_groups() {
        let m = claim_matcher("admins").unwrap();
        assert!(m.is_match("admins") && !m.is_match("admins2") && !m.is_match("xadmins"));
        let m = claim_matcher("db-*").unwrap();
        let mut out = String::new();
        m.captures("db-readers")
            .unwrap()
            .expand("role-$1", &mut out);
        assert_eq!(out, "role-readers");
        let m = claim_matcher("^team-(.+)@example\\.com$").unwrap();
        assert!(m.is_match("team-a@example.com") && !m.is_match("team-a@example.org"));
        let m = claim_matcher("^admins|ops$").unwrap();
        assert!(m.is_match("ops") && !m.is_match("admins-x") && !m.is_match("x-ops"));
        let m = claim_matcher("a.b").unwrap();
        assert!(!m.is_match("axb"), "a literal dot is not a wildcard");
    }

    #[test]
    fn the_client_redirect_must_be_a_loopback_http_url() {
        for ok in [
            "http://127.0.0.1:5555/callback",
            "http://localhost:5555/cb",
            "http://[::1]:5555/callback",
        ] {
            check_client_redirect(ok).unwrap();
        }
        for bad in [
            "https://127.0.0.1:5555/callback",
            "http://evil.example.com:5555/callback",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:5555",
            "http://127.0.0.1:5555/cb?x=1",
            "http://127.0.0.1:5555@evil.com/cb",
            "http://[::1]/callback",
        ] {
            assert!(check_client_redirect(bad).is_err(), "{bad}");
        }
    }
}
