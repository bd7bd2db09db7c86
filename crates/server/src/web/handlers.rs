//! Route handlers of the web API. Each handler states who may call it by the identity
//! extractor it asks for: none (ping, login), [`UserIdentity`] or [`AdminIdentity`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use dbward_model::Resource;
use dbward_pki::{CertUsage, DbRoute, Identity};
use dbward_store::PutMode;
use time::OffsetDateTime;

use super::Peer;
use crate::api::*;
use crate::catalog::{canonical_kind, KIND_OIDC, KIND_USER};
use crate::error::GatewayError;
use crate::metrics::LoginResult;
use crate::mfa::{self, CodeCheck};
use crate::passwords;
use crate::Gateway;

type Shared = State<Arc<Gateway>>;

/// Largest JSON body of any request (a resource file for `dbward create -f` is the largest).
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// Largest body of a login or a database certificate request: names, a password or roles
/// and a CSR fit many times over.
pub const MAX_SMALL_BODY_BYTES: usize = 64 << 10;
/// Most database roles one database certificate may ask for.
pub const MAX_REQUESTED_DB_ROLES: usize = 64;
/// Lifetime of a database certificate issued after a session MFA check.
pub const MFA_DB_CERT_TTL: time::Duration = time::Duration::seconds(60);
/// Most audit events one search returns.
pub const MAX_AUDIT_LIMIT: usize = 10_000;
/// Farthest back an audit search may reach (100 years), so the arithmetic cannot overflow.
pub const MAX_AUDIT_SINCE_SECS: u64 = 100 * 365 * 24 * 3600;

pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/v1/ping", get(ping))
        .route(
            "/v1/login",
            post(login).layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES)),
        )
        .route("/v1/resources", post(create_resources))
        .route("/v1/resources/{kind}", get(list_resources))
        .route(
            "/v1/resources/{kind}/{name}",
            get(get_resource).delete(delete_resource),
        )
        .route("/v1/users", post(add_user))
        .route("/v1/users/{name}", delete(remove_user))
        .route("/v1/users/{name}/password", post(reset_password))
        .route(
            "/v1/mfa/devices",
            post(add_mfa_device).layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES)),
        )
        .route("/v1/dbs", get(list_dbs))
        .route("/v1/dbs/{name}/check", get(check_db))
        .route(
            "/v1/db-certs",
            post(issue_db_cert).layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES)),
        )
        .route("/v1/audit", get(search_audit))
        .route(
            "/v1/sso/oidc/login",
            post(crate::sso::start_login).layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES)),
        )
        .route(dbward_model::oidc::CALLBACK_PATH, get(crate::sso::callback))
        .route(
            dbward_model::oidc::TELEPORT_CALLBACK_PATH,
            get(crate::sso::callback),
        )
        .route("/v1/tokens", post(add_token))
        .route(
            "/v1/trusted-clusters/join",
            post(join_cluster).layer(DefaultBodyLimit::max(MAX_SMALL_BODY_BYTES)),
        )
        .route("/v1/remote/dbs", get(list_remote_dbs))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = match &self {
            GatewayError::BadRequest(_) | GatewayError::Model(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden(_) => StatusCode::FORBIDDEN,
            GatewayError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(err = %self, "web request failed");
        }
        (
            status,
            Json(ApiError {
                error: self.user_message(),
            }),
        )
            .into_response()
    }
}

/// A caller holding a valid user (login) certificate of this cluster.
pub struct UserIdentity(pub Identity);
/// A caller holding the admin identity written by `dbward start`.
pub struct AdminIdentity(#[allow(dead_code)] pub Identity);

fn peer_identity(parts: &Parts, gateway: &Gateway) -> Result<Identity, GatewayError> {
    let peer = parts
        .extensions
        .get::<Peer>()
        .ok_or_else(|| GatewayError::Internal("peer not attached".into()))?;
    let identity = peer.identity.clone().ok_or_else(|| {
        GatewayError::Unauthorized("a client certificate is required; run `dbward login`".into())
    })?;
    if identity.cluster != gateway.cluster {
        return Err(GatewayError::Unauthorized(
            "certificate belongs to another cluster".into(),
        ));
    }
    if identity.expires <= OffsetDateTime::now_utc() {
        return Err(GatewayError::Unauthorized(
            "certificate has expired; run `dbward login`".into(),
        ));
    }
    Ok(identity)
}

impl FromRequestParts<Arc<Gateway>> for UserIdentity {
    type Rejection = GatewayError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let identity = peer_identity(parts, state)?;
        if identity.usage != CertUsage::Login {
            return Err(GatewayError::Unauthorized(
                "this endpoint needs a login certificate".into(),
            ));
        }
        check_source_ip(parts, state, &identity).await?;
        Ok(UserIdentity(identity))
    }
}

