//! Automatic certificates over ACME (RFC 8555, `instant-acme`): every
//! routed exact host that no tenant or file certificate covers gets one,
//! ordered when the host gets its first route (and at start for routed
//! hosts without a valid one), renewed at two thirds of its lifetime. A TLS
//! handshake never orders anything: only routes do. HTTP-01 is answered by
//! the plaintext listener from [`Challenges`]. A failed order is retried
//! after a back-off that doubles from `backoff_min` to `backoff_max`.
//! Issued certificates are registry records (`source: acme`, key sealed),
//! so they survive restarts and reach the resolver like tenants' uploads;
//! the account's credentials are sealed in `acme-account.json` in the data
//! directory.
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio::sync::watch;

use super::cert::{Certificate, unix_now};
use super::sni::Resolver;
use crate::registry::{AcmeHost, CertificateRecord, Registry, certificate_context, now};
use crate::telemetry::metrics::AcmeCounters;

/// The `[tls.acme]` table resolved.
#[derive(Debug, Clone)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// The account's contact (`mailto:`), if any.
    pub email: Option<String>,
    /// PEM of the root that the CA's own HTTPS is checked against (a test
    /// CA such as Pebble); the system's roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// First retry after a failed order.
    pub backoff_min: Duration,
    /// Longest wait between retries.
    pub backoff_max: Duration,
}

/// The HTTP-01 answers waiting for the CA: token → key authorization.
#[derive(Default)]
pub struct Challenges(Mutex<HashMap<String, String>>);

/// The path prefix HTTP-01 challenges are fetched under.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

impl Challenges {
    /// The key authorization for `path`, when it is a pending challenge's.
    pub fn answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long one order may take, from the new order to the certificate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The longest the loop sleeps without a change (renewals are due by time).
const IDLE: Duration = Duration::from_secs(60);

/// Waiting after failures of one host.
struct Backoff {
    failures: u32,
    until: Instant,
}

/// The ACME client of a node.
pub struct Acme {
    config: AcmeConfig,
    registry: Arc<Registry>,
    resolver: Arc<Resolver>,
    challenges: Arc<Challenges>,
    counters: Arc<AcmeCounters>,
    account_file: PathBuf,
    account: Option<Account>,
    backoff: HashMap<String, Backoff>,
}

impl Acme {
    /// A client that keeps `resolver`'s ACME layer filled (through the
    /// registry); the account file lives in `data_dir`.
    pub fn new(
        config: AcmeConfig,
        registry: Arc<Registry>,
        resolver: Arc<Resolver>,
        challenges: Arc<Challenges>,
        counters: Arc<AcmeCounters>,
        data_dir: &std::path::Path,
    ) -> Acme {
        Acme {
            config,
            registry,
            resolver,
            challenges,
            counters,
            account_file: data_dir.join("acme-account.json"),
            account: None,
            backoff: HashMap::new(),
        }
    }

