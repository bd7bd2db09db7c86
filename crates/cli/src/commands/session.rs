//! `dbward login`, `dbward logout`, `dbward status`: the user's login certificate in
//! `$DBWARD_HOME`. The key is generated here and only its CSR is sent.

use anyhow::{bail, Context, Result};
use dbward_server::api::{
    LoginRequest, LoginResponse, MfaDeviceRequest, MfaDeviceResponse, SsoLoginRequest,
    SsoLoginResponse,
};

use crate::args::LoginArgs;
use crate::client::{ApiClient, ClientCert, ClientError, Trust};
use crate::commands::{display_time, remaining};
use crate::home::{ClientHome, Profile};
use crate::{prompt, sso};

/// A client presenting the login certificate to the gateway the profile names.
pub fn user_client(home: &ClientHome) -> Result<(Profile, ApiClient)> {
    let profile = home.require_profile()?;
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let client = ApiClient::new(
        &profile.proxy,
        Trust::Ca(read(home.host_ca())?),
        Some(ClientCert {
            cert_pem: read(home.cert())?,
            key_pem: read(home.key())?,
        }),
    )?;
    Ok((profile, client))
}

pub async fn login(args: LoginArgs) -> Result<()> {
    let home = ClientHome::from_env()?;
    let trust = if let Some(ca) = &args.ca {
        Trust::Ca(std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?)
    } else if args.insecure {
        Trust::Insecure
    } else {
        // A CA saved by an earlier login to the same gateway is trusted again.
        match (
            home.load_profile()?,
            std::fs::read_to_string(home.host_ca()),
        ) {
            (Some(p), Ok(ca)) if p.proxy == args.proxy => Trust::Ca(ca),
            _ => bail!(
                "cannot verify the gateway at {}: pass --ca FILE (the output of \
                 `dbward auth export --type host`) or --insecure",
                args.proxy
            ),
        }
    };
    if let Some(connector) = &args.auth {
        return sso_login(&home, &args, connector, trust).await;
    }
    let user = args
        .user
        .clone()
        .context("--user NAME (or --auth CONNECTOR) is required")?;
    let password = if args.password_stdin {
        prompt::password_from_stdin()?
    } else {
        prompt::prompt_password(&format!("Password for {user}: "))?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let (key_pem, csr_pem) = dbward_pki::new_key_and_csr(&user)?;
    let client = ApiClient::new(&args.proxy, trust, None)?;
    let mut request = LoginRequest {
        user: user.clone(),
        password,
        csr_pem,
        ttl_secs: None,
        otp: args.otp.clone(),
    };
    let mut answer = client.post("/v1/login", &request).await;
    // A user with an MFA device: the gateway says so only once the password is right.
    if request.otp.is_none() && needs_code(&answer) && prompt::can_prompt_code() {
        request.otp = Some(prompt::prompt_code(&format!("One-time code for {user}: "))?);
        answer = client.post("/v1/login", &request).await;
    }
    let response: LoginResponse = code_hint(answer).context("login failed")?;
    save_login(
        &home,
        &args.proxy,
        &user,
        &key_pem,
        &response.cert_pem,
        &response.host_ca_pem,
        &response.cluster,
        &response.expires,
    )
}

/// Writes a new login's key, certificate and host CA, replacing any earlier login.
#[allow(clippy::too_many_arguments)]
fn save_login(
    home: &ClientHome,
    proxy: &str,
    user: &str,
    key_pem: &str,
    cert_pem: &str,
    host_ca_pem: &str,
    cluster: &str,
    expires: &str,
) -> Result<()> {
    // Certificates of an earlier login (possibly another user) must not outlive it.
    home.clear()?;
    home.ensure_root()?;
    dbward_pki::write_private_file(&home.key(), key_pem.as_bytes())
        .with_context(|| format!("writing {}", home.key().display()))?;
    std::fs::write(home.cert(), cert_pem)
        .with_context(|| format!("writing {}", home.cert().display()))?;
    std::fs::write(home.host_ca(), host_ca_pem)
        .with_context(|| format!("writing {}", home.host_ca().display()))?;
    let profile = Profile {
        proxy: proxy.to_string(),
        user: user.to_string(),
        cluster: cluster.to_string(),
        expires: expires.to_string(),
    };
    home.save_profile(&profile)?;
    println!(
        "Logged in as {} to cluster {} ({}), valid until {}.",
        profile.user,
        profile.cluster,
        profile.proxy,
        display_time(&profile.expires)
    );
    Ok(())
}

/// `dbward login --auth CONNECTOR`: the browser logs in at the identity provider, the gateway
/// sends it back to a loopback listener of this command with the certificate.
async fn sso_login(
    home: &ClientHome,
    args: &LoginArgs,
    connector: &str,
    trust: Trust,
) -> Result<()> {
    let trusted_ca = match &trust {
        Trust::Ca(pem) => Some(pem.clone()),
        Trust::Insecure => None,
    };
    let (key_pem, csr_pem) = dbward_pki::new_key_and_csr("dbward-sso")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("listening on a loopback port for the login's callback")?;
    let port = listener.local_addr()?.port();
    let client_state = dbward_server::sso::state::random_token(24).map_err(anyhow::Error::msg)?;
    let client = ApiClient::new(&args.proxy, trust, None)?;
    let started: SsoLoginResponse = client
        .post(
            "/v1/sso/oidc/login",
            &SsoLoginRequest {
                connector: connector.to_string(),
                csr_pem,
                client_redirect_url: format!("http://127.0.0.1:{port}{CALLBACK_PATH}"),
                client_state: client_state.clone(),
            },
        )
        .await
        .context("single sign-on login failed")?;
    println!("To log in through {connector}, open this URL in a browser:");
    println!("{}", started.auth_url);
    std::io::Write::flush(&mut std::io::stdout())?;
    match args.browser.as_deref() {
        Some("none") => {}
        browser => open_browser(browser, &started.auth_url),
    }
    let result = sso::wait_for_callback(listener, &client_state, LOGIN_WAIT).await?;
    if !dbward_pki::cert_matches_key(&result.cert_pem, &key_pem) {
        bail!("the certificate the browser brought back is not for this login's key; nothing was saved");
    }
    let identity = dbward_pki::parse_cert_pem(&result.cert_pem)
        .ok()
        .and_then(|certs| certs.into_iter().next())
        .and_then(|der| dbward_pki::read_identity(der.as_ref()).ok())
        .context("the certificate the browser brought back carries no dbward identity")?;
    // The gateway was verified with the CA this command trusts: keep that one, not whatever
    // came back through the browser.
    let host_ca_pem = trusted_ca.unwrap_or(result.host_ca_pem);
    save_login(
        home,
        &args.proxy,
        &identity.username,
        &key_pem,
        &result.cert_pem,
        &host_ca_pem,
        &identity.cluster,
        &result.expires,
    )
}

/// The path of the loopback callback.
const CALLBACK_PATH: &str = "/callback";
/// How long `dbward login --auth` waits for the browser to come back.
const LOGIN_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Opens `url` with `browser`, or the system's opener; a failure only leaves the printed URL.
fn open_browser(browser: Option<&str>, url: &str) {
    let program = browser.unwrap_or(if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    });
    let spawned = std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if spawned.is_err() {
        eprintln!("(could not start {program}; open the URL above yourself)");
    }
}