/// The role option `pin_source_ip` on API calls: a user whose roles set it may use their
/// login certificate only from the address it was issued to. A user or roles that cannot be
/// read are left to the handler, which refuses them.
async fn check_source_ip(
    parts: &Parts,
    gateway: &Gateway,
    identity: &Identity,
) -> Result<(), GatewayError> {
    let peer = parts
        .extensions
        .get::<Peer>()
        .ok_or_else(|| GatewayError::Internal("peer not attached".into()))?;
    let snapshot = gateway.catalog.snapshot().await?;
    let Some(user) = snapshot.users.get(&identity.username) else {
        return Ok(());
    };
    let Ok(checker) = snapshot.checker(user) else {
        return Ok(());
    };
    crate::session::check_pinned_ip(identity, peer.addr.ip(), checker.limits()).map_err(
        |reason| {
            tracing::info!(user = %identity.username, addr = %peer.addr, %reason, "API call refused: source IP pinning");
            GatewayError::Forbidden(reason)
        },
    )
}

impl FromRequestParts<Arc<Gateway>> for AdminIdentity {
    type Rejection = GatewayError;
    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Gateway>,
    ) -> Result<Self, Self::Rejection> {
        let identity = peer_identity(parts, state)?;
        if identity.usage != CertUsage::Admin {
            return Err(GatewayError::Forbidden(
                "this endpoint needs the admin identity".into(),
            ));
        }
        Ok(AdminIdentity(identity))
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn ping(State(gw): Shared) -> Json<PingResponse> {
    let endpoints = gw.endpoints.read().await.clone();
    Json(PingResponse {
        cluster: gw.cluster.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        postgres_addr: endpoints.postgres,
        mysql_addr: endpoints.mysql,
        public_addr: gw.config.public_addr.clone(),
    })
}

async fn login(
    State(gw): Shared,
    Extension(peer): Extension<Peer>,
    Json(req): Json<LoginRequest>,
) -> Result<Json<LoginResponse>, GatewayError> {
    // Refused before the name is looked up, counted or hashed.
    if req.user.is_empty() || req.user.len() > passwords::MAX_USER_NAME_LEN {
        return Err(GatewayError::BadRequest(format!(
            "a user name has 1 to {} bytes",
            passwords::MAX_USER_NAME_LEN
        )));
    }
    if req.password.len() > passwords::MAX_PASSWORD_LEN {
        return Err(GatewayError::BadRequest(format!(
            "a password has at most {} bytes",
            passwords::MAX_PASSWORD_LEN
        )));
    }
    // Counted as a failure now, before the password is checked, so that simultaneous
    // attempts cannot all pass the limit.
    let Some(attempt) = gw.limiter.begin(&req.user, peer.addr.ip()) else {
        tracing::info!(user = %req.user, addr = %peer.addr, "login refused: too many failed attempts");
        gw.metrics.login(LoginResult::RateLimited);
        return Err(GatewayError::TooManyRequests(
            "too many failed login attempts; try again later".into(),
        ));
    };
    // Each check takes tens of MiB: a bounded number run at once, a bounded queue waits
    // briefly, the rest are answered now.
    let Some(slot) = gw.limiter.verification_slot().await else {
        gw.limiter.not_checked(&attempt);
        gw.metrics.login(LoginResult::Busy);
        return Err(GatewayError::Unavailable(
            "the gateway is busy checking other logins; try again in a moment".into(),
        ));
    };
    let denied = || GatewayError::Unauthorized("invalid user name or password".into());
    let looked_up = async {
        let hash = gw.store.get_password_hash(&req.user).await?;
        let snapshot = gw.catalog.snapshot().await?;
        Ok::<_, GatewayError>((hash, snapshot))
    }
    .await;
    let (hash, snapshot) = match looked_up {
        Ok(found) => found,
        Err(err) => {
            gw.limiter.not_checked(&attempt);
            return Err(err);
        }
    };
    let user = snapshot.users.get(&req.user).cloned();
    let ok = gw
        .limiter
        .check_password(slot, req.password.clone(), hash)
        .await;
    let Some(user) = user.filter(|_| ok) else {
        tracing::info!(user = %req.user, addr = %peer.addr, "login failed");
        gw.metrics.login(LoginResult::Failed);
        return Err(denied());
    };
    // The second factor, asked for only once the password is right, so that whether a user
    // has one is not told to someone who does not know the password. A wrong code stays
    // counted as a failed attempt; a missing one was no guess and is taken back, without
    // forgetting earlier failures (which `succeeded` would).
    match second_factor(&gw, &user.metadata.name, req.otp.as_deref()).await {
        Ok(()) => {}
        Err(LoginFactor::Missing) => {
            gw.limiter.not_checked(&attempt);
            return Err(GatewayError::Unauthorized(mfa::CODE_REQUIRED.into()));
        }
        Err(LoginFactor::Refused) => {
            tracing::info!(user = %req.user, addr = %peer.addr, "login failed: one-time code refused");
            gw.metrics.login(LoginResult::Failed);
            return Err(GatewayError::Unauthorized(mfa::CODE_INVALID.into()));
        }
        Err(LoginFactor::Locked) => {
            gw.limiter.not_checked(&attempt);
            tracing::warn!(user = %req.user, addr = %peer.addr, "login refused: too many wrong one-time codes for this user");
            gw.metrics.login(LoginResult::RateLimited);
            return Err(GatewayError::TooManyRequests(format!(
                "too many wrong one-time codes for this user (more than {} in an hour); try again later",
                mfa::MAX_CODE_FAILURES
            )));
        }
        Err(LoginFactor::Failed(err)) => {
            gw.limiter.not_checked(&attempt);
            return Err(err);
        }
    }
    gw.limiter.succeeded(&attempt);
    let checker = snapshot
        .checker(&user)
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let mut ttl = gw.config.cert_ttl;
    if let Some(requested) = req.ttl_secs {
        ttl = ttl.min(Duration::from_secs(requested));
    }
    if ttl.is_zero() {
        return Err(GatewayError::BadRequest(
            "a certificate lifetime must be positive".into(),
        ));
    }
    let ttl = checker.cap_ttl(ttl);
    let expires = time::Duration::try_from(ttl)
        .ok()
        .and_then(|ttl| OffsetDateTime::now_utc().checked_add(ttl))
        .ok_or_else(|| GatewayError::BadRequest("certificate lifetime out of range".into()))?;
    // Teleport's pin_source_ip: the certificate is valid from this address only.
    let pinned_ip = checker
        .limits()
        .pin_source_ip
        .then(|| peer.addr.ip().to_canonical());
    let identity = Identity {
        username: user.metadata.name.clone(),
        cluster: gw.cluster.clone(),
        usage: CertUsage::Login,
        expires,
        route: None,
        pinned_ip,
        mfa_session_until: None,
    };
    let cert_pem = dbward_pki::issue_user_cert(&gw.cas.user, &identity, &req.csr_pem)
        .map_err(|e| GatewayError::BadRequest(format!("certificate request refused: {e}")))?;
    tracing::info!(user = %identity.username, "login succeeded");
    gw.metrics.login(LoginResult::Succeeded);
    Ok(Json(LoginResponse {
        cert_pem,
        host_ca_pem: gw.cas.host.cert_pem.clone(),
        cluster: gw.cluster.clone(),
        expires: rfc3339(expires),
    }))
}

/// Why the second factor of a login did not pass.
enum LoginFactor {
    /// The user has a device and no code was sent.
    Missing,
    /// The code was wrong or already used.
    Refused,
    /// Too many wrong codes for this user lately: not checked.
    Locked,
    /// The device could not be checked (store).
    Failed(GatewayError),
}

/// Checks the TOTP code of a login when `user` has a device; `Ok` when they have none.
async fn second_factor(gw: &Gateway, user: &str, otp: Option<&str>) -> Result<(), LoginFactor> {
    if !mfa::has_device(&gw.store, user)
        .await
        .map_err(LoginFactor::Failed)?
    {
        return Ok(());
    }
    let code = otp
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or(LoginFactor::Missing)?;
    match mfa::check_code(&gw.store, &gw.instance_id, user, code)
        .await
        .map_err(LoginFactor::Failed)?
    {
        CodeCheck::Accepted => Ok(()),
        // Removed between the two reads: the login goes on as for a user without one.
        CodeCheck::NoDevice => Ok(()),
        CodeCheck::Refused => Err(LoginFactor::Refused),
        CodeCheck::Locked => Err(LoginFactor::Locked),
    }
}

/// A TOTP code for an action of a logged-in user (session MFA, replacing a device), counted
/// by the login limiter like a password: a wrong code is a failed attempt.
async fn check_user_code(
    gw: &Gateway,
    peer: &Peer,
    user: &str,
    otp: Option<&str>,
) -> Result<(), GatewayError> {
    let code = otp
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| GatewayError::Unauthorized(mfa::CODE_REQUIRED.into()))?;
    let Some(attempt) = gw.limiter.begin(user, peer.addr.ip()) else {
        tracing::info!(%user, addr = %peer.addr, "one-time code refused: too many failed attempts");
        return Err(GatewayError::TooManyRequests(
            "too many failed attempts; try again later".into(),
        ));
    };
    match mfa::check_code(&gw.store, &gw.instance_id, user, code).await {
        Ok(CodeCheck::Accepted) => {
            gw.limiter.succeeded(&attempt);
            Ok(())
        }
        Ok(CodeCheck::Refused | CodeCheck::NoDevice) => {
            tracing::info!(%user, addr = %peer.addr, "one-time code refused");
            Err(GatewayError::Unauthorized(mfa::CODE_INVALID.into()))
        }
        Ok(CodeCheck::Locked) => {
            gw.limiter.not_checked(&attempt);
            tracing::warn!(%user, addr = %peer.addr, "one-time code not checked: too many wrong codes for this user");
            Err(GatewayError::TooManyRequests(format!(
                "too many wrong one-time codes for this user (more than {} in an hour); try again later",
                mfa::MAX_CODE_FAILURES
            )))
        }
        Err(err) => {
            gw.limiter.not_checked(&attempt);
            Err(err)
        }
    }
}

