//! `dbward proxy db DB [--port P]`: a plain-TCP listener on 127.0.0.1 that forwards each
//! connection to the gateway over TLS with the database certificate, for clients that cannot
//! present client certificates. PostgreSQL cancel requests arrive on new connections and are
//! forwarded the same way, so psql's Ctrl-C works. MySQL/MariaDB connections are bridged by
//! `dbward_proxy::mysql::local`, which upgrades to TLS inside the MySQL handshake.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

use crate::client::{split_addr, tls_config, ClientCert, Trust};
use crate::commands::is_expired;
use crate::home::{ClientHome, DbRouteState};

struct Upstream {
    addr: String,
    server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
}

pub async fn db(db: &str, port: u16) -> Result<()> {
    let home = ClientHome::from_env()?;
    let files = home.db(db)?;
    let Some(route) = files.load_route()? else {
        bail!("not logged in to database \"{db}\"; run `dbward db login {db}`");
    };
    if is_expired(&route.expires) {
        bail!("the certificate for \"{db}\" has expired; run `dbward db login {db}`");
    }
    let mysql = route.protocol == "mysql";
    let upstream = Arc::new(upstream(&home, &route)?);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
    let local = listener.local_addr()?;
    println!(
        "Forwarding 127.0.0.1:{} to database \"{db}\" through {} as db user {}.",
        local.port(),
        upstream.addr,
        route.db_user
    );
    let example = if mysql {
        let mut example = format!(
            "mariadb --host=127.0.0.1 --port={} --skip-ssl --user={}",
            local.port(),
            route.db_user
        );
        if let Some(name) = &route.db_name {
            example.push_str(&format!(" --database={name}"));
        }
        example
    } else {
        let mut example = format!(
            "psql \"host=127.0.0.1 port={} sslmode=disable user={}",
            local.port(),
            route.db_user
        );
        if let Some(name) = &route.db_name {
            example.push_str(&format!(" dbname={name}"));
        }
        example.push('"');
        example
    };
    println!("Connect with:\n  {example}\nPress Ctrl-C to stop.");
    loop {
        let (client, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let upstream = upstream.clone();
        tokio::spawn(async move {
            let forwarded = if mysql {
                forward_mysql(client, &upstream).await
            } else {
                forward_postgres(client, &upstream).await
            };
            if let Err(err) = forwarded {
                eprintln!("connection from {peer}: {err:#}");
            }
        });
    }
}

fn upstream(home: &ClientHome, route: &DbRouteState) -> Result<Upstream> {
    let files = home.db(&route.db)?;
    let read = |path: std::path::PathBuf| {
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let alpn: &[u8] = if route.protocol == "mysql" {
        b""
    } else {
        b"postgresql"
    };
    let mut config = tls_config(
        Trust::Ca(read(home.host_ca())?),
        Some(ClientCert {
            cert_pem: read(files.cert())?,
            key_pem: read(files.key())?,
        }),
        alpn,
    )?;
    if alpn.is_empty() {
        config.alpn_protocols.clear();
    }
    let config = Arc::new(config);
    let (addr, server_name) =
        split_addr(&format!("{}:{}", route.gateway_host, route.gateway_port))?;
    Ok(Upstream {
        addr,
        server_name,
        config,
    })
}

/// Bridges a local PostgreSQL client: TLS to the gateway, then the startup packet.
async fn forward_postgres(client: TcpStream, upstream: &Upstream) -> Result<()> {
    client.set_nodelay(true)?;
    dbward_proxy::pg::local::bridge(
        client,
        &upstream.addr,
        upstream.config.clone(),
        upstream.server_name.clone(),
    )
    .await
    .with_context(|| format!("bridging to {}", upstream.addr))?;
    Ok(())
}

/// Bridges a local MySQL/MariaDB client: TLS to the gateway inside the MySQL handshake.
async fn forward_mysql(client: TcpStream, upstream: &Upstream) -> Result<()> {
    client.set_nodelay(true)?;
    dbward_proxy::mysql::local::bridge(
        client,
        &upstream.addr,
        upstream.config.clone(),
        upstream.server_name.clone(),
    )
    .await
    .with_context(|| format!("bridging to {}", upstream.addr))?;
    Ok(())
}
