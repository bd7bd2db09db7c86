//! The second factor through the gateway: TOTP codes at login, and the role option
//! `require_session_mfa: true` at `db login`, with real PostgreSQL and real psql. Codes are
//! computed by an independent TOTP implementation (`totp-rs`) from the `otpauth://` URI the
//! gateway hands out, as an authenticator app would.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const PASSWORD: &str = "correct horse battery staple";

struct World {
    db: String,
    reader: String,
    labels: String,
}

fn world() -> World {
    let h = harness();
    let n = unique("mf");
    let w = World {
        db: format!("db-{n}"),
        reader: format!("reader_{n}"),
        labels: format!("{{test: \"{n}\"}}"),
    };
    let admin = format!("adm_{n}");
    h.create_admin(&admin, &[&w.reader]);
    h.apply(&h.db_yaml(&w.db, &w.labels, Some(&admin)));
    w
}

impl World {
    /// Writes (or rewrites) the provisioning role `name` selecting the database, with
    /// `options` added to its options.
    fn role(&self, name: &str, options: &str) {
        harness().apply(&format!(
            "kind: role\nversion: v7\nmetadata: {{name: {name}}}\nspec:\n  options: {{create_db_user_mode: keep{options}}}\n  allow:\n    db_labels: {labels}\n    db_names: [\"*\"]\n    db_roles: [\"{reader}\"]\n",
            labels = self.labels,
            reader = self.reader,
        ));
    }

    /// A user holding `role`, with a password.
    fn user(&self, role: &str) -> String {
        let h = harness();
        let user = unique("mu");
        h.apply(&format!(
            "kind: user\nversion: v2\nmetadata: {{name: {user}}}\nspec: {{roles: [{role}]}}\n"
        ));
        let phc = dbward_server::passwords::hash_password(PASSWORD).unwrap();
        h.block_on(h.gw.store.set_password_hash(&user, &phc))
            .unwrap();
        user
    }
}

/// Registers a TOTP device for `user` and returns the authenticator built from its URI.
fn device(user: &str) -> totp_rs::TOTP {
    device_on(harness(), user)
}

