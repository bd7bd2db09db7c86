//! `dbward proxy db DB [--port P]`: a plain-TCP listener on 127.0.0.1 that forwards each
//! connection to the gateway over TLS with the database certificate, for clients that cannot
//! present client certificates. PostgreSQL cancel requests arrive on new connections and are
//! forwarded the same way, so psql's Ctrl-C works. MySQL/MariaDB connections are bridged by
//! `dbward_proxy::mysql::local`, which upgrades to TLS inside the MySQL handshake.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use crate::client::{split_addr, tls_config, ClientCert, Trust};
use crate::commands::is_expired;
use crate::home::{ClientHome, DbRouteState};

/// PostgreSQL startup codes that ask for encryption on the local leg, which stays plain.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

struct Upstream {
    addr: String,
    server_name: ServerName<'static>,
    config: Arc<rustls::ClientConfig>,
    connector: TlsConnector,
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
        connector: TlsConnector::from(config.clone()),
        config,
    })
}

/// Answers the client's encryption requests with "no", then opens TLS to the gateway
/// (SSLRequest, then the handshake) and relays bytes both ways.
async fn forward_postgres(mut client: TcpStream, upstream: &Upstream) -> Result<()> {
    let first = read_until_startup(&mut client).await?;
    let mut server = TcpStream::connect(&upstream.addr)
        .await
        .with_context(|| format!("connecting to {}", upstream.addr))?;
    let mut ssl_request = Vec::with_capacity(8);
    ssl_request.extend_from_slice(&8u32.to_be_bytes());
    ssl_request.extend_from_slice(&SSL_REQUEST.to_be_bytes());
    server.write_all(&ssl_request).await?;
    let mut answer = [0u8; 1];
    server.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        bail!("the gateway refused TLS");
    }
    let mut tls = upstream
        .connector
        .connect(upstream.server_name.clone(), server)
        .await
        .context("TLS with the gateway")?;
    tls.write_all(&first).await?;
    tokio::io::copy_bidirectional(&mut client, &mut tls).await?;
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

/// Reads startup packets until one that is not an encryption request; returns its bytes.
async fn read_until_startup<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S) -> Result<Vec<u8>> {
    loop {
        let mut header = [0u8; 8];
        client.read_exact(&mut header).await?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len == 8 && (code == SSL_REQUEST || code == GSSENC_REQUEST) {
            client.write_all(b"N").await?;
            continue;
        }
        if !(8..=10_000).contains(&len) {
            bail!("not a PostgreSQL startup packet");
        }
        let mut packet = header.to_vec();
        packet.resize(len, 0);
        client.read_exact(&mut packet[8..]).await?;
        return Ok(packet);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn encryption_requests_are_declined_and_the_startup_packet_is_kept_whole() -> Result<()> {
        let (mut local, mut remote) = tokio::io::duplex(1024);
        let mut startup = Vec::new();
        let body = b"\x00\x03\x00\x00user\x00alice\x00\x00";
        startup.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        startup.extend_from_slice(body);
        let mut sent = Vec::new();
        sent.extend_from_slice(&8u32.to_be_bytes());
        sent.extend_from_slice(&GSSENC_REQUEST.to_be_bytes());
        sent.extend_from_slice(&8u32.to_be_bytes());
        sent.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        sent.extend_from_slice(&startup);
        remote.write_all(&sent).await?;
        let packet = read_until_startup(&mut local).await?;
        assert_eq!(packet, startup);
        let mut answers = [0u8; 2];
        remote.read_exact(&mut answers).await?;
        assert_eq!(&answers, b"NN");
        Ok(())
    }
}
