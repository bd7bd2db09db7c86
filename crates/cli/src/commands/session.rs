//! `dbward login`, `dbward logout`, `dbward status`: the user's login certificate in
//! `$DBWARD_HOME`. The key is generated here and only its CSR is sent.

use anyhow::{bail, Context, Result};
use dbward_server::api::{LoginRequest, LoginResponse, MfaDeviceRequest, MfaDeviceResponse};

use crate::args::LoginArgs;
use crate::client::{ApiClient, ClientCert, ClientError, Trust};
use crate::commands::{display_time, remaining};
use crate::home::{ClientHome, Profile};
use crate::prompt;

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
    let password = if args.password_stdin {
        prompt::password_from_stdin()?
    } else {
        prompt::prompt_password(&format!("Password for {}: ", args.user))?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    let (key_pem, csr_pem) = dbward_pki::new_key_and_csr(&args.user)?;
    let client = ApiClient::new(&args.proxy, trust, None)?;
    let mut request = LoginRequest {
        user: args.user.clone(),
        password,
        csr_pem,
        ttl_secs: None,
        otp: args.otp.clone(),
    };
    let mut answer = client.post("/v1/login", &request).await;
    // A user with an MFA device: the gateway says so only once the password is right.
    if request.otp.is_none() && needs_code(&answer) && prompt::can_prompt_code() {
        request.otp = Some(prompt::prompt_code(&format!(
            "One-time code for {}: ",
            args.user
        ))?);
        answer = client.post("/v1/login", &request).await;
    }
    let response: LoginResponse = code_hint(answer).context("login failed")?;

    // Certificates of an earlier login (possibly another user) must not outlive it.
    home.clear()?;
    home.ensure_root()?;
    dbward_pki::write_private_file(&home.key(), key_pem.as_bytes())
        .with_context(|| format!("writing {}", home.key().display()))?;
    std::fs::write(home.cert(), &response.cert_pem)
        .with_context(|| format!("writing {}", home.cert().display()))?;
    std::fs::write(home.host_ca(), &response.host_ca_pem)
        .with_context(|| format!("writing {}", home.host_ca().display()))?;
    let profile = Profile {
        proxy: args.proxy.clone(),
        user: args.user.clone(),
        cluster: response.cluster.clone(),
        expires: response.expires.clone(),
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
pub async fn mfa_add(otp: Option<String>) -> Result<()> {
    let home = ClientHome::from_env()?;
    let (profile, client) = user_client(&home)?;
    let mut request = MfaDeviceRequest { otp };
    let mut answer = client.post("/v1/mfa/devices", &request).await;
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
