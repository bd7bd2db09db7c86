//! Trusted clusters: users of a root cluster reach the databases of a leaf cluster.
//!
//! - **Tokens** (root): `POST /v1/tokens` makes a random single-use join token with an expiry,
//!   kept in the store (`trust/token/<sha256 of the token>`).
//! - **Join** (leaf → root): creating or enabling a `trusted_cluster` on the leaf calls the
//!   root's `POST /v1/trusted-clusters/join` ([`join`]). The token never travels: the leaf sends
//!   its name, host CA and addresses with HMAC-SHA256(token, request); the root checks the MAC,
//!   consumes the token and records the leaf (`trust/leaf/<name>`), and answers with its name
//!   and CAs, MACed with the token over the leaf's nonce. The leaf believes nothing in the
//!   answer before that MAC verifies, then records the root (`trust/root/<name>`). TLS is not
//!   relied on for this exchange (the leaf does not know the root's host CA yet).
//! - **Trust** (leaf): a certificate that chains to a recorded root's user CA and names that
//!   root as its cluster is accepted while the `trusted_cluster` is enabled ([`RemoteUser`]);
//!   its roles and traits come from the certificate (the root vouches for them), mapped by
//!   `role_map`. Local certificates never contribute roles this way.
//! - **Forwarding** (root): a database certificate whose route names a leaf is served by
//!   connecting to the leaf's listener like to a database, with a short-lived certificate the
//!   root mints for the user ([`forward_target`]).

pub mod http;

use std::collections::BTreeMap;
use std::sync::Arc;

use dbward_model::{Protocol, RoleMapping, User};
use dbward_pki::{CaKind, CertAuthority, CertUsage, ClusterClaims, DbRoute, Identity};
use hyper::Method;
use ring::hmac;
use ring::rand::SecureRandom;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::GatewayError;
use crate::Gateway;

const TOKEN_PREFIX: &str = "trust/token/";
const LEAF_PREFIX: &str = "trust/leaf/";
const ROOT_PREFIX: &str = "trust/root/";
const REQUEST_CONTEXT: &[u8] = b"dbward trusted cluster join request v1\n";
const ANSWER_CONTEXT: &[u8] = b"dbward trusted cluster join answer v1\n";
/// Longest lifetime of a join token.
pub const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;
/// Lifetime of the login certificates a root mints to list a leaf's databases for a user.
const LISTING_CERT_SECS: i64 = 300;

/// What a join token's record holds.
#[derive(Serialize, Deserialize)]
struct TokenRecord {
    token: String,
    expires_unix: i64,
}

/// What a root knows of one of its leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafRecord {
    pub cluster: String,
    pub host_ca_pem: String,
    pub web_addr: String,
    #[serde(default)]
    pub postgres_addr: Option<String>,
    #[serde(default)]
    pub mysql_addr: Option<String>,
}

/// What a leaf knows of its root, learnt at join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootRecord {
    pub cluster: String,
    pub user_ca_pem: String,
    pub host_ca_pem: String,
}

/// A root this leaf trusts now: an enabled `trusted_cluster` with a completed join.
#[derive(Debug, Clone)]
pub struct TrustedRoot {
    pub record: RootRecord,
    pub role_map: Vec<RoleMapping>,
}

/// A user of a trusted root cluster, as its certificate and the leaf's role map make it.
#[derive(Debug, Clone)]
pub struct RemoteUser {
    /// The root cluster's name.
    pub cluster: String,
    /// The root's user CA the certificate chained to (a re-joined root with another CA ends
    /// the sessions of the old one).
    pub user_ca_pem: String,
    /// The user's roles in the root, as the root vouched for them.
    pub roles: Vec<String>,
    pub traits: BTreeMap<String, Vec<String>>,
}

impl RemoteUser {
    /// The name of this user on the leaf: `remote-<user>-<root cluster>`.
    pub fn mapped_name(&self, username: &str) -> String {
        mapped_remote_name(username, &self.cluster)
    }

    /// The leaf user the access decision is made for: the mapped name, the leaf roles the
    /// role map gives, the root's traits. `None` when no role maps.
    pub fn leaf_user(&self, username: &str, trusted: &TrustedRoot) -> Option<User> {
        let local = dbward_rbac::map_remote_roles(&trusted.role_map, &self.roles);
        if local.is_empty() {
            return None;
        }
        Some(User::new(&self.mapped_name(username), &local).with_traits(self.traits.clone()))
    }
}

