//! Entry point for the API body fuzz target in `fuzz/` and for the corpus replay test: takes
//! arbitrary bytes as a request body, reads it the way each handler's `Json` extractor does
//! into each request type, runs the checks the handler makes before it touches the store,
//! and must never panic.

use std::sync::OnceLock;

use axum::extract::Query;
use axum::http::Uri;
use axum::Json;
use dbward_model::{Resource, User};
use dbward_pki::{CaKind, CertAuthority, CertUsage, DbRoute, Identity};
use time::OffsetDateTime;

use crate::api::{
    AddUserRequest, AuditSearchQuery, CreateResourcesRequest, DbCertRequest, LoginRequest,
};

/// One API request body (also read as the audit search's query string).
pub fn api_body(data: &[u8]) {
    if let Ok(Json(login)) = Json::<LoginRequest>::from_bytes(data) {
        issue(None, &login.csr_pem);
    }
    if let Ok(Json(request)) = Json::<DbCertRequest>::from_bytes(data) {
        let route = DbRoute {
            service: request.db,
            db_user: request.db_user,
            db_name: request.db_name,
            db_roles: request.db_roles,
        };
        issue(Some(route), &request.csr_pem);
    }
    if let Ok(Json(create)) = Json::<CreateResourcesRequest>::from_bytes(data) {
        if let Ok(parsed) = dbward_model::parse_resources(&create.text, &create.file_name) {
            for resource in &parsed.resources {
                let _ = resource.validate();
            }
        }
    }
    if let Ok(Json(add)) = Json::<AddUserRequest>::from_bytes(data) {
        let user = User::new(&add.name, &add.roles).with_traits(add.traits);
        let _ = Resource::User(user).validate();
    }
    let _ = Json::<AuditSearchQuery>::from_bytes(data);
    if let Ok(query) = std::str::from_utf8(data) {
        if let Ok(uri) = format!("/v1/audit?{query}").parse::<Uri>() {
            let _ = Query::<AuditSearchQuery>::try_from_uri(&uri);
        }
    }
}

/// Issues a user certificate for the request's CSR, as the login and `db login` handlers do
/// (the user name comes from the store there, never from the body).
fn issue(route: Option<DbRoute>, csr_pem: &str) {
    static CA: OnceLock<CertAuthority> = OnceLock::new();
    let ca = CA.get_or_init(|| CertAuthority::generate(CaKind::User, "fuzz").expect("a user CA"));
    let usage = if route.is_some() {
        CertUsage::Db
    } else {
        CertUsage::Login
    };
    let identity = Identity {
        username: "alice".into(),
        cluster: "fuzz".into(),
        usage,
        // 2026-06-01T00:00:00Z, fixed so that an input behaves the same on every run.
        expires: OffsetDateTime::from_unix_timestamp(1_780_272_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        route,
        pinned_ip: None,
        mfa_session_until: None,
    };
    let _ = dbward_pki::issue_user_cert(ca, &identity, csr_pem);
}