fn device_on(h: &Harness, user: &str) -> totp_rs::TOTP {
    let uri = h
        .block_on(dbward_server::mfa::register(&h.gw.store, "test", user))
        .unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    totp_rs::TOTP::from_url(&uri).unwrap_or_else(|e| panic!("{uri}: {e:?}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The code of the current 30-second step.
fn code_now(totp: &totp_rs::TOTP) -> String {
    totp.generate(unix_now())
}

/// The code of the next step: accepted now (clock drift) and later than any code used so
/// far in this step.
fn code_next(totp: &totp_rs::TOTP) -> String {
    totp.generate(unix_now() + 30)
}

const HERE: &str = "127.0.0.1";

async fn https(
    h: &Harness,
    cert: Option<(&str, &str)>,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web: SocketAddr = h.gw.endpoints.read().await.web.parse().unwrap();
    let config = dbward_pki::client_config(
        Some(&h.gw.cas.host.cert_pem),
        dbward_pki::ServerVerification::Full,
        cert,
    )
    .unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(HERE.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let tcp = socket.connect(web).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A login certificate and its key, PEM.
struct Login {
    cert: String,
    key: String,
}

/// `POST /v1/login`; the status and body, and the certificate when it succeeded.
fn login(user: &str, password: &str, otp: Option<&str>) -> (u16, String, Option<Login>) {
    login_on(harness(), user, password, otp)
}

fn login_on(
    h: &Harness,
    user: &str,
    password: &str,
    otp: Option<&str>,
) -> (u16, String, Option<Login>) {
    let (key, csr) = dbward_pki::new_key_and_csr(user).unwrap();
    let mut body = serde_json::json!({"user": user, "password": password, "csr_pem": csr});
    if let Some(otp) = otp {
        body["otp"] = otp.into();
    }
    let (status, text) = h.block_on(https(
        h,
        None,
        "POST",
        "/v1/login",
        &serde_json::to_vec(&body).unwrap(),
    ));
    let cert = (status == 200).then(|| {
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        Login {
            cert: answer["cert_pem"].as_str().unwrap().to_string(),
            key,
        }
    });
    (status, text, cert)
}

/// `POST /v1/db-certs` with the login; on success the certificate written to files psql reads.
fn db_login(
    user: &str,
    login: &Login,
    db: &str,
    otp: Option<&str>,
) -> Result<(ClientFiles, dbward_pki::Identity), (u16, String)> {
    db_login_on(harness(), user, login, db, otp)
}

fn db_login_on(
    h: &Harness,
    user: &str,
    login: &Login,
    db: &str,
    otp: Option<&str>,
) -> Result<(ClientFiles, dbward_pki::Identity), (u16, String)> {
    let (key, csr) = dbward_pki::new_key_and_csr(user).unwrap();
    let mut body = serde_json::json!({"db": db, "csr_pem": csr});
    if let Some(otp) = otp {
        body["otp"] = otp.into();
    }
    let (status, text) = h.block_on(https(
        h,
        Some((&login.cert, &login.key)),
        "POST",
        "/v1/db-certs",
        &serde_json::to_vec(&body).unwrap(),
    ));
    if status != 200 {
        return Err((status, text));
    }
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cert = answer["cert_pem"].as_str().unwrap();
    let dir = h.dir.join("clients").join(unique("mfa"));
    std::fs::create_dir_all(&dir).unwrap();
    let files = ClientFiles {
        crt: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: h.host_ca.clone(),
    };
    std::fs::write(&files.crt, cert).unwrap();
    dbward_pki::write_private_file(&files.key, key.as_bytes()).unwrap();
    let der = dbward_pki::parse_cert_pem(cert).unwrap().remove(0);
    Ok((files, dbward_pki::read_identity(der.as_ref()).unwrap()))
}

fn expect_err<T>(r: Result<T, (u16, String)>, status: u16, text: &str) {
    match r {
        Ok(_) => panic!("expected {status} ({text}), got a certificate"),
        Err((got, body)) => {
            assert_eq!(got, status, "{body}");
            assert!(body.contains(text), "{body}");
        }
    }
}

#[test]
fn login_needs_a_valid_unused_code_once_the_password_is_right() {
    let w = world();
    let role = unique("plain");
    w.role(&role, "");
    let user = w.user(&role);
    let totp = device(&user);

    // A wrong password is refused as before, code or not: MFA is not revealed.
    for otp in [None, Some("000000")] {
        let (status, body, _) = login(&user, "wrong", otp);
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("invalid user name or password"), "{body}");
        assert!(!body.contains("one-time"), "{body}");
    }
    // The right password alone is not enough.
    let (status, body, cert) = login(&user, PASSWORD, None);
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("a one-time code is required"), "{body}");
    assert!(cert.is_none());
    // A wrong code is refused (one that is none of the three accepted steps' codes).
    let now = unix_now();
    let accepted: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| totp.generate(*t))
        .collect();
    let wrong = (0..1_000_000)
        .map(|n| format!("{n:06}"))
        .find(|c| !accepted.contains(c))
        .unwrap();
    let (status, body, _) = login(&user, PASSWORD, Some(&wrong));
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("invalid or already used one-time code"),
        "{body}"
    );
    // The right code logs in.
    let code = code_now(&totp);
    let (status, body, cert) = login(&user, PASSWORD, Some(&code));
    assert_eq!(status, 200, "{body}");
    assert!(cert.is_some());
    // The same code again, in the same step or the next, is refused.
    let (status, body, _) = login(&user, PASSWORD, Some(&code));
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("invalid or already used one-time code"),
        "{body}"
    );
    // A later step's code still works (the device is not locked by the replay).
    let (status, body, _) = login(&user, PASSWORD, Some(&code_next(&totp)));
    assert_eq!(status, 200, "{body}");

    // A user without a device logs in with the password alone, whatever code is sent.
    let other = w.user(&role);
    let (status, body, _) = login(&other, PASSWORD, Some("123456"));
    assert_eq!(status, 200, "{body}");

    // Deleting the user removes the device: the same name created again has none.
    let h = harness();
    assert!(h
        .block_on(dbward_server::mfa::has_device(&h.gw.store, &user))
        .unwrap());
    // Through the admin API, as `dbward users rm` does.
    let admin = admin_login();
    let (status, body) = h.block_on(https(
        h,
        Some((&admin.cert, &admin.key)),
        "DELETE",
        &format!("/v1/users/{user}"),
        b"",
    ));
    assert_eq!(status, 204, "{body}");
    assert!(!h
        .block_on(dbward_server::mfa::has_device(&h.gw.store, &user))
        .unwrap());
}