/// `remote-<user>-<root cluster>`, the database user of a root's user on a leaf.
pub fn mapped_remote_name(username: &str, root_cluster: &str) -> String {
    format!("remote-{username}-{root_cluster}")
}

/// The text a client of a root gets when it connects to a leaf with another user name.
pub fn wrong_remote_name(expected: &str, requested: &str) -> String {
    format!(
        "please use your mapped remote username (\"{expected}\") to connect instead of \"{requested}\""
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => u8::from_str_radix(std::str::from_utf8(&[*hi, *lo]).ok()?, 16).ok(),
            _ => None,
        })
        .collect()
}

fn token_id(token: &str) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref())
}

fn mac(token: &str, context: &[u8], body: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(context);
    ctx.update(body.as_bytes());
    hex(ctx.sign().as_ref())
}

fn mac_ok(token: &str, context: &[u8], body: &str, tag_hex: &str) -> bool {
    let Some(tag) = unhex(tag_hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes());
    let mut message = context.to_vec();
    message.extend_from_slice(body.as_bytes());
    hmac::verify(&key, &message, &tag).is_ok()
}

fn random_hex(bytes: usize) -> Result<String, GatewayError> {
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| GatewayError::Internal("no randomness".into()))?;
    Ok(hex(&buf))
}

// ---------------------------------------------------------------- tokens (root)

/// Makes a join token valid for `ttl_secs`; returns it and its expiry.
pub async fn add_token(
    gw: &Gateway,
    ttl_secs: u64,
) -> Result<(String, OffsetDateTime), GatewayError> {
    if ttl_secs == 0 || ttl_secs > MAX_TOKEN_TTL_SECS {
        return Err(GatewayError::BadRequest(format!(
            "a token lifetime is 1 second to {} hours",
            MAX_TOKEN_TTL_SECS / 3600
        )));
    }
    let token = random_hex(32)?;
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(ttl_secs as i64);
    let record = TokenRecord {
        token: token.clone(),
        expires_unix: expires.unix_timestamp(),
    };
    let json = serde_json::to_string(&record).map_err(|e| GatewayError::Internal(e.to_string()))?;
    gw.store
        .kv_put(&format!("{TOKEN_PREFIX}{}", token_id(&token)), &json)
        .await?;
    Ok((token, expires))
}

// ---------------------------------------------------------------- join (wire)