    /// Orders what is due whenever the registry changes and when a
    /// renewal or retry comes due, until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut changes = self.registry.changes();
        loop {
            let wait = self.pass().await;
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// When `host`'s certificate should be renewed: two thirds into its
    /// lifetime (now, without one).
    fn due(host: &AcmeHost) -> i64 {
        match host.current {
            None => 0,
            Some((not_before, not_after)) => not_before + (not_after - not_before) * 2 / 3,
        }
    }

    /// Orders for every host that is due and not backing off; returns how
    /// long until the next one is.
    async fn pass(&mut self) -> Duration {
        let hosts = self.registry.acme_hosts();
        self.backoff
            .retain(|h, _| hosts.iter().any(|w| w.host == *h));
        let mut next = IDLE;
        for host in hosts {
            // The operator's certificate file covers it: nothing to order.
            if self.resolver.has_file_certificate(&host.host) {
                continue;
            }
            let due = Self::due(&host) - unix_now();
            if due > 0 {
                next = next.min(Duration::from_secs(due as u64));
                continue;
            }
            if let Some(b) = self.backoff.get(&host.host) {
                let left = b.until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    next = next.min(left);
                    continue;
                }
            }
            let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order(&host.host)).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no certificate within {}s",
                    ORDER_TIMEOUT.as_secs()
                )),
            };
            match result {
                Ok(not_after) => {
                    self.backoff.remove(&host.host);
                    self.counters.issued.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(host = %host.host, not_after, "ACME certificate issued");
                }
                Err(error) => {
                    let failures = self.backoff.get(&host.host).map_or(0, |b| b.failures) + 1;
                    let wait = self
                        .config
                        .backoff_min
                        .saturating_mul(1 << (failures - 1).min(20))
                        .min(self.config.backoff_max);
                    self.backoff.insert(
                        host.host.clone(),
                        Backoff {
                            failures,
                            until: Instant::now() + wait,
                        },
                    );
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(host = %host.host, %error, failures, retry_in_s = wait.as_secs(), "ACME order failed");
                    next = next.min(wait);
                }
            }
        }
        next
    }

    /// The account: restored from its file, or created (and saved).
    async fn account(&mut self) -> Result<Account, String> {
        if let Some(a) = &self.account {
            return Ok(a.clone());
        }
        let builder = || {
            match &self.config.ca_file {
                Some(path) => Account::builder_with_root(path),
                None => Account::builder(),
            }
            .map_err(|e| format!("ACME client: {e}"))
        };
        let secrets = self.registry.secrets().clone();
        let saved = std::fs::read_to_string(&self.account_file)
            .ok()
            .and_then(|sealed| secrets.open(ACCOUNT_CONTEXT, sealed.trim()))
            .and_then(|json| serde_json::from_str::<Saved>(&json).ok())
            .filter(|s| s.directory == self.config.directory);
        let account = match saved {
            Some(saved) => builder()?
                .from_credentials(saved.credentials)
                .await
                .map_err(|e| format!("restoring the ACME account: {e}"))?,
            None => {
                let contact = self.config.email.as_ref().map(|e| format!("mailto:{e}"));
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder()?
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.config.directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| format!("creating the ACME account: {e}"))?;
                let saved = Saved {
                    directory: self.config.directory.clone(),
                    credentials,
                };
                let json = serde_json::to_string(&saved).map_err(|e| e.to_string())?;
                let sealed = secrets.seal(ACCOUNT_CONTEXT, &json);
                crate::secrets::write_private_file(&self.account_file, sealed.as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", self.account_file.display()))?;
                tracing::info!(directory = %self.config.directory, "ACME account created");
                account
            }
        };
        self.account = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `host` and stores it; returns its
    /// `not_after`.
    async fn order(&mut self, host: &str) -> Result<i64, String> {
        let account = self.account().await?;
        let ids = [Identifier::Dns(host.to_string())];
        let mut order = account
            .new_order(&NewOrder::new(&ids))
            .await
            .map_err(|e| format!("new order: {e}"))?;
        let mut pending = Pending {
            challenges: self.challenges.clone(),
            tokens: Vec::new(),
        };
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(format!("authorization is {other:?}")),
                }
                let mut challenge = authz
                    .challenge(ChallengeType::Http01)
                    .ok_or("the CA offers no http-01 challenge")?;
                let answer = challenge.key_authorization().as_str().to_string();
                pending.add(challenge.token.clone(), answer);
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| format!("challenge: {e}"))?;
            }
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        drop(pending);
        if status != OrderStatus::Ready {
            let why = order
                .state()
                .error
                .as_ref()
                .map(|p| format!(": {}", p.detail.as_deref().unwrap_or("")))
                .unwrap_or_default();
            return Err(format!("order is {status:?}{why}"));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("certificate: {e}"))?;
        let cert = Certificate::from_pem(chain.as_bytes(), key_pem.as_bytes())
            .map_err(|e| format!("the issued certificate: {e}"))?;
        if !cert.covers(host) {
            return Err(format!("the issued certificate does not cover {host}"));
        }
        let not_after = cert.not_after;
        let record = CertificateRecord {
            host: host.to_string(),
            tenant: String::new(),
            source: "acme".into(),
            key_sealed: self
                .registry
                .secrets()
                .seal(&certificate_context(host), &key_pem),
            cert_pem: chain,
            sans: cert.names,
            not_before: cert.not_before,
            not_after: cert.not_after,
            issuer: cert.issuer,
            updated_at: now(),
        };
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || registry.put_acme_certificate(record))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("storing the certificate: {e}"))?;
        Ok(not_after)
    }
}

/// What the sealed account file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    directory: String,
    credentials: AccountCredentials,
}

/// What the account file's seal is bound to.
const ACCOUNT_CONTEXT: &str = "acme/account";

/// The challenge answers of one order, withdrawn when it is dropped.
struct Pending {
    challenges: Arc<Challenges>,
    tokens: Vec<String>,
}

impl Pending {
    fn add(&mut self, token: String, answer: String) {
        self.challenges.lock().insert(token.clone(), answer);
        self.tokens.push(token);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut map = self.challenges.lock();
        for t in &self.tokens {
            map.remove(t);
        }
    }
}
