//! The `state` of a single sign-on login: everything the callback needs, sealed
//! (AES-256-GCM) so that it can travel through the browser and the provider unread and
//! unchanged, and so that any gateway instance sharing the store can finish a login another
//! one started. The key is derived from the user CA's private key, which every instance of a
//! cluster holds and nobody else does.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// How long a login may take between `dbward login --auth` and the provider's callback.
pub const LOGIN_WINDOW_SECS: i64 = 600;

/// What the gateway remembers of a login in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The connector's name.
    pub connector: String,
    /// The CLI's loopback callback.
    pub client_redirect: String,
    /// The CLI's own state, returned to it unchanged.
    pub client_state: String,
    /// The PKCE code verifier.
    pub verifier: String,
    /// The OpenID nonce the ID token must carry.
    pub nonce: String,
    /// The CLI's certificate request (DER, base64url).
    pub csr: String,
    /// The address of the CLI, for `pin_source_ip`.
    pub client_ip: std::net::IpAddr,
    /// Unix seconds after which the login is refused.
    pub expires: i64,
}

/// Seals and opens [`PendingLogin`]s with one cluster's key.
pub struct StateKey {
    key: LessSafeKey,
}

impl StateKey {
    /// The key of the cluster whose user CA private key is `user_ca_key_pem`.
    pub fn derive(user_ca_key_pem: &str, cluster: &str) -> StateKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"dbward single sign-on state");
        let prk = salt.extract(user_ca_key_pem.as_bytes());
        let info = [cluster.as_bytes()];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .expect("an AES-256 key is a valid HKDF output length");
        StateKey {
            key: LessSafeKey::new(UnboundKey::from(okm)),
        }
    }

    /// The `state` parameter for this login.
    pub fn seal(&self, login: &PendingLogin) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no randomness available".to_string())?;
        let mut data = serde_json::to_vec(login).map_err(|e| e.to_string())?;
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| "sealing the login state failed".to_string())?;
        let mut out = nonce.to_vec();
        out.extend(data);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The login a `state` stands for, if this cluster sealed it and it has not expired.
    pub fn open(&self, state: &str, now_unix: i64) -> Result<PendingLogin, String> {
        const REFUSED: &str =
            "this login is unknown to the gateway; start again with `dbward login --auth`";
        if state.len() > 8192 {
            return Err(REFUSED.into());
        }
        let mut bytes = URL_SAFE_NO_PAD
            .decode(state)
            .map_err(|_| REFUSED.to_string())?;
        if bytes.len() < NONCE_LEN {
            return Err(REFUSED.into());
        }
        let mut sealed = bytes.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&bytes).map_err(|_| REFUSED.to_string())?;
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut sealed)
            .map_err(|_| REFUSED.to_string())?;
        let login: PendingLogin = serde_json::from_slice(plain).map_err(|_| REFUSED.to_string())?;
        if login.expires < now_unix {
            return Err("this login took too long; start again with `dbward login --auth`".into());
        }
        Ok(login)
    }
}

/// `n` random bytes, base64url: state, nonce and PKCE verifier material.
pub fn random_token(n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "no randomness available".to_string())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(expires: i64) -> PendingLogin {
        PendingLogin {
            connector: "okta".into(),
            client_redirect: "http://127.0.0.1:5555/callback".into(),
            client_state: "cs".into(),
            verifier: "v".into(),
            nonce: "n".into(),
            csr: "c".into(),
            client_ip: "127.0.0.1".parse().unwrap(),
            expires,
        }
    }

    #[test]
    fn a_sealed_login_opens_with_the_same_key_only_until_it_expires() {
        let key = StateKey::derive("key-a", "root");
        let state = key.seal(&login(1000)).unwrap();
        assert_eq!(key.open(&state, 999).unwrap(), login(1000));
        assert!(key.open(&state, 1001).is_err());
        assert!(StateKey::derive("key-b", "root").open(&state, 0).is_err());
        assert!(StateKey::derive("key-a", "leaf").open(&state, 0).is_err());
    }

    #[test]
    fn a_changed_state_does_not_open() {
        let key = StateKey::derive("key-a", "root");
        let state = key.seal(&login(1000)).unwrap();
        let mut bytes = URL_SAFE_NO_PAD.decode(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(key.open(&URL_SAFE_NO_PAD.encode(bytes), 0).is_err());
        assert!(key.open("", 0).is_err());
        assert!(key.open("!!", 0).is_err());
    }
}
