//! Password hashing (Argon2id) and the login attempt limiter: failed-login counters per
//! (user, address), per user and per address, and the bound on password checks at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordHasher, SaltString};
use argon2::{Argon2, PasswordVerifier};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Longest user name a login may name, in bytes; longer ones are refused before they are
/// looked up, counted or hashed.
pub const MAX_USER_NAME_LEN: usize = 256;
/// Longest password a login may send, in bytes.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// How many failed logins are tolerated, per key, before attempts are refused.
#[derive(Debug, Clone, Copy)]
pub struct LoginPolicy {
    /// Failures of one user from one address (IPv6: one /64), and the window they count in.
    pub per_pair: (u32, Duration),
    /// Failures of one user from all addresses together: looser and slower, so that one
    /// attacker elsewhere cannot lock a user out, while a guesser with many addresses is
    /// still slowed down. Past it the user is not locked: one attempt per
    /// `per_user_spacing` still goes through.
    pub per_user: (u32, Duration),
    pub per_user_spacing: Duration,
    /// Failures from one address, whatever user names it tries.
    pub per_address: (u32, Duration),
    /// Keys tracked per kind; past it expired entries are pruned, then the oldest dropped.
    pub max_keys: usize,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            per_pair: (5, Duration::from_secs(300)),
            per_user: (30, Duration::from_secs(900)),
            per_user_spacing: Duration::from_secs(10),
            per_address: (30, Duration::from_secs(300)),
            max_keys: 65_536,
        }
    }
}

/// Failed-login counters and the bound on password verifications running at once.
///
/// An attempt is counted when it starts ([`LoginLimiter::begin`]), before the password is
/// checked, so a burst of simultaneous attempts cannot all slip under the limit; a successful
/// one is taken back ([`LoginLimiter::succeeded`]). Memory is bounded: user names are capped
/// by [`MAX_USER_NAME_LEN`] before they get here, and each table holds at most
/// `max_keys` entries, expired ones pruned.
pub struct LoginLimiter {
    policy: LoginPolicy,
    state: std::sync::Mutex<Counters>,
    verifications: Arc<Semaphore>,
    checkers: CheckerThreads,
    /// Logins waiting for a verification slot, and how many may.
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A hash of a random password, checked against when the user does not exist.
static DUMMY_HASH: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| hash_password(&generate_password()).unwrap_or_default());

type CheckJob = Box<dyn FnOnce() + Send>;

/// Threads that check passwords, as many as there are verification slots. Argon2 takes
/// about 19 MiB per check; done always by the same few threads, that memory is reused
/// instead of being left behind in the allocator arenas of every thread of the blocking pool.
struct CheckerThreads {
    jobs: std::sync::mpsc::Sender<CheckJob>,
    threads: usize,
}

impl CheckerThreads {
    fn spawn(wanted: usize) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<CheckJob>();
        let queue = Arc::new(std::sync::Mutex::new(queue));
        let mut threads = 0;
        for i in 0..wanted.max(1) {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("dbward-password-{i}"))
                .spawn(move || loop {
                    let job = match queue.lock() {
                        Ok(queue) => queue.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        // The limiter is gone.
                        Err(_) => return,
                    }
                });
            match spawned {
                Ok(_) => threads += 1,
                Err(err) => tracing::error!(%err, "cannot start a password checking thread"),
            }
        }
        CheckerThreads { jobs, threads }
    }
}

/// The longest a login waits for a verification slot before it is answered 503.
pub const VERIFICATION_WAIT: Duration = Duration::from_secs(3);

/// One login in the queue for a verification slot.
struct Waiting<'a> {
    counter: &'a AtomicUsize,
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        let ahead = counter.fetch_add(1, Ordering::SeqCst);
        Waiting { counter, ahead }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The keys one attempt was counted under.
#[derive(Debug, Clone)]
pub struct AttemptKeys {
    user: String,
    address: IpAddr,
}

struct Counters {
    pairs: Table<(String, IpAddr)>,
    users: Table<String>,
    addresses: Table<IpAddr>,
}

/// Failures per key in fixed windows that start with a key's first failure; past `max`, one
/// attempt per `spacing` when there is one.
struct Table<K> {
    max: u32,
    window: Duration,
    spacing: Option<Duration>,
    max_keys: usize,
    entries: HashMap<K, Window>,
    last_prune: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
    last: Instant,
}

impl<K: std::hash::Hash + Eq + Clone> Table<K> {
    fn new((max, window): (u32, Duration), spacing: Option<Duration>, max_keys: usize) -> Self {
        Table {
            max,
            window,
            spacing,
            max_keys: max_keys.max(1),
            entries: HashMap::new(),
            last_prune: Instant::now(),
        }
    }

