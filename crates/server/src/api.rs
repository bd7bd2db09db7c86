//! JSON shapes of the web API, shared by the server and the `dbward` client.
//!
//! Everything here is plain data: the handlers live in `web`, the client in the CLI.

use serde::{Deserialize, Serialize};

/// Password login: the client sends a CSR for a key it generated and keeps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginRequest {
    pub user: String,
    pub password: String,
    pub csr_pem: String,
    /// Requested lifetime in seconds; capped by the configured `cert_ttl` and the roles'
    /// `max_session_ttl`.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// The current code of the user's TOTP device (`--otp`); required when they have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub cert_pem: String,
    pub host_ca_pem: String,
    pub cluster: String,
    /// RFC 3339.
    pub expires: String,
}

/// `POST /v1/sso/oidc/login`: the start of a single sign-on login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SsoLoginRequest {
    /// The `oidc` connector's name.
    pub connector: String,
    /// A certificate request for the key the CLI generated.
    pub csr_pem: String,
    /// The CLI's loopback callback: `http://127.0.0.1:PORT/PATH` (or `localhost`, `[::1]`).
    pub client_redirect_url: String,
    /// Returned unchanged to the callback, so the CLI knows the answer is for its request.
    pub client_state: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SsoLoginResponse {
    /// Where to send the browser.
    pub auth_url: String,
}

/// What the gateway sends to the CLI's loopback callback when a single sign-on login
/// succeeded (the `response` query parameter, base64url of this as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SsoLoginResult {
    /// The dbward user name the connector mapped the person to.
    pub user: String,
    pub cert_pem: String,
    pub host_ca_pem: String,
    pub cluster: String,
    /// RFC 3339.
    pub expires: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingResponse {
    pub cluster: String,
    pub version: String,
    pub postgres_addr: Option<String>,
    pub mysql_addr: Option<String>,
    pub public_addr: String,
}

/// `dbward create -f`: the raw text is parsed on the server so that errors name lines.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateResourcesRequest {
    pub file_name: String,
    pub text: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateResourcesResponse {
    /// `kind/name` of every resource written.
    pub created: Vec<String>,
    pub warnings: Vec<String>,
}

/// Resources as JSON values (`kind`, `version`, `metadata`, `spec`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceList {
    pub resources: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddUserRequest {
    pub name: String,
    pub roles: Vec<String>,
    #[serde(default)]
    pub traits: std::collections::BTreeMap<String, Vec<String>>,
    /// When absent the server generates one and returns it once.
    #[serde(default)]
    pub password: Option<String>,
    /// Register a TOTP device too (`--mfa`); its URI is returned once.
    #[serde(default)]
    pub mfa: bool,
}

/// `POST /v1/users/{name}/password` (`dbward users reset`); answered with an
/// [`AddUserResponse`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResetPasswordRequest {
    /// When absent the server generates one and returns it once.
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddUserResponse {
    pub name: String,
    pub generated_password: Option<String>,
    /// The `otpauth://` URI of the device registered with `--mfa`, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otpauth_uri: Option<String>,
}

/// `POST /v1/mfa/devices` (`dbward mfa add`): registers a TOTP device for the caller.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MfaDeviceRequest {
    /// A current code of the device being replaced; required when the caller has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<String>,
    /// The caller's password; required for a first device of a user who has one, so that a
    /// login certificate alone cannot register it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfaDeviceResponse {
    /// The new device's `otpauth://` URI, shown once.
    pub otpauth_uri: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbListEntry {
    pub name: String,
    pub description: String,
    pub protocol: String,
    pub uri: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub allowed_users: String,
    /// Roles provisioning would grant (empty when provisioning is off).
    pub db_roles: Vec<String>,
    pub auto_provisioning: bool,
    /// Table permission rules provisioning would apply (PostgreSQL `db_permissions`), one
    /// line each: `SELECT on object_kind=table, schema=public`, `deny * on name=secrets`.
    #[serde(default)]
    pub db_permissions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbListResponse {
    pub databases: Vec<DbListEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbCertRequest {
    pub db: String,
    #[serde(default)]
    pub db_user: Option<String>,
    #[serde(default)]
    pub db_name: Option<String>,
    #[serde(default)]
    pub db_roles: Vec<String>,
    pub csr_pem: String,
    /// A fresh TOTP code (`--otp`), for databases whose roles set `require_session_mfa`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<String>,
    /// A database of this trusted leaf cluster, reached through this gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbCertResponse {
    pub cert_pem: String,
    pub host_ca_pem: String,
    pub protocol: String,
    /// The db user the route resolves to (the dbward user in provisioning mode).
    pub db_user: String,
    pub db_name: Option<String>,
    pub gateway_host: String,
    pub gateway_port: u16,
    pub expires: String,
    /// The table permission rules the session will get, as in [`DbListEntry`].
    #[serde(default)]
    pub db_permissions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct AuditSearchQuery {
    #[serde(default)]
    pub event_type: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// Seconds back from now.
    #[serde(default)]
    pub since_secs: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditSearchResponse {
    pub events: Vec<serde_json::Value>,
}

/// `GET /v1/dbs/{name}/check?db_names=a,b`: further PostgreSQL databases to check.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DbCheckQuery {
    /// Comma-separated database names.
    #[serde(default)]
    pub db_names: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbCheckResponse {
    pub findings: Vec<DbCheckFinding>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbCheckFinding {
    pub problem: String,
    pub fix: String,
}

/// Every API error has this body, with a status code chosen by the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// `GET /v1/dbs?cluster=LEAF`: the databases of a trusted leaf cluster.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct DbListQuery {
    #[serde(default)]
    pub cluster: Option<String>,
}

/// `POST /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddTokenRequest {
    /// `trusted_cluster`, the only type.
    #[serde(rename = "type")]
    pub token_type: String,
    pub ttl_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddTokenResponse {
    pub token: String,
    pub expires: String,
}
