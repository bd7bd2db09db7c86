//! Password hashing (Argon2id) and the login attempt limiter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use rand::Rng;
use tokio::sync::Mutex;

pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A password that is printed once to the operator: 24 characters from an unambiguous set.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Failed attempts per key (user name and client address are both keys) in a sliding window.
pub struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// True when another attempt for any of `keys` is allowed now.
    pub async fn allowed(&self, keys: &[String]) -> bool {
        let mut map = self.failures.lock().await;
        let now = Instant::now();
        keys.iter().all(|k| {
            let list = map.entry(k.clone()).or_default();
            list.retain(|t| now.duration_since(*t) < self.window);
            list.len() < self.max_failures
        })
    }

    pub async fn record_failure(&self, keys: &[String]) {
        let mut map = self.failures.lock().await;
        for k in keys {
            map.entry(k.clone()).or_default().push(Instant::now());
        }
    }

    pub async fn record_success(&self, user_key: &str) {
        self.failures.lock().await.remove(user_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_password_verifies_and_wrong_one_does_not() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("s3cret ", &h));
        assert!(!verify_password("s3cret", "not a hash"));
    }

    #[tokio::test]
    async fn limiter_blocks_after_max_failures_for_that_key_only() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let alice = vec!["user:alice".to_string()];
        for _ in 0..3 {
            assert!(l.allowed(&alice).await);
            l.record_failure(&alice).await;
        }
        assert!(!l.allowed(&alice).await);
        assert!(l.allowed(&["user:bob".to_string()]).await);
    }
}
