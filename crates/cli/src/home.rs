//! Client state in `$DBWARD_HOME` (default `~/.dbward`): the login profile, the user's key and
//! certificate, the gateway's host CA, and one directory per database route.
//!
//! Private keys are written 0600 and never leave this directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub const HOME_ENV: &str = "DBWARD_HOME";

/// What `dbward login` remembers about the gateway and the login.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Profile {
    /// The gateway's web address, `HOST:PORT`.
    pub proxy: String,
    pub user: String,
    pub cluster: String,
    /// End of validity of the login certificate, RFC 3339.
    pub expires: String,
}

/// What `dbward db login` remembers about one database route.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DbRouteState {
    pub db: String,
    pub protocol: String,
    pub db_user: String,
    #[serde(default)]
    pub db_name: Option<String>,
    #[serde(default)]
    pub db_roles: Vec<String>,
    pub gateway_host: String,
    pub gateway_port: u16,
    /// RFC 3339.
    pub expires: String,
    /// The trusted leaf cluster of the database (`db login --cluster`), so that a new
    /// certificate for the route goes there too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// The paths of the client state.
#[derive(Debug, Clone)]
pub struct ClientHome {
    root: PathBuf,
}

impl ClientHome {
    /// `$DBWARD_HOME`, else `$HOME/.dbward`.
    pub fn from_env() -> Result<Self> {
        if let Some(dir) = std::env::var_os(HOME_ENV).filter(|d| !d.is_empty()) {
            return Ok(Self::at(PathBuf::from(dir)));
        }
        let home = std::env::var_os("HOME")
            .filter(|d| !d.is_empty())
            .context("neither $DBWARD_HOME nor $HOME is set")?;
        Ok(Self::at(PathBuf::from(home).join(".dbward")))
    }

    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn profile(&self) -> PathBuf {
        self.root.join("profile.json")
    }
    pub fn key(&self) -> PathBuf {
        self.root.join("key.pem")
    }
    pub fn cert(&self) -> PathBuf {
        self.root.join("cert.pem")
    }
    pub fn host_ca(&self) -> PathBuf {
        self.root.join("host-ca.pem")
    }
    pub fn dbs_dir(&self) -> PathBuf {
        self.root.join("db")
    }

    /// The directory of one database route. The name comes from the user, so it must not
    /// escape `db/`.
    pub fn db(&self, db: &str) -> Result<DbFiles> {
        if db.is_empty()
            || db == "."
            || db == ".."
            || db.contains('/')
            || db.contains('\\')
            || db.contains('\0')
        {
            bail!("invalid database name {db:?}");
        }
        Ok(DbFiles {
            dir: self.dbs_dir().join(db),
        })
    }

    pub fn ensure_root(&self) -> Result<()> {
        create_private_dir(&self.root)
    }

    /// The profile, or `None` when not logged in.
    pub fn load_profile(&self) -> Result<Option<Profile>> {
        read_json_opt(&self.profile())
    }

    pub fn save_profile(&self, profile: &Profile) -> Result<()> {
        self.ensure_root()?;
        write_json(&self.profile(), profile)
    }

    /// The profile, or an error telling the user to log in.
    pub fn require_profile(&self) -> Result<Profile> {
        match self.load_profile()? {
            Some(p) if self.cert().exists() && self.key().exists() => Ok(p),
            _ => bail!("not logged in; run `dbward login --proxy HOST:PORT --user NAME`"),
        }
    }

    /// Every database route stored, sorted by name.
    pub fn db_routes(&self) -> Result<Vec<DbRouteState>> {
        let mut routes = Vec::new();
        let entries = match std::fs::read_dir(self.dbs_dir()) {
            Ok(e) => e,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(routes),
            Err(err) => return Err(err).context(format!("reading {}", self.dbs_dir().display())),
        };
        for entry in entries {
            let entry = entry?;
            let files = DbFiles { dir: entry.path() };
            if let Some(route) = read_json_opt::<DbRouteState>(&files.route())? {
                routes.push(route);
            }
        }
        routes.sort_by(|a, b| a.db.cmp(&b.db));
        Ok(routes)
    }

    /// Removes every file this module writes; what is not there is fine.
    pub fn clear(&self) -> Result<()> {
        for file in [self.profile(), self.key(), self.cert(), self.host_ca()] {
            remove_file_if_exists(&file)?;
        }
        self.clear_db_routes()
    }

    pub fn clear_db_routes(&self) -> Result<()> {
        match std::fs::remove_dir_all(self.dbs_dir()) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(err).context(format!("removing {}", self.dbs_dir().display())),
        }
    }
}

/// The files of one database route.
#[derive(Debug, Clone)]
pub struct DbFiles {
    dir: PathBuf,
}

impl DbFiles {
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }
    pub fn route(&self) -> PathBuf {
        self.dir.join("route.json")
    }
    pub fn load_route(&self) -> Result<Option<DbRouteState>> {
        if !self.cert().exists() || !self.key().exists() {
            return Ok(None);
        }
        read_json_opt(&self.route())
    }
    pub fn save(&self, route: &DbRouteState, cert_pem: &str, key_pem: &str) -> Result<()> {
        create_private_dir(&self.dir)?;
        dbward_pki::write_private_file(&self.key(), key_pem.as_bytes())
            .with_context(|| format!("writing {}", self.key().display()))?;
        std::fs::write(self.cert(), cert_pem)
            .with_context(|| format!("writing {}", self.cert().display()))?;
        write_json(&self.route(), route)
    }
}

pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting permissions of {}", dir.display()))?;
    }
    Ok(())
}

fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).context(format!("reading {}", path.display())),
    };
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged; run `dbward logout`", path.display()))?;
    Ok(Some(value))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).context(format!("removing {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(db: &str) -> DbRouteState {
        DbRouteState {
            db: db.into(),
            protocol: "postgres".into(),
            db_user: "alice".into(),
            db_name: None,
            db_roles: vec![],
            gateway_host: "localhost".into(),
            gateway_port: 3432,
            expires: "2030-01-01T00:00:00Z".into(),
            cluster: None,
        }
    }

    #[test]
    fn database_names_cannot_escape_the_db_directory() {
        let home = ClientHome::at(PathBuf::from("/h"));
        for bad in ["", ".", "..", "a/b", "../x", "a\\b"] {
            assert!(home.db(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            home.db("example").map(|f| f.cert()).ok(),
            Some(PathBuf::from("/h/db/example/cert.pem"))
        );
    }

    #[test]
    fn db_route_round_trips_with_a_private_key_and_clear_removes_everything() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let home = ClientHome::at(dir.path().join("state"));
        home.save_profile(&Profile {
            proxy: "127.0.0.1:3080".into(),
            user: "alice".into(),
            cluster: "local".into(),
            expires: "2030-01-01T00:00:00Z".into(),
        })?;
        let files = home.db("example")?;
        files.save(&route("example"), "CERT", "KEY")?;
        assert_eq!(files.load_route()?, Some(route("example")));
        assert_eq!(home.db_routes()?, vec![route("example")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(files.key())?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Without a login certificate the profile alone is not a login.
        assert!(home.require_profile().is_err());
        home.clear()?;
        assert_eq!(home.load_profile()?, None);
        assert!(home.db_routes()?.is_empty());
        Ok(())
    }
}