    fn live(&self, key: &K, now: Instant) -> u32 {
        match self.entries.get(key) {
            Some(w) if now.duration_since(w.start) < self.window => w.count,
            _ => 0,
        }
    }

    fn allows(&self, key: &K, now: Instant) -> bool {
        if self.live(key, now) < self.max {
            return true;
        }
        match (self.spacing, self.entries.get(key)) {
            (Some(spacing), Some(w)) => now.duration_since(w.last) >= spacing,
            _ => false,
        }
    }

    fn prune(&mut self, now: Instant) {
        let window = self.window;
        self.entries
            .retain(|_, w| now.duration_since(w.start) < window);
        self.last_prune = now;
    }

    fn add(&mut self, key: &K, now: Instant) {
        if now.duration_since(self.last_prune) >= self.window {
            self.prune(now);
        }
        if !self.entries.contains_key(key) && self.entries.len() >= self.max_keys {
            self.prune(now);
            if self.entries.len() >= self.max_keys {
                // Full of live entries: forget the oldest rather than refuse everyone.
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, w)| w.start)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
        }
        let entry = self.entries.entry(key.clone()).or_insert(Window {
            start: now,
            count: 0,
            last: now,
        });
        if now.duration_since(entry.start) >= self.window {
            *entry = Window {
                start: now,
                count: 0,
                last: now,
            };
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    fn take_back(&mut self, key: &K) {
        if let Some(w) = self.entries.get_mut(key) {
            w.count = w.count.saturating_sub(1);
            if w.count == 0 {
                self.entries.remove(key);
            }
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl LoginLimiter {
    /// `max_verifications` password checks may run at once (0: twice the number of CPUs).
    pub fn new(policy: LoginPolicy, max_verifications: usize) -> Self {
        let wanted = if max_verifications == 0 {
            2 * std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            max_verifications
        };
        let checkers = CheckerThreads::spawn(wanted);
        let max_verifications = checkers.threads;
        LoginLimiter {
            checkers,
            policy,
            state: std::sync::Mutex::new(Counters {
                pairs: Table::new(policy.per_pair, None, policy.max_keys),
                users: Table::new(
                    policy.per_user,
                    Some(policy.per_user_spacing),
                    policy.max_keys,
                ),
                addresses: Table::new(policy.per_address, None, policy.max_keys),
            }),
            verifications: Arc::new(Semaphore::new(max_verifications)),
            waiting: AtomicUsize::new(0),
            max_waiting: 4 * max_verifications,
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts an attempt of `user` from `address` as a failure unless it is later reported
    /// as a success; `None` when a limit is reached (nothing is counted then).
    pub fn begin(&self, user: &str, address: IpAddr) -> Option<AttemptKeys> {
        let address = crate::listen::address_key(address);
        let keys = AttemptKeys {
            user: user.to_string(),
            address,
        };
        let pair = (keys.user.clone(), address);
        let now = Instant::now();
        let mut c = self.counters();
        if !(c.pairs.allows(&pair, now)
            && c.users.allows(&keys.user, now)
            && c.addresses.allows(&address, now))
        {
            return None;
        }
        c.pairs.add(&pair, now);
        c.users.add(&keys.user, now);
        c.addresses.add(&address, now);
        Some(keys)
    }

    /// The attempt was not a failure after all (the password was right, or it was never
    /// checked): take its count back, and forget the failures of this user from this address.
    pub fn succeeded(&self, keys: &AttemptKeys) {
        let mut c = self.counters();
        c.pairs.entries.remove(&(keys.user.clone(), keys.address));
        c.users.take_back(&keys.user);
        c.addresses.take_back(&keys.address);
    }

    /// The attempt was never checked (no verification slot): it does not count.
    pub fn not_checked(&self, keys: &AttemptKeys) {
        let mut c = self.counters();
        c.pairs.take_back(&(keys.user.clone(), keys.address));
        c.users.take_back(&keys.user);
        c.addresses.take_back(&keys.address);
    }

    /// A slot to verify one password in. When all are busy, a bounded number of logins wait
    /// their turn (first come, first served) for at most [`VERIFICATION_WAIT`]; `None` when
    /// that queue is full too or the wait ran out, and the caller answers at once. Nothing
    /// ever queues on the blocking pool.
    pub async fn verification_slot(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(slot) = self.verifications.clone().try_acquire_owned() {
            return Some(slot);
        }
        let waiting = Waiting::enter(&self.waiting);
        if waiting.ahead >= self.max_waiting {
            return None;
        }
        tokio::time::timeout(
            VERIFICATION_WAIT,
            self.verifications.clone().acquire_owned(),
        )
        .await
        .ok()?
        .ok()
    }

    /// Checks `password` against `hash` (against a dummy hash when the user is unknown, so
    /// that timing does not tell which names exist) on one of the checker threads; `slot`
    /// is held until the check is done.
    pub async fn check_password(
        &self,
        slot: OwnedSemaphorePermit,
        password: String,
        hash: Option<String>,
    ) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: CheckJob = Box::new(move || {
            let _slot = slot;
            let ok = match hash {
                Some(h) => verify_password(&password, &h),
                None => {
                    let _ = verify_password(&password, &DUMMY_HASH);
                    false
                }
            };
            let _ = tx.send(ok);
        });
        if self.checkers.jobs.send(job).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Entries tracked (pairs, users, addresses), for tests and diagnostics.
    pub fn tracked(&self) -> (usize, usize, usize) {
        let c = self.counters();
        (c.pairs.len(), c.users.len(), c.addresses.len())
    }

    pub fn policy(&self) -> LoginPolicy {
        self.policy
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

    fn limiter(pair: u32, user: u32, address: u32, max_keys: usize) -> LoginLimiter {
        let window = Duration::from_secs(60);
        LoginLimiter::new(
            LoginPolicy {
                per_pair: (pair, window),
                per_user: (user, window),
                per_user_spacing: Duration::from_millis(200),
                per_address: (address, window),
                max_keys,
            },
            2,
        )
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn attempts_count_before_they_are_checked() {
        let l = limiter(3, 100, 100, 100);
        // Three attempts in flight at once: the fourth is refused before any finished.
        let started: Vec<_> = (0..3).map(|_| l.begin("alice", ip("10.0.0.1"))).collect();
        assert!(started.iter().all(Option::is_some));
        assert!(l.begin("alice", ip("10.0.0.1")).is_none());
        // A success takes its count back and clears the pair.
        l.succeeded(started[0].as_ref().unwrap());
        assert!(l.begin("alice", ip("10.0.0.1")).is_some());
    }

    #[test]
    fn one_address_does_not_lock_a_user_out_of_another() {
        let l = limiter(3, 10, 100, 100);
        for _ in 0..3 {
            assert!(l.begin("alice", ip("10.0.0.1")).is_some());
        }
        assert!(l.begin("alice", ip("10.0.0.1")).is_none());
        assert!(l.begin("alice", ip("10.0.0.2")).is_some());
        assert!(l.begin("bob", ip("10.0.0.1")).is_some());
    }

    #[test]
    fn past_the_looser_per_user_limit_guessing_is_slowed_not_locked() {
        let l = limiter(3, 10, 100, 100);
        for i in 0..10 {
            assert!(l.begin("alice", ip(&format!("10.0.1.{i}"))).is_some());
        }
        // From a new address: refused right away, but one attempt per spacing goes through.
        assert!(l.begin("alice", ip("10.0.2.1")).is_none());
        assert!(l.begin("bob", ip("10.0.2.1")).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(l.begin("alice", ip("10.0.2.1")).is_some());
        assert!(l.begin("alice", ip("10.0.2.2")).is_none());
    }

    #[test]
    fn one_address_trying_many_names_is_stopped() {
        let l = limiter(3, 10, 5, 100);
        for i in 0..5 {
            assert!(l.begin(&format!("user{i}"), ip("10.0.0.9")).is_some());
        }
        assert!(l.begin("user99", ip("10.0.0.9")).is_none());
    }

    #[test]
    fn tracked_keys_stay_bounded() {
        let l = limiter(3, 10, 1_000_000, 50);
        for i in 0..1000 {
            let _ = l.begin(
                &format!("name{i}"),
                ip(&format!("10.1.{}.{}", i / 250, i % 250)),
            );
        }
        let (pairs, users, addresses) = l.tracked();
        assert!(
            pairs <= 50 && users <= 50 && addresses <= 50,
            "{:?}",
            l.tracked()
        );
    }

    #[tokio::test]
    async fn verification_slots_are_bounded_and_the_queue_for_them_too() {
        let l = Arc::new(limiter(3, 10, 10, 10));
        let a = l.verification_slot().await.unwrap();
        let _b = l.verification_slot().await.unwrap();
        // Both busy: a third waits its turn and gets the slot freed first.
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { l.verification_slot().await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(a);
        assert!(waiter.await.unwrap());
        // All busy and nothing freed: the wait ends with a refusal, not for ever.
        let _c = l.verification_slot().await;
        assert!(l.verification_slot().await.is_none());
        // A full queue refuses at once: 4 x 2 waiters already.
        let mut queued = Vec::new();
        for _ in 0..8 {
            let l = l.clone();
            queued.push(tokio::spawn(async move {
                l.verification_slot().await.is_some()
            }));
        }
        tokio::task::yield_now().await;
        let started = Instant::now();
        assert!(l.verification_slot().await.is_none());
        assert!(started.elapsed() < VERIFICATION_WAIT / 2);
        for q in queued {
            assert!(!q.await.unwrap());
        }
    }
}