/// What the gateway answers when `mfa add` needs the password; the CLI recognises it.
pub const PASSWORD_REQUIRED: &str = "your password is required to register a first MFA device";

/// The password of a logged-in user, checked like a login (limited per user and address,
/// a bounded number of checks at once).
async fn check_user_password(
    gw: &Gateway,
    peer: &Peer,
    user: &str,
    password: Option<&str>,
    hash: String,
) -> Result<(), GatewayError> {
    let password = password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| GatewayError::Unauthorized(PASSWORD_REQUIRED.into()))?;
    if password.len() > passwords::MAX_PASSWORD_LEN {
        return Err(GatewayError::BadRequest(format!(
            "a password has at most {} bytes",
            passwords::MAX_PASSWORD_LEN
        )));
    }
    let Some(attempt) = gw.limiter.begin(user, peer.addr.ip()) else {
        return Err(GatewayError::TooManyRequests(
            "too many failed attempts; try again later".into(),
        ));
    };
    let Some(slot) = gw.limiter.verification_slot().await else {
        gw.limiter.not_checked(&attempt);
        return Err(GatewayError::Unavailable(
            "the gateway is busy checking other logins; try again in a moment".into(),
        ));
    };
    if !gw
        .limiter
        .check_password(slot, password.to_string(), Some(hash))
        .await
    {
        tracing::info!(%user, addr = %peer.addr, "MFA device registration refused: wrong password");
        return Err(GatewayError::Unauthorized("invalid password".into()));
    }
    gw.limiter.succeeded(&attempt);
    Ok(())
}