/// True when the gateway refused because a one-time code was missing.
pub fn needs_code<T>(answer: &std::result::Result<T, ClientError>) -> bool {
    matches!(answer, Err(ClientError::Api(msg)) if msg.starts_with(dbward_server::mfa::CODE_REQUIRED))
}

/// A refusal for a missing code, without a terminal to ask on, says how to give one.
pub fn code_hint<T>(answer: std::result::Result<T, ClientError>) -> Result<T> {
    match answer {
        Err(ClientError::Api(msg)) if msg.starts_with(dbward_server::mfa::CODE_REQUIRED) => {
            bail!("{msg}: pass the current code of your authenticator app with --otp CODE")
        }
        other => Ok(other?),
    }
}

/// `dbward mfa add`: registers a TOTP device for the logged-in user and shows it once.
pub async fn mfa_add(otp: Option<String>, password_stdin: bool) -> Result<()> {
    let home = ClientHome::from_env()?;
    let (profile, client) = user_client(&home)?;
    let password = if password_stdin {
        Some(prompt::password_from_stdin()?)
    } else {
        None
    };
    let mut request = MfaDeviceRequest { otp, password };
    let mut answer = client.post("/v1/mfa/devices", &request).await;
    // A first device of a password user: the gateway asks for the password again.
    let needs_password = matches!(&answer, Err(ClientError::Api(msg)) if msg.starts_with(dbward_server::web::PASSWORD_REQUIRED));
    if needs_password && request.password.is_none() {
        if !prompt::can_prompt_code() {
            bail!(
                "{}: pass it with --password-stdin",
                dbward_server::web::PASSWORD_REQUIRED
            );
        }
        request.password = Some(prompt::prompt_password(&format!(
            "Password for {}: ",
            profile.user
        ))?);
        answer = client.post("/v1/mfa/devices", &request).await;
    }
    if request.otp.is_none() && needs_code(&answer) && prompt::can_prompt_code() {
        request.otp = Some(prompt::prompt_code(
            "One-time code of your current device: ",
        )?);
        answer = client.post("/v1/mfa/devices", &request).await;
    }
    let response: MfaDeviceResponse = answer.context("registering an MFA device failed")?;
    println!(
        "MFA device registered for {}. Add it to an authenticator app (shown only once):",
        profile.user
    );
    crate::qr::print_otpauth(&response.otpauth_uri);
    Ok(())
}

