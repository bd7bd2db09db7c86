//! The `oidc` resource: a single sign-on connector to an OpenID Connect provider, in
//! Teleport's OIDC connector format (version v3).
//!
//! | field | dbward |
//! |---|---|
//! | `issuer_url` | the provider; discovery at `<issuer_url>/.well-known/openid-configuration`. `https://`, or `http://` on a loopback address only |
//! | `client_id`, `client_secret` | the gateway's client at the provider (`client_secret_basic`) |
//! | `redirect_url` | one URL or a list; the gateway's callback, `https://<public_addr>:<web port>/v1/sso/oidc/callback` (Teleport's `/v1/webapi/oidc/callback` path is served too); the first is sent to the provider |
//! | `scope` | scopes asked for besides `openid` |
//! | `claims_to_roles` | `{claim, value, roles}`: a claim (a string or a list of strings) with an element matching `value` (literal, glob with `*`, or `^regexp$` whose groups `$1`… expand in `roles`) gives `roles` |
//! | `username_claim` | the claim that names the dbward user; `email` when absent |
//! | `prompt`, `max_age` | sent to the provider; `max_age` is also checked against the ID token's `auth_time` |
//! | `allow_unverified_email` | without it, an ID token whose `email_verified` is `false` is refused |
//! | `display` | a label for people |
//! | `ca_cert` / `ca_cert_file` | (dbward) PEM CA certificates the provider's HTTPS certificate must chain to, instead of the system's roots |
//!
//! Other fields of Teleport's connector (`acr_values`, `provider`, Google Workspace settings,
//! `client_redirect_settings`, `mfa`, `pkce_mode`, …) are warned about and ignored: PKCE is
//! always used.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::labels::string_list;
use crate::{Metadata, ModelError};

/// An OpenID Connect connector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcConnector {
    /// `v3`.
    #[serde(default = "default_oidc_version")]
    pub version: String,
    /// The connector's name is what `dbward login --auth NAME` takes.
    #[serde(default)]
    pub metadata: Metadata,
    /// The provider and the mapping of its claims.
    #[serde(default)]
    pub spec: OidcSpec,
}

fn default_oidc_version() -> String {
    "v3".to_string()
}

/// The body of a connector.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OidcSpec {
    /// The provider's issuer identifier.
    #[serde(default)]
    pub issuer_url: String,
    /// The gateway's client id at the provider.
    #[serde(default)]
    pub client_id: String,
    /// The gateway's client secret at the provider; never shown by `dbward get`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub client_secret: String,
    /// The gateway's callback URL(s), as registered at the provider.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub redirect_url: Vec<String>,
    /// Scopes besides `openid`.
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub scope: Vec<String>,
    /// Claims that give roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claims_to_roles: Vec<ClaimMapping>,
    /// The claim naming the user; `email` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_claim: Option<String>,
    /// `prompt` sent to the provider (`login`, `select_account`, `consent`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The longest time since the person last authenticated at the provider.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::serde_opt_duration"
    )]
    pub max_age: Option<Duration>,
    /// Accept ID tokens whose `email_verified` claim is `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unverified_email: bool,
    /// A label for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
    /// PEM CA certificates for the provider's HTTPS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
    /// A file with PEM CA certificates for the provider's HTTPS certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert_file: Option<String>,
}

/// One rule of `claims_to_roles`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClaimMapping {
    /// The claim's name.
    #[serde(default)]
    pub claim: String,
    /// Literal, glob with `*`, or `^regexp$`.
    #[serde(default)]
    pub value: String,
    /// Roles given when the claim matches; `$1`… expand from a regexp's groups.
    #[serde(default, deserialize_with = "string_list")]
    pub roles: Vec<String>,
}

/// Teleport's callback path, accepted as well as dbward's own.
pub const TELEPORT_CALLBACK_PATH: &str = "/v1/webapi/oidc/callback";
/// The gateway's callback path.
pub const CALLBACK_PATH: &str = "/v1/sso/oidc/callback";

impl OidcConnector {
    /// The resource kind as written in files.
    pub const KIND: &'static str = "oidc";

    /// The connector's name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// The claim naming the user.
    pub fn username_claim(&self) -> &str {
        self.spec
            .username_claim
            .as_deref()
            .filter(|c| !c.is_empty())
            .unwrap_or("email")
    }

    /// The same connector without its secret, as `dbward get` shows it.
    pub fn without_secret(&self) -> OidcConnector {
        let mut shown = self.clone();
        shown.spec.client_secret.clear();
        shown
    }

