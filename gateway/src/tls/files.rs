//! The operator's certificate files (`[[tls.certificates]]`,
//! `[tls.default_cert]`): read at start (a bad file refuses the start),
//! then polled every 2 s and re-read on SIGHUP. A change applies to new
//! handshakes; open connections keep the certificate they began with. A
//! change that does not load (a key written before its certificate) keeps
//! the previous certificates and is logged; the next change is tried anew.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::cert::Certificate;
use super::sni::{Layer, Resolver, Source};

/// A certificate chain file and its key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// PEM: the certificate, then its intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key.
    pub key_file: PathBuf,
}

/// How often the files are looked at.
pub const POLL: Duration = Duration::from_secs(2);

/// What identifies a file's version without reading it.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// The files of the operator's certificates, loaded into a [`Resolver`].
pub struct FileCerts {
    certificates: Vec<CertFiles>,
    default: Option<CertFiles>,
    resolver: Arc<Resolver>,
    stamps: Vec<Stamp>,
}

impl FileCerts {
    /// Loads every file into `resolver`; the error names the file.
    pub fn load(
        certificates: Vec<CertFiles>,
        default: Option<CertFiles>,
        resolver: Arc<Resolver>,
    ) -> Result<FileCerts, String> {
        let mut files = FileCerts {
            certificates,
            default,
            resolver,
            stamps: Vec::new(),
        };
        files.stamps = files.stamps();
        files.apply()?;
        Ok(files)
    }

    fn all(&self) -> impl Iterator<Item = &CertFiles> {
        self.certificates.iter().chain(&self.default)
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.all()
            .flat_map(|f| [stamp(&f.cert_file), stamp(&f.key_file)])
            .collect()
    }

    fn read(files: &CertFiles) -> Result<Certificate, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let (cert, key) = (read(&files.cert_file)?, read(&files.key_file)?);
        let c = Certificate::from_pem(&cert, &key)
            .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
        if c.expired_at(super::cert::unix_now()) {
            tracing::warn!(file = %files.cert_file.display(), names = ?c.names, "TLS certificate is outside its validity period");
        }
        Ok(c)
    }

    /// Reads every file and, if all load, swaps them in.
    fn apply(&self) -> Result<(), String> {
        let certs = self
            .certificates
            .iter()
            .map(Self::read)
            .collect::<Result<Vec<_>, _>>()?;
        let default = self.default.as_ref().map(Self::read).transpose()?;
        self.resolver.set(Source::File, Layer::new(&certs));
        self.resolver.set_default(default.map(|c| c.key));
        Ok(())
    }

    /// Re-reads the files when they changed (or always, `forced`).
    fn reload(&mut self, forced: bool) {
        let now = self.stamps();
        if !forced && now == self.stamps {
            return;
        }
        self.stamps = now;
        match self.apply() {
            Ok(()) => tracing::info!(files = self.stamps.len(), "TLS certificates reloaded"),
            Err(e) => {
                tracing::warn!(error = %e, "TLS certificates not reloaded; the previous ones stay")
            }
        }
    }

    /// Polls the files, and re-reads them on SIGHUP, until `stop`.
    pub async fn watch(mut self, mut stop: watch::Receiver<bool>) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { hup.as_mut()?.recv().await } => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            // Reading and parsing PEM is quick, but it is file I/O.
            self = match tokio::task::spawn_blocking(move || {
                self.reload(forced);
                self
            })
            .await
            {
                Ok(s) => s,
                Err(_) => return,
            };
        }
    }
}