/// `dbward mfa add`: a new TOTP device for the caller. Replacing an existing one needs a
/// current code of it, so a stolen login certificate alone cannot swap the device.
async fn add_mfa_device(
    State(gw): Shared,
    Extension(peer): Extension<Peer>,
    UserIdentity(identity): UserIdentity,
    Json(req): Json<MfaDeviceRequest>,
) -> Result<Json<MfaDeviceResponse>, GatewayError> {
    let user = &identity.username;
    if !mfa::has_device(&gw.store, user).await? {
        // A first device: a stolen login certificate alone must not register one (it would
        // then pass require_session_mfa, and lock the owner out of their next login). Users
        // with a password give it again; users of single sign-on have none here.
        if let Some(hash) = gw.store.get_password_hash(user).await? {
            check_user_password(&gw, &peer, user, req.password.as_deref(), hash).await?;
        }
    } else {
        check_user_code(&gw, &peer, user, req.otp.as_deref())
            .await
            .map_err(|err| match err {
                GatewayError::Unauthorized(msg) if msg == mfa::CODE_REQUIRED => {
                    GatewayError::Unauthorized(format!(
                        "{msg}: you already have an MFA device; give a current code of it with --otp to replace it"
                    ))
                }
                other => other,
            })?;
    }
    let otpauth_uri = mfa::register(&gw.store, &gw.cluster, user).await?;
    tracing::info!(%user, "MFA device registered");
    Ok(Json(MfaDeviceResponse { otpauth_uri }))
}

async fn create_resources(
    State(gw): Shared,
    _admin: AdminIdentity,
    Json(req): Json<CreateResourcesRequest>,
) -> Result<Json<CreateResourcesResponse>, GatewayError> {
    let parsed = dbward_rbac::parse_resources(&req.text, &req.file_name)?;
    let snapshot = gw.catalog.snapshot().await?;
    parsed.check_user_roles(&|role| snapshot.roles.contains_key(role))?;
    for r in &parsed.resources {
        r.validate()?;
    }
    let mode = if req.force {
        PutMode::Upsert
    } else {
        PutMode::CreateOnly
    };
    // Refuse the whole file before writing anything when a name exists and --force is absent.
    if !req.force {
        for r in &parsed.resources {
            if gw.store.get_resource(r.kind(), r.name()).await?.is_some() {
                return Err(GatewayError::Conflict(format!(
                    "{}/{} already exists; use --force to overwrite",
                    r.kind(),
                    r.name()
                )));
            }
        }
    }
    // A trusted cluster is joined before it is written: a failed join creates nothing.
    for r in &parsed.resources {
        if let Resource::TrustedCluster(trust) = r {
            let joined = crate::trust::root_record(&gw.store, r.name()).await?;
            if trust.spec.enabled && joined.is_none() {
                crate::trust::join(&gw, r.name(), &trust.spec.token, &trust.spec.web_proxy_addr)
                    .await?;
            }
        }
    }
    let mut created = Vec::new();
    for r in &parsed.resources {
        let json = serde_json::to_string(r).map_err(|e| GatewayError::Internal(e.to_string()))?;
        gw.store
            .put_resource(r.kind(), r.name(), &json, mode)
            .await
            .map_err(|e| match e {
                dbward_store::StoreError::AlreadyExists { kind, name } => GatewayError::Conflict(
                    format!("{kind}/{name} already exists; use --force to overwrite"),
                ),
                other => other.into(),
            })?;
        created.push(format!("{}/{}", r.kind(), r.name()));
    }
    if parsed
        .resources
        .iter()
        .any(|r| matches!(r, Resource::TrustedCluster(_)))
    {
        crate::trust::refresh_listeners(&gw).await;
    }
    // A changed role, user or trust applies to live sessions too.
    gw.sessions.revalidate_soon();
    Ok(Json(CreateResourcesResponse {
        created,
        warnings: parsed.warnings,
    }))
}