    /// Checks the fields the login flow relies on.
    pub fn validate(&self) -> Result<(), ModelError> {
        let subject = format!("oidc \"{}\"", self.metadata.name);
        self.metadata.validate(&subject)?;
        let invalid = |message: String| Err(ModelError::invalid(subject.clone(), message));
        if self.version != "v3" && self.version != "v2" {
            return invalid(format!(
                "unsupported version \"{}\", expected v3",
                self.version
            ));
        }
        let spec = &self.spec;
        if let Err(message) = check_issuer(&spec.issuer_url) {
            return invalid(format!("spec.issuer_url: {message}"));
        }
        if spec.client_id.trim().is_empty() {
            return invalid("spec.client_id is required".into());
        }
        if spec.client_secret.is_empty() {
            return invalid("spec.client_secret is required".into());
        }
        if spec.redirect_url.is_empty() {
            return invalid(format!(
                "spec.redirect_url is required: the gateway's https://<public_addr>:<web port>{CALLBACK_PATH}"
            ));
        }
        for url in &spec.redirect_url {
            if !url.starts_with("https://") {
                return invalid(format!(
                    "spec.redirect_url \"{url}\" must be an https:// URL of the gateway"
                ));
            }
        }
        if spec.claims_to_roles.is_empty() {
            return invalid(
                "spec.claims_to_roles is required: without it nobody gets a role".into(),
            );
        }
        for (i, mapping) in spec.claims_to_roles.iter().enumerate() {
            if mapping.claim.trim().is_empty() {
                return invalid(format!("spec.claims_to_roles[{i}].claim is required"));
            }
            if mapping.roles.is_empty() || mapping.roles.iter().any(|r| r.trim().is_empty()) {
                return invalid(format!(
                    "spec.claims_to_roles[{i}].roles must name at least one role, none empty"
                ));
            }
        }
        if let Some(prompt) = &spec.prompt {
            let known = ["", "none", "login", "consent", "select_account"];
            if prompt.split(' ').any(|p| !known.contains(&p.trim())) {
                return invalid(format!(
                    "spec.prompt \"{prompt}\" is not one of none, login, consent, select_account"
                ));
            }
        }
        if spec.ca_cert.is_some() && spec.ca_cert_file.is_some() {
            return invalid("spec.ca_cert and spec.ca_cert_file exclude each other".into());
        }
        Ok(())
    }
}

/// An issuer is an `https://` URL, or `http://` on a loopback address (a provider on the same
/// machine); no query or fragment.
fn check_issuer(issuer: &str) -> Result<(), String> {
    if issuer.is_empty() {
        return Err("required".into());
    }
    if issuer.contains(['?', '#']) || issuer.chars().any(char::is_whitespace) {
        return Err(format!(
            "\"{issuer}\" must not have a query, a fragment or spaces"
        ));
    }
    if let Some(rest) = issuer.strip_prefix("https://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!("\"{issuer}\" has no host"));
        }
        return Ok(());
    }
    if let Some(rest) = issuer.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or_default();
        if is_loopback_authority(authority) {
            return Ok(());
        }
        return Err(format!(
            "\"{issuer}\" uses plain http, which is accepted only on a loopback address"
        ));
    }
    Err(format!("\"{issuer}\" must be an https:// URL"))
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port; nothing else (no user
/// info: `127.0.0.1:80@evil.example` is the host `evil.example`).
pub fn is_loopback_authority(authority: &str) -> bool {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((host, "")) => (host, None),
            Some((host, port)) => match port.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return false,
            },
            None => return false,
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return false;
    }
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(spec: &str) -> OidcConnector {
        serde_yaml_ng::from_str(&format!("metadata: {{name: okta}}\nspec:\n{spec}")).unwrap()
    }

    const GOOD: &str = "  issuer_url: https://idp.example.com\n  client_id: dbward\n  client_secret: s\n  redirect_url: https://gw.example.com:3080/v1/sso/oidc/callback\n  claims_to_roles: [{claim: groups, value: admins, roles: [access]}]\n";

    #[test]
    fn a_teleport_connector_loads_and_validates() {
        let c = connector(&format!("{GOOD}  max_age: 24h\n  scope: [email, groups]\n  username_claim: preferred_username\n"));
        c.validate().unwrap();
        assert_eq!(c.spec.redirect_url.len(), 1);
        assert_eq!(c.spec.max_age, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(c.username_claim(), "preferred_username");
        assert_eq!(connector(GOOD).username_claim(), "email");
    }

    #[test]
    fn plain_http_issuers_are_accepted_on_loopback_only() {
        for (issuer, ok) in [
            ("http://127.0.0.1:4444", true),
            ("http://localhost:4444/realms/x", true),
            ("http://[::1]:4444", true),
            ("http://idp.example.com", false),
            ("http://127.0.0.1.evil.com", false),
            ("http://127.0.0.1:80@evil.com", false),
            ("http://localhost@evil.com", false),
            ("http://[::1]:80@evil.com", false),
            ("ftp://idp.example.com", false),
            ("https://", false),
            ("https://idp.example.com?x=1", false),
        ] {
            let c = connector(&GOOD.replace("https://idp.example.com", issuer));
            assert_eq!(c.validate().is_ok(), ok, "{issuer}");
        }
    }

    #[test]
    fn missing_secret_roles_or_callback_are_refused() {
        for broken in [
            GOOD.replace("  client_secret: s\n", ""),
            GOOD.replace(
                "  claims_to_roles: [{claim: groups, value: admins, roles: [access]}]\n",
                "",
            ),
            GOOD.replace("roles: [access]", "roles: []"),
            GOOD.replace("https://gw.example.com", "http://gw.example.com"),
            format!("{GOOD}  prompt: sometimes\n"),
        ] {
            assert!(connector(&broken).validate().is_err(), "{broken}");
        }
    }

    #[test]
    fn the_secret_is_not_shown() {
        let shown = connector(GOOD).without_secret();
        let yaml = serde_yaml_ng::to_string(&shown).unwrap();
        assert!(!yaml.contains("client_secret"), "{yaml}");
    }
}
