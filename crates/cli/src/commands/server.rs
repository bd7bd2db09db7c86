//! `dbward start` (the gateway) and `dbward quickstart` (a sandbox with local databases, from
//! `dbward-quickstart`): run in this process.

use std::path::PathBuf;

use anyhow::Result;
use dbward_model::Config;

pub async fn start(config: Config) -> Result<()> {
    dbward_server::run(config).await?;
    Ok(())
}

pub async fn quickstart(dir: Option<PathBuf>) -> Result<()> {
    dbward_quickstart::run(dir).await?;
    Ok(())
}
