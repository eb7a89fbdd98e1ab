//! Which certificates the index downloads trust: the bundled Mozilla roots plus the system's store (or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`), so that a network whose proxy re-signs TLS works where the OS trusts it.

use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;

/// The TLS configuration of every index request, built once per process; the error says why there is none.
pub(super) fn client_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG.get_or_init(build).clone()
}

fn build() -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let system = rustls_native_certs::load_native_certs();
    for error in &system.errors {
        tracing::debug!(%error, "a system certificate store could not be read");
    }
    let (added, unusable) = roots.add_parsable_certificates(system.certs);
    tracing::debug!(
        added,
        unusable,
        "system certificates trusted for index downloads"
    );
    let config =
        ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}