fn kind_of(word: &str) -> Result<&'static str, GatewayError> {
    canonical_kind(word).ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "unknown resource kind \"{word}\"; expected role, user, db, db_object_import_rule, oidc or trusted_cluster"
        ))
    })
}

async fn list_resources(
    State(gw): Shared,
    _admin: AdminIdentity,
    Path(kind): Path<String>,
) -> Result<Json<ResourceList>, GatewayError> {
    let kind = kind_of(&kind)?;
    let mut resources = Vec::new();
    for (_, json) in gw.store.list_resources(kind).await? {
        resources.push(shown(kind, &json)?);
    }
    Ok(Json(ResourceList { resources }))
}

async fn get_resource(
    State(gw): Shared,
    _admin: AdminIdentity,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<ResourceList>, GatewayError> {
    let kind = kind_of(&kind)?;
    let json = gw
        .store
        .get_resource(kind, &name)
        .await?
        .ok_or_else(|| GatewayError::NotFound(format!("{kind}/{name} not found")))?;
    Ok(Json(ResourceList {
        resources: vec![shown(kind, &json)?],
    }))
}

/// A stored resource as `dbward get` shows it: a connector's client secret stays inside.
fn shown(kind: &str, json: &str) -> Result<serde_json::Value, GatewayError> {
    let mut value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| GatewayError::Internal(e.to_string()))?;
    if kind == KIND_OIDC {
        if let Some(spec) = value.get_mut("spec").and_then(|s| s.as_object_mut()) {
            spec.remove("client_secret");
        }
    }
    Ok(value)
}

async fn delete_resource(
    State(gw): Shared,
    _admin: AdminIdentity,
    Path((kind, name)): Path<(String, String)>,
) -> Result<StatusCode, GatewayError> {
    let kind = kind_of(&kind)?;
    if !gw.store.delete_resource(kind, &name).await? {
        return Err(GatewayError::NotFound(format!("{kind}/{name} not found")));
    }
    if kind == KIND_USER {
        gw.store.delete_password(&name).await?;
        mfa::remove(&gw.store, &name).await?;
    }
    if kind == crate::catalog::KIND_TRUSTED_CLUSTER {
        crate::trust::forget_root(&gw, &name).await?;
        crate::trust::refresh_listeners(&gw).await;
    }
    gw.sessions.revalidate_soon();
    Ok(StatusCode::NO_CONTENT)
}

async fn add_user(
    State(gw): Shared,
    _admin: AdminIdentity,
    Json(req): Json<AddUserRequest>,
) -> Result<Json<AddUserResponse>, GatewayError> {
    let user = dbward_model::User::new(&req.name, &req.roles).with_traits(req.traits.clone());
    let resource = Resource::User(user);
    resource.validate()?;
    let snapshot = gw.catalog.snapshot().await?;
    for role in &req.roles {
        if !snapshot.roles.contains_key(role) {
            return Err(GatewayError::BadRequest(format!(
                "role \"{role}\" does not exist; create it first"
            )));
        }
    }
    let (password, generated) = match req.password {
        Some(p) if !p.is_empty() => (p, None),
        Some(_) => return Err(GatewayError::BadRequest("empty password".into())),
        None => {
            let p = passwords::generate_password();
            (p.clone(), Some(p))
        }
    };
    let hash = tokio::task::spawn_blocking(move || passwords::hash_password(&password))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(GatewayError::Internal)?;
    let json =
        serde_json::to_string(&resource).map_err(|e| GatewayError::Internal(e.to_string()))?;
    gw.store
        .put_resource(KIND_USER, &req.name, &json, PutMode::CreateOnly)
        .await
        .map_err(|e| match e {
            dbward_store::StoreError::AlreadyExists { name, .. } => {
                GatewayError::Conflict(format!("user \"{name}\" already exists"))
            }
            other => other.into(),
        })?;
    gw.store.set_password_hash(&req.name, &hash).await?;
    let otpauth_uri = if req.mfa {
        Some(mfa::register(&gw.store, &gw.cluster, &req.name).await?)
    } else {
        None
    };
    Ok(Json(AddUserResponse {
        name: req.name,
        generated_password: generated,
        otpauth_uri,
    }))
}

/// `dbward users reset`: a new password for an existing user (users created from files have
/// none); generated and returned once unless given.
async fn reset_password(
    State(gw): Shared,
    _admin: AdminIdentity,
    Path(name): Path<String>,
    Json(req): Json<ResetPasswordRequest>,
) -> Result<Json<AddUserResponse>, GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    if !snapshot.users.contains_key(&name) {
        return Err(GatewayError::NotFound(format!("user \"{name}\" not found")));
    }
    let (password, generated) = match req.password {
        Some(p) if !p.is_empty() => (p, None),
        Some(_) => return Err(GatewayError::BadRequest("empty password".into())),
        None => {
            let p = passwords::generate_password();
            (p.clone(), Some(p))
        }
    };
    let hash = tokio::task::spawn_blocking(move || passwords::hash_password(&password))
        .await
        .map_err(|e| GatewayError::Internal(e.to_string()))?
        .map_err(GatewayError::Internal)?;
    gw.store.set_password_hash(&name, &hash).await?;
    Ok(Json(AddUserResponse {
        name,
        generated_password: generated,
        otpauth_uri: None,
    }))
}

