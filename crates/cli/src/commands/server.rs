//! `dbward start` and `dbward quickstart`: run the gateway in this process.

use std::path::PathBuf;

use anyhow::Result;
use dbward_model::Config;

pub async fn start(config: Config) -> Result<()> {
    dbward_server::run(config).await?;
    Ok(())
}

pub async fn quickstart(dir: Option<PathBuf>) -> Result<()> {
    dbward_server::quickstart::run(dir).await?;
    Ok(())
}
