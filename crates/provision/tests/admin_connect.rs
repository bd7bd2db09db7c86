//! An admin connection that cannot be made fails the same way on every engine: an
//! `AdminConnect` error that names the admin and the server (`host:port`) for the log and
//! `dbward db check`, keeps the driver's error as its source, and is never shown to a client.

use std::time::Duration;

use dbward_pki::ServerVerification;
use dbward_provision::mysql::{MariaProvisioner, MariaProvisionerSettings};
use dbward_provision::postgres::{PgProvisioner, PgProvisionerSettings};
use dbward_provision::{
    AdminTarget, DbUserName, Engine, ErrorKind, ProvisionError, Provisioners, UserFacingError,
};

/// A port on this host where nothing listens: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn target(engine: Engine, port: u16) -> AdminTarget {
    AdminTarget {
        engine,
        host: "127.0.0.1".into(),
        port,
        server_name: "localhost".into(),
        client_config: dbward_pki::client_config(
            Some(&dbward_testkit::shared_cas().expect("CAs").db.cert_pem),
            ServerVerification::Full,
            None,
        )
        .expect("client config"),
        admin_user: "dbward_admin".into(),
        database: "dbward".into(),
        allowed_predefined_roles: Vec::new(),
    }
}

#[tokio::test]
async fn an_unreachable_admin_connection_is_reported_alike_on_every_engine() {
    let provisioners = Provisioners::new(
        PgProvisioner::with_settings(PgProvisionerSettings {
            connect_timeout: Duration::from_secs(5),
            ..PgProvisionerSettings::default()
        }),
        MariaProvisioner::with_settings(MariaProvisionerSettings {
            operation_timeout: Duration::from_secs(5),
            ..MariaProvisionerSettings::default()
        }),
    );
    let user = DbUserName::new("alice");
    for engine in [Engine::Postgres, Engine::Mysql] {
        let port = closed_port();
        let target = target(engine, port);
        let err = provisioners
            .activate(&target, &user, "alice", &[])
            .await
            .expect_err("nothing listens there");
        let ProvisionError::AdminConnect {
            admin,
            address,
            source,
        } = &err
        else {
            panic!("{engine:?}: not an admin-connect error: {err:?}");
        };
        assert_eq!(admin, "dbward_admin", "{engine:?}");
        assert_eq!(address, &format!("127.0.0.1:{port}"), "{engine:?}");
        assert!(!source.to_string().is_empty(), "{engine:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot connect to the database as admin user \"dbward_admin\" at 127.0.0.1:{port}: "
            )),
            "{engine:?}: {text}"
        );
        assert_eq!(err.client_message(), None, "{engine:?}: {text}");
        assert_eq!(err.kind(), ErrorKind::Database, "{engine:?}");
    }
}