async fn remove_user(
    State(gw): Shared,
    _admin: AdminIdentity,
    Path(name): Path<String>,
) -> Result<StatusCode, GatewayError> {
    if !gw.store.delete_resource(KIND_USER, &name).await? {
        return Err(GatewayError::NotFound(format!("user \"{name}\" not found")));
    }
    gw.store.delete_password(&name).await?;
    mfa::remove(&gw.store, &name).await?;
    gw.sessions.revalidate_soon();
    Ok(StatusCode::NO_CONTENT)
}

async fn list_dbs(
    State(gw): Shared,
    UserIdentity(identity): UserIdentity,
    Query(query): Query<DbListQuery>,
) -> Result<Json<DbListResponse>, GatewayError> {
    let snapshot = gw.catalog.snapshot().await?;
    let user = snapshot
        .users
        .get(&identity.username)
        .ok_or_else(|| GatewayError::Unauthorized("user no longer exists".into()))?;
    if let Some(leaf) = query.cluster.as_deref().filter(|c| *c != gw.cluster) {
        // The leaf decides what the user's mapped roles may see.
        let listed = crate::trust::leaf_dbs(&gw, leaf, user, identity.expires).await?;
        return Ok(Json(listed));
    }
    let checker = snapshot
        .checker(user)
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    Ok(Json(DbListResponse {
        databases: db_entries(&snapshot, &checker),
    }))
}

/// `GET /v1/remote/dbs` on a leaf: what a trusted root's user may see here with the roles
/// the role map gives them.
async fn list_remote_dbs(
    State(gw): Shared,
    Extension(peer): Extension<Peer>,
) -> Result<Json<DbListResponse>, GatewayError> {
    let (identity, remote) = peer.remote.ok_or_else(|| {
        GatewayError::Unauthorized("a certificate of a trusted root cluster is required".into())
    })?;
    if identity.usage != CertUsage::Login || identity.expires <= OffsetDateTime::now_utc() {
        return Err(GatewayError::Unauthorized(
            "this endpoint needs a valid login certificate".into(),
        ));
    }
    let snapshot = gw.catalog.snapshot().await?;
    let trusted = snapshot
        .trusted
        .get(&remote.cluster)
        .filter(|t| t.record.user_ca_pem == remote.user_ca_pem)
        .ok_or_else(|| GatewayError::Unauthorized("the trust was removed".into()))?;
    let Some(user) = remote.leaf_user(&identity.username, trusted) else {
        return Ok(Json(DbListResponse {
            databases: Vec::new(),
        }));
    };
    // Built for this call only: never cached under a name a local user could hold.
    let checker = dbward_rbac::AccessChecker::new(&user, &snapshot.roles_of(&user))
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    Ok(Json(DbListResponse {
        databases: db_entries(&snapshot, &checker),
    }))
}

/// The databases `checker` lets its user see, as `db ls` shows them.
fn db_entries(
    snapshot: &crate::catalog::Snapshot,
    checker: &dbward_rbac::AccessChecker,
) -> Vec<DbListEntry> {
    let mut databases = Vec::new();
    for db in snapshot.dbs.values() {
        if !checker.can_see_db(db) {
            continue;
        }
        let provisioning = checker.provisioning(db).ok().flatten();
        databases.push(DbListEntry {
            name: db.metadata.name.clone(),
            description: db.metadata.description.clone(),
            protocol: db.spec.protocol.to_string(),
            uri: db.spec.uri.clone(),
            labels: db.metadata.labels.clone(),
            allowed_users: checker.allowed_users_display(db),
            db_roles: provisioning
                .as_ref()
                .map(|p| p.roles.iter().cloned().collect())
                .unwrap_or_default(),
            auto_provisioning: provisioning.is_some(),
            db_permissions: if provisioning.is_some() {
                permission_lines(&checker.permission_rules(db))
            } else {
                Vec::new()
            },
        });
    }
    databases
}

/// `POST /v1/tokens`: a join token for a leaf cluster.
async fn add_token(
    State(gw): Shared,
    _admin: AdminIdentity,
    Json(req): Json<AddTokenRequest>,
) -> Result<Json<AddTokenResponse>, GatewayError> {
    if req.token_type != "trusted_cluster" {
        return Err(GatewayError::BadRequest(format!(
            "unknown token type \"{}\"; expected trusted_cluster",
            req.token_type
        )));
    }
    let (token, expires) = crate::trust::add_token(&gw, req.ttl_secs).await?;
    Ok(Json(AddTokenResponse {
        token,
        expires: rfc3339(expires),
    }))
}