/// The admin identity `dbward start` writes into `data_dir`.
fn admin_login() -> Login {
    let h = harness();
    let files = dbward_server::AdminFiles::new(&h.gw.config.data_dir);
    Login {
        cert: std::fs::read_to_string(files.cert()).unwrap(),
        key: std::fs::read_to_string(files.key()).unwrap(),
    }
}

#[test]
fn session_mfa_needs_a_fresh_code_and_gives_a_one_minute_certificate() {
    let h = harness();
    let w = world();
    let role = unique("mfa");
    w.role(&role, "");
    let user = w.user(&role);
    let totp = device(&user);
    let login_code = code_now(&totp);
    let (status, body, login_cert) = login(&user, PASSWORD, Some(&login_code));
    assert_eq!(status, 200, "{body}");
    let login_cert = login_cert.unwrap();

    // Before the role asks for MFA: a plain database certificate, for the login's lifetime.
    let (before, plain) = db_login(&user, &login_cert, &w.db, None).unwrap();
    assert_eq!(plain.mfa_session_until, None);
    let r = h.psql(&before, &user, "postgres", "select current_user");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, user);

    w.role(&role, ", require_session_mfa: true");
    // The certificate issued before is refused at connect now.
    let r = h.psql(&before, &user, "postgres", "select 1");
    assert!(!r.ok, "connected with a certificate issued without a code");
    assert!(r.stderr.contains("require_session_mfa"), "{}", r.stderr);

    // db login without a code, or with the code already used at login, is refused.
    expect_err(
        db_login(&user, &login_cert, &w.db, None),
        401,
        "a one-time code is required",
    );
    expect_err(
        db_login(&user, &login_cert, &w.db, Some(&login_code)),
        401,
        "invalid or already used one-time code",
    );
    // A fresh code gives a certificate valid for a minute at most, marked MFA-verified,
    // whose sessions may last as long as the login.
    let issued = time::OffsetDateTime::now_utc();
    let (files, identity) = db_login(&user, &login_cert, &w.db, Some(&code_next(&totp))).unwrap();
    assert!(
        identity.expires <= issued + time::Duration::seconds(61),
        "{} is more than a minute after {issued}",
        identity.expires
    );
    let login_identity = {
        let der = dbward_pki::parse_cert_pem(&login_cert.cert)
            .unwrap()
            .remove(0);
        dbward_pki::read_identity(der.as_ref()).unwrap()
    };
    assert_eq!(
        identity.mfa_session_until.map(|t| t.unix_timestamp()),
        Some(login_identity.expires.unix_timestamp())
    );

    // A session opened with it works, and goes on after the certificate expired.
    let mut cmd = std::process::Command::new("psql");
    cmd.arg(conninfo(h.pg_addr, &files, &user, "postgres"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-f", "-"]);
    let mut session = OpenSession::start(cmd).expect("session with the MFA certificate");
    assert_eq!(
        session.query("select current_user").as_deref(),
        Some(user.as_str())
    );
    let expired_at = identity.expires;
    while time::OffsetDateTime::now_utc() < expired_at + time::Duration::seconds(3) {
        std::thread::sleep(Duration::from_millis(500));
    }
    // Past the revocation watcher's period (2 s) too.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        session.query("select 41 + 1").as_deref(),
        Some("42"),
        "the session ended when the one-minute certificate expired"
    );
    assert_eq!(h.can_login(&user), Some(true), "the db user was locked");
    // A new connection with the expired certificate is refused at the handshake.
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(!r.ok, "connected with an expired certificate");
    assert!(!r.stderr.is_empty());
    session.close();
}

#[test]
fn session_mfa_without_a_device_tells_the_user_to_register_one() {
    let w = world();
    let role = unique("mfa");
    w.role(&role, ", require_session_mfa: true");
    let user = w.user(&role);
    let (status, body, login_cert) = login(&user, PASSWORD, None);
    assert_eq!(status, 200, "{body}");
    expect_err(
        db_login(&user, &login_cert.unwrap(), &w.db, Some("123456")),
        403,
        "dbward mfa add",
    );
    // Nothing was created in the database.
    assert_eq!(harness().can_login(&user), None);
}