/// `POST /v1/trusted-clusters/join`: the request the leaf sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// SHA-256 of the token (hex): which token the MAC is made with.
    pub token_id: String,
    /// [`JoinRequestBody`] as JSON text, exactly as MACed.
    pub request: String,
    /// HMAC-SHA256(token, context ‖ request), hex.
    pub mac: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequestBody {
    /// The root the leaf means to join (its `trusted_cluster` name).
    pub root_cluster: String,
    pub leaf: LeafRecord,
    /// Random; the answer's MAC covers it, so an old answer cannot be replayed.
    pub nonce: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinResponse {
    /// [`JoinAnswer`] as JSON text, exactly as MACed.
    pub answer: String,
    pub mac: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAnswer {
    pub root: RootRecord,
    pub nonce: String,
}

/// Root side of a join: checks the MAC, consumes the token, records the leaf.
pub async fn accept_join(gw: &Gateway, req: JoinRequest) -> Result<JoinResponse, GatewayError> {
    let refused =
        || GatewayError::Forbidden("the join token is invalid, expired or already used".into());
    let key = format!("{TOKEN_PREFIX}{}", req.token_id);
    let Some(json) = gw.store.kv_get(&key).await? else {
        tracing::info!("trusted cluster join refused: unknown token");
        return Err(refused());
    };
    let record: TokenRecord =
        serde_json::from_str(&json).map_err(|e| GatewayError::Internal(e.to_string()))?;
    if !mac_ok(&record.token, REQUEST_CONTEXT, &req.request, &req.mac) {
        tracing::info!("trusted cluster join refused: MAC does not verify");
        return Err(refused());
    }
    if record.expires_unix <= OffsetDateTime::now_utc().unix_timestamp() {
        gw.store.kv_delete(&key).await?;
        tracing::info!("trusted cluster join refused: token expired");
        return Err(refused());
    }
    let body: JoinRequestBody = serde_json::from_str(&req.request)
        .map_err(|e| GatewayError::BadRequest(format!("join request: {e}")))?;
    // A leaf already joined under this name keeps its record: a join with another host CA
    // (another cluster taking the name, with any valid token) is refused. The same leaf may
    // join again, to update its addresses.
    let leaf_key = format!("{LEAF_PREFIX}{}", body.leaf.cluster);
    if let Some(existing) = gw.store.kv_get(&leaf_key).await? {
        let existing: LeafRecord =
            serde_json::from_str(&existing).map_err(|e| GatewayError::Internal(e.to_string()))?;
        if existing.host_ca_pem.trim() != body.leaf.host_ca_pem.trim() {
            tracing::warn!(leaf = %body.leaf.cluster, "trusted cluster join refused: another cluster already joined under this name");
            return Err(GatewayError::Conflict(format!(
                "a leaf cluster named \"{}\" has already joined with another host CA; the root keeps it",
                body.leaf.cluster
            )));
        }
    }
    // Single use: only the caller whose delete removed it goes on.
    if !gw.store.kv_delete(&key).await? {
        tracing::info!("trusted cluster join refused: token used meanwhile");
        return Err(refused());
    }
    if body.root_cluster != gw.cluster {
        return Err(GatewayError::BadRequest(format!(
            "this is cluster \"{}\", not \"{}\": name the trusted_cluster after the root cluster",
            gw.cluster, body.root_cluster
        )));
    }
    if body.leaf.cluster == gw.cluster || body.leaf.cluster.is_empty() {
        return Err(GatewayError::BadRequest(
            "a leaf cluster needs a name of its own".into(),
        ));
    }
    dbward_pki::parse_cert_pem(&body.leaf.host_ca_pem)
        .map_err(|e| GatewayError::BadRequest(format!("leaf host CA: {e}")))?;
    let leaf_json =
        serde_json::to_string(&body.leaf).map_err(|e| GatewayError::Internal(e.to_string()))?;
    gw.store.kv_put(&leaf_key, &leaf_json).await?;
    tracing::info!(leaf = %body.leaf.cluster, "trusted cluster joined");
    let answer = JoinAnswer {
        root: RootRecord {
            cluster: gw.cluster.clone(),
            user_ca_pem: gw.cas.user.cert_pem.clone(),
            host_ca_pem: gw.cas.host.cert_pem.clone(),
        },
        nonce: body.nonce,
    };
    let answer =
        serde_json::to_string(&answer).map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok(JoinResponse {
        mac: mac(&record.token, ANSWER_CONTEXT, &answer),
        answer,
    })
}

/// Leaf side of a join: asks the root at `web_proxy_addr`, verifies its answer, records it.
pub async fn join(
    gw: &Gateway,
    root_cluster: &str,
    token: &str,
    web_proxy_addr: &str,
) -> Result<RootRecord, GatewayError> {
    if token.is_empty() {
        return Err(GatewayError::BadRequest(format!(
            "trusted_cluster \"{root_cluster}\": spec.token is required to join"
        )));
    }
    let endpoints = gw.endpoints.read().await.clone();
    let public = |listen: &Option<String>| {
        listen.as_ref().map(|a| {
            let port = a.rsplit(':').next().unwrap_or_default();
            format!("{}:{port}", gw.config.public_addr)
        })
    };
    let nonce = random_hex(16)?;
    let body = JoinRequestBody {
        root_cluster: root_cluster.to_string(),
        leaf: LeafRecord {
            cluster: gw.cluster.clone(),
            host_ca_pem: gw.cas.host.cert_pem.clone(),
            web_addr: public(&Some(endpoints.web.clone())).unwrap_or_default(),
            postgres_addr: public(&endpoints.postgres),
            mysql_addr: public(&endpoints.mysql),
        },
        nonce: nonce.clone(),
    };
    let request =
        serde_json::to_string(&body).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let req = JoinRequest {
        token_id: token_id(token),
        mac: mac(token, REQUEST_CONTEXT, &request),
        request,
    };
    // The root's certificate cannot be checked yet: the answer's MAC is what is trusted.
    let tls = dbward_pki::client_config(None, dbward_pki::ServerVerification::Insecure, None)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let failed = |why: String| {
        GatewayError::BadRequest(format!(
            "trusted_cluster \"{root_cluster}\": joining the root at {web_proxy_addr} failed: {why}"
        ))
    };
    let response: JoinResponse = http::call(
        web_proxy_addr,
        tls,
        Method::POST,
        "/v1/trusted-clusters/join",
        Some(&req),
    )
    .await
    .map_err(|e| failed(e.to_string()))?;
    if !mac_ok(token, ANSWER_CONTEXT, &response.answer, &response.mac) {
        return Err(failed("the answer is not signed with the token".into()));
    }
    let answer: JoinAnswer =
        serde_json::from_str(&response.answer).map_err(|e| failed(e.to_string()))?;
    if answer.nonce != nonce {
        return Err(failed("the answer is not for this request".into()));
    }
    if answer.root.cluster != root_cluster {
        return Err(failed(format!(
            "the root's cluster name is \"{}\"; name the trusted_cluster after it",
            answer.root.cluster
        )));
    }
    dbward_pki::parse_cert_pem(&answer.root.user_ca_pem).map_err(|e| failed(e.to_string()))?;
    let json =
        serde_json::to_string(&answer.root).map_err(|e| GatewayError::Internal(e.to_string()))?;
    gw.store
        .kv_put(&format!("{ROOT_PREFIX}{root_cluster}"), &json)
        .await?;
    Ok(answer.root)
}

// ---------------------------------------------------------------- records

/// The root this leaf has joined under `name`, if any.
pub async fn root_record(
    store: &dbward_store::Store,
    name: &str,
) -> Result<Option<RootRecord>, GatewayError> {
    match store.kv_get(&format!("{ROOT_PREFIX}{name}")).await? {
        Some(json) => Ok(serde_json::from_str(&json).ok()),
        None => Ok(None),
    }
}

/// Forgets the root recorded under `name` (its `trusted_cluster` was deleted).
pub async fn forget_root(gw: &Gateway, name: &str) -> Result<(), GatewayError> {
    gw.store.kv_delete(&format!("{ROOT_PREFIX}{name}")).await?;
    Ok(())
}

/// The leaf recorded under `name` on this root.
pub async fn leaf_record(gw: &Gateway, name: &str) -> Result<Option<LeafRecord>, GatewayError> {
    match gw.store.kv_get(&format!("{LEAF_PREFIX}{name}")).await? {
        Some(json) => Ok(serde_json::from_str(&json).ok()),
        None => Ok(None),
    }
}

/// Puts the currently trusted roots into the listeners' TLS verifiers.
pub async fn refresh_listeners(gw: &Gateway) {
    match gw.catalog.snapshot().await {
        Ok(snapshot) => {
            let roots: Vec<(String, String)> = snapshot
                .trusted
                .values()
                .map(|t| (t.record.cluster.clone(), t.record.user_ca_pem.clone()))
                .collect();
            for problem in gw.trust.replace(&roots) {
                tracing::warn!(%problem, "trusted root not usable");
            }
        }
        Err(err) => tracing::warn!(%err, "trusted roots not refreshed"),
    }
}

/// Keeps the listeners' trusted roots in step with the store, for changes made through
/// another gateway sharing it (this gateway's own changes apply at once).
pub async fn refresh_loop(gw: Arc<Gateway>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => refresh_listeners(&gw).await,
        }
    }
}