/// `POST /v1/trusted-clusters/join`: a leaf joins with a token (no certificate: the token's
/// MAC authenticates the request).
async fn join_cluster(
    State(gw): Shared,
    Json(req): Json<crate::trust::JoinRequest>,
) -> Result<Json<crate::trust::JoinResponse>, GatewayError> {
    crate::trust::accept_join(&gw, req).await.map(Json)
}

async fn issue_db_cert(
    State(gw): Shared,
    Extension(peer): Extension<Peer>,
    UserIdentity(identity): UserIdentity,
    Json(req): Json<DbCertRequest>,
) -> Result<Json<DbCertResponse>, GatewayError> {
    // The roles end up in the certificate: keep it a certificate.
    if req.db_roles.len() > MAX_REQUESTED_DB_ROLES {
        return Err(GatewayError::BadRequest(format!(
            "at most {MAX_REQUESTED_DB_ROLES} database roles may be requested at once"
        )));
    }
    let snapshot = gw.catalog.snapshot().await?;
    let user = snapshot
        .users
        .get(&identity.username)
        .ok_or_else(|| GatewayError::Unauthorized("user no longer exists".into()))?;
    if let Some(leaf) = req.cluster.clone().filter(|c| *c != gw.cluster) {
        return issue_leaf_db_cert(&gw, identity, user, &leaf, req).await;
    }
    let checker = snapshot
        .checker(user)
        .map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    let not_found = || GatewayError::NotFound(format!("database \"{}\" not found", req.db));
    let db = snapshot.dbs.get(&req.db).ok_or_else(not_found)?;
    if !checker.can_see_db(db) {
        return Err(not_found());
    }
    let provisioning = checker.provisioning(db).ok().flatten();
    let db_user = match (&req.db_user, &provisioning) {
        (Some(u), _) => u.clone(),
        (None, Some(_)) => identity.username.clone(),
        (None, None) => {
            return Err(GatewayError::BadRequest(
                "--db-user is required for this database (automatic user provisioning is off)"
                    .into(),
            ))
        }
    };
    // Early check with the route's defaults, so mistakes show at `db login`; the listener
    // checks again with what the client actually sends.
    let db_name = req.db_name.clone().unwrap_or_default();
    let decision = checker
        .authorize(db, &db_user, &db_name, &req.db_roles)
        .map_err(|denied| {
            tracing::info!(user = %identity.username, db = %req.db, reason = %denied.reason(), "db login denied");
            GatewayError::Forbidden(denied.user_message())
        })?;
    // require_session_mfa: a fresh code, and a certificate that opens sessions for a minute
    // only; the sessions it opens may last as long as the login.
    let (expires, mfa_session_until) = if decision.session_mfa {
        if !mfa::has_device(&gw.store, &identity.username).await? {
            return Err(GatewayError::Forbidden(format!(
                "database \"{}\" requires a one-time code for each database login (require_session_mfa) and you have no MFA device: register one with `dbward mfa add`",
                req.db
            )));
        }
        check_user_code(&gw, &peer, &identity.username, req.otp.as_deref()).await?;
        let minute = OffsetDateTime::now_utc() + MFA_DB_CERT_TTL;
        (minute.min(identity.expires), Some(identity.expires))
    } else {
        (identity.expires, None)
    };
    let db_identity = Identity {
        username: identity.username.clone(),
        cluster: gw.cluster.clone(),
        usage: CertUsage::Db,
        expires,
        route: Some(DbRoute {
            service: req.db.clone(),
            db_user: Some(db_user.clone()),
            db_name: req.db_name.clone(),
            db_roles: req.db_roles.clone(),
        }),
        // The login certificate's pin (checked against this call's address when the user's
        // roles pin) carries over: a database certificate is valid from the same address.
        pinned_ip: identity.pinned_ip,
        mfa_session_until,
    };
    let cert_pem = dbward_pki::issue_user_cert(&gw.cas.user, &db_identity, &req.csr_pem)
        .map_err(|e| GatewayError::BadRequest(format!("certificate request refused: {e}")))?;
    let port = listener_port(&gw, db.spec.protocol).await?;
    Ok(Json(DbCertResponse {
        cert_pem,
        host_ca_pem: gw.cas.host.cert_pem.clone(),
        protocol: db.spec.protocol.to_string(),
        db_user,
        db_name: req.db_name,
        gateway_host: gw.config.public_addr.clone(),
        gateway_port: port,
        expires: rfc3339(expires),
        db_permissions: permission_lines(&decision.db_permissions),
    }))
}