pub fn logout() -> Result<()> {
    let home = ClientHome::from_env()?;
    let profile = home.load_profile()?;
    home.clear()?;
    match profile {
        Some(p) => println!("Logged out {} from {}.", p.user, p.proxy),
        None => println!("Not logged in."),
    }
    Ok(())
}

pub fn status() -> Result<()> {
    let home = ClientHome::from_env()?;
    let profile = home.require_profile()?;
    // The certificate is the truth about the login; the profile only caches it.
    let cert_pem = std::fs::read_to_string(home.cert())
        .with_context(|| format!("reading {}", home.cert().display()))?;
    let identity = dbward_pki::parse_cert_pem(&cert_pem)
        .ok()
        .and_then(|certs| certs.first().cloned())
        .and_then(|der| dbward_pki::read_identity(der.as_ref()).ok());
    let (user, cluster, expires) = match &identity {
        Some(id) => (
            id.username.clone(),
            id.cluster.clone(),
            id.expires
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| profile.expires.clone()),
        ),
        None => (
            profile.user.clone(),
            profile.cluster.clone(),
            profile.expires.clone(),
        ),
    };
    println!("Proxy:       {}", profile.proxy);
    println!("Cluster:     {cluster}");
    println!("User:        {user}");
    println!(
        "Valid until: {} ({})",
        display_time(&expires),
        remaining(&expires)
    );
    println!("Certificate: {}", home.cert().display());
    let routes = home.db_routes()?;
    if routes.is_empty() {
        println!("Databases:   none (run `dbward db login DB`)");
    } else {
        for (i, route) in routes.iter().enumerate() {
            let label = if i == 0 { "Databases:" } else { "" };
            let mut line = format!("{} as {}", route.db, route.db_user);
            if let Some(name) = &route.db_name {
                line.push_str(&format!(" in {name}"));
            }
            if !route.db_roles.is_empty() {
                line.push_str(&format!(" with roles {}", route.db_roles.join(",")));
            }
            println!("{label:<13}{line} ({})", remaining(&route.expires));
        }
    }
    Ok(())
}