/// Whether a chain that did not verify against this cluster's CA is a trusted root's user's:
/// the identity and the [`RemoteUser`] it stands for.
pub fn verify_remote(
    snapshot: &crate::catalog::Snapshot,
    chain: &[CertificateDer<'static>],
) -> Option<(Identity, RemoteUser)> {
    let now = OffsetDateTime::now_utc();
    for trusted in snapshot.trusted.values() {
        let ca = CertAuthority {
            kind: CaKind::User,
            cert_pem: trusted.record.user_ca_pem.clone(),
            key_pem: String::new(),
        };
        if let Ok((identity, claims)) =
            dbward_pki::verify_user_cert_with_claims(chain, &ca, &trusted.record.cluster, now)
        {
            let remote = RemoteUser {
                cluster: trusted.record.cluster.clone(),
                user_ca_pem: trusted.record.user_ca_pem.clone(),
                roles: claims.roles,
                traits: claims.traits,
            };
            return Some((identity, remote));
        }
    }
    None
}

// ---------------------------------------------------------------- root → leaf

/// A certificate this root mints for `user` to present to a leaf: usage, route, expiry as
/// given (never later than the user's own certificate: a forwarded session lasts as long as
/// the certificate the client showed), and the user's roles and traits here, which the leaf
/// maps. It never leaves this gateway. Returns (cert, key).
pub fn mint_for_leaf(
    gw: &Gateway,
    user: &User,
    usage: CertUsage,
    route: Option<DbRoute>,
    not_after: OffsetDateTime,
) -> Result<(String, String), GatewayError> {
    let identity = Identity {
        username: user.metadata.name.clone(),
        cluster: gw.cluster.clone(),
        usage,
        expires: not_after,
        route,
        pinned_ip: None,
        mfa_session_until: None,
    };
    let claims = ClusterClaims {
        route_cluster: None,
        roles: user.spec.roles.clone(),
        traits: user.spec.traits.clone(),
    };
    let (key_pem, csr) = dbward_pki::new_key_and_csr(&identity.username)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    let cert_pem = dbward_pki::issue_user_cert_with_claims(&gw.cas.user, &identity, &claims, &csr)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    Ok((cert_pem, key_pem))
}

/// TLS to a leaf gateway: its host CA, presenting `client` (cert, key) when given.
pub fn leaf_tls(
    leaf: &LeafRecord,
    client: Option<(&str, &str)>,
) -> Result<Arc<rustls::ClientConfig>, GatewayError> {
    dbward_pki::client_config(
        Some(&leaf.host_ca_pem),
        dbward_pki::ServerVerification::Full,
        client,
    )
    .map_err(|e| GatewayError::Internal(format!("TLS to leaf {}: {e}", leaf.cluster)))
}

/// The leaf's listener address for `protocol`.
pub fn leaf_listener(leaf: &LeafRecord, protocol: Protocol) -> Option<&str> {
    match protocol {
        Protocol::Postgres => leaf.postgres_addr.as_deref(),
        Protocol::Mysql => leaf.mysql_addr.as_deref(),
    }
}

/// `GET /v1/remote/dbs` on the leaf, as `user`: what the leaf lets the user's mapped roles see.
pub async fn leaf_dbs(
    gw: &Gateway,
    leaf_name: &str,
    user: &User,
    login_expires: OffsetDateTime,
) -> Result<crate::api::DbListResponse, GatewayError> {
    let leaf = leaf_record(gw, leaf_name).await?.ok_or_else(|| {
        GatewayError::NotFound(format!(
            "cluster \"{leaf_name}\" is not a leaf of this cluster"
        ))
    })?;
    let not_after =
        login_expires.min(OffsetDateTime::now_utc() + time::Duration::seconds(LISTING_CERT_SECS));
    let (cert, key) = mint_for_leaf(gw, user, CertUsage::Login, None, not_after)?;
    let tls = leaf_tls(&leaf, Some((&cert, &key)))?;
    http::call::<(), _>(&leaf.web_addr, tls, Method::GET, "/v1/remote/dbs", None)
        .await
        .map_err(|e| match e {
            http::CallError::Refused { status, message } if status < 500 => {
                GatewayError::Forbidden(format!("leaf cluster \"{leaf_name}\": {message}"))
            }
            other => GatewayError::Unavailable(format!("leaf cluster \"{leaf_name}\": {other}")),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_macs_bind_the_token_the_context_and_every_byte_of_the_body() {
        let token = "ab".repeat(32);
        let body = r#"{"root_cluster":"root","nonce":"n1"}"#;
        let tag = mac(&token, REQUEST_CONTEXT, body);
        assert!(mac_ok(&token, REQUEST_CONTEXT, body, &tag));
        // Another token, the other direction's context, a changed body or tag: refused.
        assert!(!mac_ok(&"cd".repeat(32), REQUEST_CONTEXT, body, &tag));
        assert!(!mac_ok(&token, ANSWER_CONTEXT, body, &tag));
        assert!(!mac_ok(
            &token,
            REQUEST_CONTEXT,
            &body.replace("n1", "n2"),
            &tag
        ));
        let mut flipped = tag.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("hex");
        assert!(!mac_ok(&token, REQUEST_CONTEXT, body, &flipped));
        assert!(!mac_ok(
            &token,
            REQUEST_CONTEXT,
            body,
            &tag[..tag.len() - 1]
        ));
        assert!(!mac_ok(&token, REQUEST_CONTEXT, body, "zz"));
        assert!(!mac_ok(&token, REQUEST_CONTEXT, body, ""));
    }

    #[test]
    fn token_ids_are_sha256_and_names_follow_the_reference_form() {
        assert_eq!(token_id("abc").len(), 64);
        assert_ne!(token_id("abc"), "abc");
        assert_eq!(unhex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(unhex("0"), None);
        assert_eq!(mapped_remote_name("alice", "root"), "remote-alice-root");
        assert_eq!(
            wrong_remote_name("remote-alice-root", "bob"),
            "please use your mapped remote username (\"remote-alice-root\") to connect instead of \"bob\""
        );
    }
}