/// `db login --cluster LEAF`: a database certificate of this cluster whose route leads to a
/// database of a trusted leaf, reached through this gateway. The leaf decides access; the
/// database user is `remote-<user>-<this cluster>` unless the user asks for another (which
/// the leaf refuses with the mapped name).
async fn issue_leaf_db_cert(
    gw: &Gateway,
    identity: Identity,
    user: &dbward_model::User,
    leaf: &str,
    req: DbCertRequest,
) -> Result<Json<DbCertResponse>, GatewayError> {
    let listed = crate::trust::leaf_dbs(gw, leaf, user, identity.expires).await?;
    let entry = listed
        .databases
        .iter()
        .find(|d| d.name == req.db)
        .ok_or_else(|| {
            GatewayError::NotFound(format!(
                "database \"{}\" not found in cluster \"{leaf}\"",
                req.db
            ))
        })?;
    let protocol: dbward_model::Protocol = match entry.protocol.as_str() {
        "postgres" => dbward_model::Protocol::Postgres,
        "mysql" => dbward_model::Protocol::Mysql,
        other => {
            return Err(GatewayError::Internal(format!(
                "leaf answered an unknown protocol {other:?}"
            )))
        }
    };
    let db_user = req
        .db_user
        .clone()
        .unwrap_or_else(|| crate::trust::mapped_remote_name(&identity.username, &gw.cluster));
    let db_identity = Identity {
        username: identity.username.clone(),
        cluster: gw.cluster.clone(),
        usage: CertUsage::Db,
        expires: identity.expires,
        route: Some(DbRoute {
            service: req.db.clone(),
            db_user: Some(db_user.clone()),
            db_name: req.db_name.clone(),
            db_roles: req.db_roles.clone(),
        }),
        pinned_ip: identity.pinned_ip,
        mfa_session_until: None,
    };
    let claims = dbward_pki::ClusterClaims {
        route_cluster: Some(leaf.to_string()),
        ..Default::default()
    };
    let cert_pem =
        dbward_pki::issue_user_cert_with_claims(&gw.cas.user, &db_identity, &claims, &req.csr_pem)
            .map_err(|e| GatewayError::BadRequest(format!("certificate request refused: {e}")))?;
    let port = listener_port(gw, protocol).await?;
    Ok(Json(DbCertResponse {
        cert_pem,
        host_ca_pem: gw.cas.host.cert_pem.clone(),
        protocol: protocol.to_string(),
        db_user,
        db_name: req.db_name,
        gateway_host: gw.config.public_addr.clone(),
        gateway_port: port,
        expires: rfc3339(identity.expires),
        db_permissions: entry.db_permissions.clone(),
    }))
}

/// The port of this gateway's listener for `protocol`, which database certificates lead to.
async fn listener_port(
    gw: &Gateway,
    protocol: dbward_model::Protocol,
) -> Result<u16, GatewayError> {
    let endpoints = gw.endpoints.read().await.clone();
    let listen = match protocol {
        dbward_model::Protocol::Postgres => endpoints.postgres,
        dbward_model::Protocol::Mysql => endpoints.mysql,
    }
    .ok_or_else(|| {
        GatewayError::BadRequest(format!(
            "the {protocol} listener is disabled on this gateway"
        ))
    })?;
    Ok(listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0))
}

/// Allow rules first, then deny rules, each once.
fn permission_lines(rules: &[dbward_rbac::PermissionRule]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for effect in [
        dbward_rbac::PermissionEffect::Allow,
        dbward_rbac::PermissionEffect::Deny,
    ] {
        for rule in rules.iter().filter(|r| r.effect == effect) {
            if !lines.contains(&rule.description) {
                lines.push(rule.description.clone());
            }
        }
    }
    lines
}

async fn check_db(
    State(gw): Shared,
    _admin: AdminIdentity,
    Path(name): Path<String>,
    Query(query): Query<DbCheckQuery>,
) -> Result<Json<DbCheckResponse>, GatewayError> {
    let db_names: Vec<String> = query
        .db_names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    let findings = crate::session::preflight(&gw, &name, &db_names).await?;
    Ok(Json(DbCheckResponse { findings }))
}

async fn search_audit(
    State(gw): Shared,
    _admin: AdminIdentity,
    Query(q): Query<AuditSearchQuery>,
) -> Result<Json<AuditSearchResponse>, GatewayError> {
    // Events are stored in batches: make everything emitted so far visible.
    gw.audit.flush().await;
    let since = match q.since_secs {
        None => None,
        Some(secs) if secs > MAX_AUDIT_SINCE_SECS => {
            return Err(GatewayError::BadRequest(format!(
                "since_secs is at most {MAX_AUDIT_SINCE_SECS} (100 years)"
            )))
        }
        Some(secs) => {
            let since = OffsetDateTime::now_utc()
                .checked_sub(time::Duration::seconds(secs as i64))
                .ok_or_else(|| GatewayError::BadRequest("since_secs is too far back".into()))?;
            Some(since.unix_timestamp().saturating_mul(1000))
        }
    };
    let limit = q.limit.unwrap_or(1000);
    if limit > MAX_AUDIT_LIMIT {
        return Err(GatewayError::BadRequest(format!(
            "limit is at most {MAX_AUDIT_LIMIT}"
        )));
    }
    let rows = gw
        .store
        .search_audit(dbward_store::AuditQuery {
            event_type: q.event_type,
            user: q.user,
            since_unix_ms: since,
            limit,
        })
        .await?;
    let events = rows
        .iter()
        .filter_map(|r| serde_json::from_str(r).ok())
        .collect();
    Ok(Json(AuditSearchResponse { events }))
}
