//! Which kind of server a MySQL-protocol database is, read from its version string, and
//! whether automatic user provisioning works on it (PROVISIONING.md §5). The policy lives
//! here, beside the provisioning it guards, not in the wire protocol.
//!
//! The version comes from `SELECT VERSION()` or from a server's handshake greeting. In the
//! greeting MariaDB 10.x and 11.x announce themselves as `5.5.5-<version>-MariaDB…` so that
//! old MySQL clients accept them; newer ones may drop the prefix. MySQL sends its plain
//! version.

/// A server kind and version, from its version string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFlavor {
    /// MariaDB `major.minor.patch`.
    MariaDb(u32, u32, u32),
    /// MySQL (or a compatible server that does not say MariaDB) `major.minor.patch`.
    MySql(u32, u32, u32),
}

/// The message for servers too old for provisioning.
pub const PROVISIONING_UNSUPPORTED_MARIADB: &str =
    "automatic user provisioning is not supported for MariaDB servers older than 10.3.3";
/// The message for MySQL servers too old for provisioning.
pub const PROVISIONING_UNSUPPORTED_MYSQL: &str =
    "automatic user provisioning is not supported for MySQL servers older than 8.0.21";

/// Reads the server flavour from its version string. Missing or unreadable numbers count as
/// 0, which [`provisioning_supported`] then refuses.
pub fn parse_server_version(version: &str) -> ServerFlavor {
    let stripped = version.strip_prefix("5.5.5-").unwrap_or(version);
    let is_mariadb = stripped.contains("-MariaDB") || stripped.contains("MariaDB");
    let numbers = match stripped.find("-MariaDB") {
        Some(at) => &stripped[..at],
        None => stripped,
    };
    // `8.0.36-0ubuntu0.22.04.1`, `8.0.36-log`: only the leading dotted numbers count.
    let numbers = numbers
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()
        .unwrap_or("");
    let mut parts = numbers.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor, patch) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    if is_mariadb {
        ServerFlavor::MariaDb(major, minor, patch)
    } else {
        ServerFlavor::MySql(major, minor, patch)
    }
}

/// Whether dbward can provision users on this server: MariaDB 10.3.3 and later (10.2.11 and
/// later on 10.2), MySQL 8.0.21 and later. `Err` carries the message a user sees.
pub fn provisioning_supported(flavor: &ServerFlavor) -> Result<(), String> {
    match *flavor {
        ServerFlavor::MariaDb(major, minor, patch) => {
            let v = (major, minor, patch);
            let ok = if (major, minor) == (10, 2) {
                v >= (10, 2, 11)
            } else {
                v >= (10, 3, 3)
            };
            if ok {
                Ok(())
            } else {
                Err(PROVISIONING_UNSUPPORTED_MARIADB.to_string())
            }
        }
        ServerFlavor::MySql(major, minor, patch) => {
            if (major, minor, patch) >= (8, 0, 21) {
                Ok(())
            } else {
                Err(PROVISIONING_UNSUPPORTED_MYSQL.to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_versions_with_the_5_5_5_prefix_and_packaging_suffix_are_read() {
        assert_eq!(
            parse_server_version("5.5.5-10.7.8-MariaDB-1:10.7.8+maria~ubu2004"),
            ServerFlavor::MariaDb(10, 7, 8)
        );
        assert_eq!(
            parse_server_version("5.5.5-10.11.6-MariaDB-0+deb12u1-log"),
            ServerFlavor::MariaDb(10, 11, 6)
        );
    }

    #[test]
    fn mariadb_versions_without_the_prefix_are_read() {
        assert_eq!(
            parse_server_version("10.11.6-MariaDB-0+deb12u1"),
            ServerFlavor::MariaDb(10, 11, 6)
        );
        assert_eq!(
            parse_server_version("11.4.2-MariaDB"),
            ServerFlavor::MariaDb(11, 4, 2)
        );
    }

    #[test]
    fn mysql_versions_are_read() {
        assert_eq!(
            parse_server_version("8.0.36"),
            ServerFlavor::MySql(8, 0, 36)
        );
        assert_eq!(
            parse_server_version("5.7.44"),
            ServerFlavor::MySql(5, 7, 44)
        );
        assert_eq!(
            parse_server_version("8.0.36-0ubuntu0.22.04.1"),
            ServerFlavor::MySql(8, 0, 36)
        );
    }

    #[test]
    fn provisioning_needs_mariadb_10_3_3_or_10_2_11() {
        let gate = |v: &str| provisioning_supported(&parse_server_version(v));
        assert_eq!(
            gate("5.5.5-10.2.10-MariaDB"),
            Err(PROVISIONING_UNSUPPORTED_MARIADB.to_string())
        );
        assert_eq!(
            gate("10.2.10-MariaDB"),
            Err(PROVISIONING_UNSUPPORTED_MARIADB.into())
        );
        assert_eq!(gate("10.2.11-MariaDB"), Ok(()));
        assert_eq!(
            gate("10.3.2-MariaDB"),
            Err(PROVISIONING_UNSUPPORTED_MARIADB.into())
        );
        assert_eq!(gate("10.3.3-MariaDB"), Ok(()));
        assert_eq!(
            gate("10.1.48-MariaDB"),
            Err(PROVISIONING_UNSUPPORTED_MARIADB.into())
        );
        assert_eq!(gate("5.5.5-10.7.8-MariaDB-1:10.7.8+maria~ubu2004"), Ok(()));
        assert_eq!(gate("10.11.6-MariaDB-0+deb12u1"), Ok(()));
        assert_eq!(gate("11.4.2-MariaDB"), Ok(()));
    }

    #[test]
    fn provisioning_needs_mysql_8_0_21() {
        let gate = |v: &str| provisioning_supported(&parse_server_version(v));
        assert_eq!(gate("8.0.36"), Ok(()));
        assert_eq!(gate("8.0.21"), Ok(()));
        assert_eq!(gate("8.0.20"), Err(PROVISIONING_UNSUPPORTED_MYSQL.into()));
        assert_eq!(gate("5.7.44"), Err(PROVISIONING_UNSUPPORTED_MYSQL.into()));
        assert_eq!(gate("garbage"), Err(PROVISIONING_UNSUPPORTED_MYSQL.into()));
    }
}
