//! TLS for sticky services: termination of client connections
//! (`tls = { cert, key }`) and hops between members (`backend_tls`), with
//! rustls and its `ring` provider.
//!
//! A sticky service reads its cookie, so it must see the request in clear:
//! it terminates TLS itself. Every member of the service serves one name,
//! so every member holds the same certificate chain and key (the `cert`
//! and `key` PEM files, read once at start).
//!
//! Which listener speaks what:
//! - every VIP listener of a service with `tls` speaks TLS only (ALPN
//!   `http/1.1`, TLS 1.2 and 1.3);
//! - the listener on the host's dedicated address, where hops and health
//!   probes from other members arrive, speaks TLS when `backend_tls` is
//!   set, plain HTTP otherwise.
//!
//! How members verify each other on a TLS hop: the member that forwards
//! pins the service's own certificate. The owner must present exactly the
//! first certificate of `cert` (byte for byte) and prove it holds its key
//! (the handshake signature is checked with the ring provider's
//! algorithms). The name in the certificate is not checked: a hop goes to
//! a dedicated address, which the service's certificate does not name.
//! This needs no CA and no extra file, and a member holding another
//! certificate (or an attacker on the back-end network) is refused. Every
//! hop also carries the member header, authenticated with the cluster key,
//! so the owner knows the request came from a member. `backend_tls`
//! applies to every hop, `ocf` members included: they must present the
//! same certificate.
//!
//! Start-up errors name the file and what is wrong with it: unreadable,
//! no certificate, no private key, or a key that does not match the
//! certificate. A client whose handshake fails (or takes longer than the
//! service's idle timeout) is dropped and counted (`tls_handshake` in the
//! service's `errors`).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use shoal_config::TlsFiles;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The only application protocol spoken over TLS.
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// A sticky service's TLS: the acceptor of its client (and, with
/// `backend_tls`, hop) connections, and the connector of its hops.
#[derive(Clone)]
pub struct ServiceTls {
    /// Terminates TLS on the service's listeners.
    pub acceptor: TlsAcceptor,
    /// With `backend_tls`: opens hops to other members.
    pub connector: Option<TlsConnector>,
}

impl std::fmt::Debug for ServiceTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceTls")
            .field("backend", &self.connector.is_some())
            .finish()
    }
}

/// The ring provider. rustls marks it deprecated because it has no
/// post-quantum key exchange (only aws-lc-rs does, and that needs cmake
/// and clang to build, which shoal does not require): classic ECDHE
/// (X25519, P-256, P-384) is what the service offers.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain in `path` (PEM), leaf first.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow!("tls.cert {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("tls.cert {}: {e}", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "tls.cert {}: no PEM certificate (BEGIN CERTIFICATE) in the file",
            path.display()
        );
    }
    Ok(chain)
}

/// The private key in `path` (PEM: PKCS#8, PKCS#1 or SEC1).
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "tls.key {}: no PEM private key (BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY) in the file",
            path.display()
        ),
        e => anyhow!("tls.key {}: {e}", path.display()),
    })
}

impl ServiceTls {
    /// Reads `files` and builds the service's TLS; `backend` adds the
    /// hops' connector. Errors name the file and what is wrong.
    pub fn load(files: &TlsFiles, backend: bool) -> Result<Self> {
        let provider = provider();
        let chain = read_chain(&files.cert)?;
        let key = read_key(&files.key)?;
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| anyhow!("tls.key {}: not a usable key: {e}", files.key.display()))?;
        let certified = CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| {
            anyhow!(
                "tls.key {} does not match tls.cert {}: {e}",
                files.key.display(),
                files.cert.display()
            )
        })?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key)
            .map_err(|e| anyhow!("tls.cert {}: {e}", files.cert.display()))?;
        server.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        let connector = if backend {
            let leaf = chain
                .first()
                .cloned()
                .ok_or_else(|| anyhow!("tls.cert: empty chain"))?;
            let mut client = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SameCertificate {
                    leaf,
                    provider: provider.clone(),
                }))
                .with_no_client_auth();
            client.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
            Some(TlsConnector::from(Arc::new(client)))
        } else {
            None
        };
        Ok(ServiceTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector,
        })
    }
}

/// The name a hop's connector is given: the owner's address (no SNI is
/// sent for an address; [`SameCertificate`] does not check names).
pub(super) fn hop_name(addr: SocketAddr) -> ServerName<'static> {
    ServerName::IpAddress(addr.ip().into())
}

/// Accepts a server that presents exactly the service's own certificate
/// and signs the handshake with its key (see the module docs).
#[derive(Debug)]
struct SameCertificate {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SameCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