#[test]
fn session_mfa_applies_only_to_the_databases_the_role_selects() {
    let h = harness();
    let w = world();
    let other = world();
    let role = unique("mfa");
    // The role asking for MFA selects `w.db`; the plain one `other.db`.
    w.role(&role, ", require_session_mfa: true");
    let plain = unique("plain");
    other.role(&plain, "");
    let user = w.user(&format!("{role}, {plain}"));
    let totp = device(&user);
    let (status, body, login_cert) = login(&user, PASSWORD, Some(&code_now(&totp)));
    assert_eq!(status, 200, "{body}");
    let login_cert = login_cert.unwrap();
    let (files, identity) = db_login(&user, &login_cert, &other.db, None).unwrap();
    assert_eq!(identity.mfa_session_until, None);
    let r = h.psql(&files, &user, "postgres", "select 1");
    assert!(r.ok, "{}", r.stderr);
    expect_err(
        db_login(&user, &login_cert, &w.db, None),
        401,
        "a one-time code is required",
    );
}

#[test]
fn session_mfa_is_enforced_on_the_mysql_listener_too() {
    let h = maria_harness();
    let n = unique("mm");
    let (db, admin, reader, role) = (
        format!("my-{n}"),
        format!("adm_{n}"),
        format!("reader_{n}"),
        format!("mfa-{n}"),
    );
    h.maria_sql(&format!(
        "CREATE USER '{a}'@'%' REQUIRE SUBJECT '/CN={a}';
         GRANT PROCESS, CREATE USER, CONNECTION ADMIN ON *.* TO '{a}'@'%';
         GRANT SELECT ON mysql.roles_mapping TO '{a}'@'%';
         GRANT UPDATE ON mysql.* TO '{a}'@'%';
         GRANT SELECT ON *.* TO '{a}'@'%';
         CREATE ROLE IF NOT EXISTS `dbward-auto-user`;
         GRANT `dbward-auto-user` TO '{a}'@'%' WITH ADMIN OPTION;
         CREATE DATABASE IF NOT EXISTS dbward;
         GRANT ALL ON dbward.* TO '{a}'@'%' WITH GRANT OPTION;
         CREATE ROLE `{r}` WITH ADMIN '{a}'@'%';",
        a = admin,
        r = reader,
    ));
    let labels = format!("{{test: \"{n}\"}}");
    h.apply(&h.maria_db_yaml(&db, &labels, Some(&admin)));
    h.apply(&format!(
        "kind: role\nversion: v7\nmetadata: {{name: {role}}}\nspec:\n  options: {{create_db_user_mode: keep, require_session_mfa: true}}\n  allow:\n    db_labels: {labels}\n    db_roles: [\"{reader}\"]\n"
    ));
    let user = unique("mu");
    h.apply(&format!(
        "kind: user\nversion: v2\nmetadata: {{name: {user}}}\nspec: {{roles: [{role}]}}\n"
    ));
    let phc = dbward_server::passwords::hash_password(PASSWORD).unwrap();
    h.block_on(h.gw.store.set_password_hash(&user, &phc))
        .unwrap();
    let totp = device_on(h, &user);
    let (status, body, login_cert) = login_on(h, &user, PASSWORD, Some(&code_now(&totp)));
    assert_eq!(status, 200, "{body}");
    let login_cert = login_cert.unwrap();

    // A database certificate without the MFA mark is refused by the MySQL listener.
    let plain = h.db_cert(&user, route(&db, &user, "", &[]));
    let r = h.mariadb(&plain, &user, "select current_user()");
    assert!(!r.ok, "connected with a certificate issued without a code");
    assert!(r.stderr.contains("require_session_mfa"), "{}", r.stderr);
    // The one `db login` issues with a fresh code connects.
    let (files, identity) =
        db_login_on(h, &user, &login_cert, &db, Some(&code_next(&totp))).unwrap();
    assert!(identity.mfa_session_until.is_some());
    let r = h.mariadb(&files, &user, "select current_user()");
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, format!("{user}@%"));
}
