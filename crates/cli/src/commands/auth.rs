//! `dbward auth sign` and `dbward auth export`: work on the CAs in the store directly, so they
//! run with or without a gateway (the CAs are created on first use either way).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use dbward_model::Config;
use dbward_pki::{CaKind, CaSet};

use crate::args::{AuthSignArgs, CaType, SignFormat};

async fn load_cas(config: &Config) -> Result<CaSet> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let store = dbward_server::open_store(config).await?;
    let cluster = dbward_server::cluster_name(config);
    Ok(dbward_server::bootstrap::load_or_create_cas(&store, &cluster).await?)
}

/// `PREFIX` + `.crt`: the extension is appended, never substituted.
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

pub async fn sign(config: &Config, args: AuthSignArgs) -> Result<()> {
    let SignFormat::Db = args.format;
    let ttl =
        dbward_model::parse_duration(&args.ttl).with_context(|| format!("--ttl {}", args.ttl))?;
    let hosts: Vec<String> = args
        .host
        .iter()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .collect();
    if hosts.is_empty() {
        anyhow::bail!("--host needs at least one host name or IP address");
    }
    let cas = load_cas(config).await?;
    let (cert_pem, key_pem) = dbward_pki::issue_db_server_cert(&cas.db, &hosts, ttl)?;
    let crt = with_suffix(&args.out, ".crt");
    let key = with_suffix(&args.out, ".key");
    let client_cas = with_suffix(&args.out, ".cas");
    std::fs::write(&crt, &cert_pem).with_context(|| format!("writing {}", crt.display()))?;
    dbward_pki::write_private_file(&key, key_pem.as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    std::fs::write(&client_cas, &cas.db_client.cert_pem)
        .with_context(|| format!("writing {}", client_cas.display()))?;
    println!(
        "Wrote {}, {} and {} (valid for {}).\n",
        crt.display(),
        key.display(),
        client_cas.display(),
        dbward_model::format_duration(ttl)
    );
    println!("PostgreSQL (postgresql.conf):");
    println!("  ssl = on");
    println!("  ssl_cert_file = '{}'", crt.display());
    println!("  ssl_key_file = '{}'", key.display());
    println!("  ssl_ca_file = '{}'", client_cas.display());
    println!("MariaDB / MySQL ([mysqld]):");
    println!("  ssl_cert = {}", crt.display());
    println!("  ssl_key = {}", key.display());
    println!("  ssl_ca = {}", client_cas.display());
    Ok(())
}

pub fn ca_kind(ca_type: CaType) -> CaKind {
    match ca_type {
        CaType::Host => CaKind::Host,
        CaType::User => CaKind::User,
        CaType::Db => CaKind::Db,
        CaType::DbClient => CaKind::DbClient,
    }
}

pub async fn export(config: &Config, ca_type: CaType) -> Result<()> {
    let cas = load_cas(config).await?;
    print!("{}", cas.get(ca_kind(ca_type)).cert_pem);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_gets_the_extension_appended() {
        assert_eq!(
            with_suffix(Path::new("/tmp/pg.server"), ".crt"),
            PathBuf::from("/tmp/pg.server.crt")
        );
    }

    #[test]
    fn ca_types_map_to_their_kind_names() {
        for (t, name) in [
            (CaType::Host, "host"),
            (CaType::User, "user"),
            (CaType::Db, "db"),
            (CaType::DbClient, "db-client"),
        ] {
            assert_eq!(ca_kind(t).as_str(), name);
        }
    }
}
