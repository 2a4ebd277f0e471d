//! The API's TLS, done by the coordinator (rustls) rather than by tonic so that the certificate
//! can be replaced while serving: cert-manager renews certificates in place, and a server that
//! read its certificate once would serve the old one until it expired. Handshakes run beside
//! the accept loop, so a slow or silent client holds up no one else.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client gets this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("client CA: {0}")]
    ClientCa(String),
}

/// The certificate in force; every handshake asks it.
#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// The server side of the API's TLS: its certificate, and the CA of clients' certificates for
/// mutual TLS. Clones share the certificate in force.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    certificate: Arc<CurrentCertificate>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM certificate chain and the PEM private key that goes with its first certificate.
fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(format!("not a PEM private key: {e}")))?;
    // Parses the key and checks it against the certificate's public key.
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| TlsError::Certificate(format!("unusable with its key: {e}")))
}

impl ServerTls {
    /// From PEM: the server's certificate chain and key, and for mutual TLS the CA (one or more
    /// certificates) that clients' certificates must be signed by.
    pub fn new(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: Option<&[u8]>) -> Result<Self, TlsError> {
        let certificate = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified_key(cert_pem, key_pem)?))));
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| TlsError::ClientCa(format!("not PEM: {e}")))?;
                    roots.add(cert).map_err(|e| TlsError::ClientCa(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::ClientCa("no CERTIFICATE block".into()));
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                    .build()
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(certificate.clone());
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config), certificate })
    }

    /// Serves a renewed certificate and key from the next handshake on; connections already
    /// open keep theirs. A bad pair leaves the certificate in force as it was.
    pub fn replace_certificate(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<(), TlsError> {
        let renewed = Arc::new(certified_key(cert_pem, key_pem)?);
        *self.certificate.0.write().unwrap_or_else(PoisonError::into_inner) = renewed;
        Ok(())
    }

    /// The TLS connections made to `listener`, each handshake in a task of its own. Accepting
    /// stops when the stream is dropped.
    pub fn incoming(&self, listener: TcpListener) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let acceptor = TlsAcceptor::from(self.config.clone());
        let (connections, incoming) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = connections.closed() => return,
                    accepted = listener.accept() => accepted,
                };
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, connections) = (acceptor.clone(), connections.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = connections.send(Ok(tls)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(incoming)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed([name.to_string()]).unwrap();
        (cert.pem(), signing_key.serialize_pem())
    }

    fn served_name(tls: &ServerTls) -> Vec<u8> {
        tls.certificate.0.read().unwrap().cert[0].to_vec()
    }

    #[test]
    fn a_renewed_certificate_replaces_the_one_in_force_and_a_bad_one_is_refused() {
        let (cert, key) = self_signed("old.example");
        let tls = ServerTls::new(cert.as_bytes(), key.as_bytes(), None).unwrap();
        let handshakes_see = tls.clone();
        let (renewed, renewed_key) = self_signed("new.example");
        tls.replace_certificate(renewed.as_bytes(), renewed_key.as_bytes()).unwrap();
        let renewed_der = CertificateDer::from_pem_slice(renewed.as_bytes()).unwrap();
        assert_eq!(served_name(&handshakes_see), renewed_der.to_vec(), "every clone serves the renewed certificate");

        // A key that is not the certificate's, and a half-written file, change nothing.
        let error = tls.replace_certificate(cert.as_bytes(), renewed_key.as_bytes()).unwrap_err();
        assert!(matches!(error, TlsError::Certificate(ref m) if m.contains("unusable with its key")), "{error}");
        let error = tls.replace_certificate(&renewed.as_bytes()[..40], renewed_key.as_bytes()).unwrap_err();
        assert!(matches!(error, TlsError::Certificate(_)), "{error}");
        let error = tls.replace_certificate(renewed.as_bytes(), b"").unwrap_err();
        assert!(matches!(error, TlsError::Key(_)), "{error}");
        assert_eq!(served_name(&handshakes_see), renewed_der.to_vec());
    }

    #[tokio::test]
    async fn mutual_tls_hands_on_only_connections_whose_client_certificate_the_ca_signed() {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        use tokio_stream::StreamExt;
        use crate::test_pki::{Pem, ca_and_leaves};
        let (ca, leaves) = ca_and_leaves(&[(&["127.0.0.1"], ServerAuth), (&["client"], ClientAuth)]);
        let [server, client] = <[_; 2]>::try_from(leaves).ok().unwrap();
        let (_, mut strangers) = ca_and_leaves(&[(&["client"], ClientAuth)]);
        let tls = ServerTls::new(server.cert.as_bytes(), server.key.as_bytes(), Some(ca.as_bytes())).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = tls.incoming(listener);

        let connect = |identity: Option<Pem>| {
            let ca = ca.clone();
            async move {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap()).unwrap();
                let builder = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots);
                let config = match identity {
                    Some(Pem { cert, key }) => builder
                        .with_client_auth_cert(vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()], PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
                        .unwrap(),
                    None => builder.with_no_client_auth(),
                };
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
                // Kept open, so the server's answer is not a connection already gone.
                tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
            }
        };
        const WAIT: Duration = Duration::from_millis(1500);
        let _member = connect(Some(client)).await.expect("a client the CA signed");
        let accepted = tokio::time::timeout(WAIT, incoming.next()).await.expect("handed on").unwrap().unwrap();
        assert!(accepted.get_ref().1.peer_certificates().is_some_and(|certs| !certs.is_empty()));

        // TLS 1.3 clients finish before the server has checked them, so watch the server side.
        let _anonymous = connect(None).await;
        let _stranger = connect(strangers.pop()).await;
        assert!(tokio::time::timeout(WAIT, incoming.next()).await.is_err(), "no connection without a certificate the CA signed is handed on");
    }

    #[test]
    fn a_client_ca_without_certificates_is_refused() {
        let (cert, key) = self_signed("localhost");
        let error = ServerTls::new(cert.as_bytes(), key.as_bytes(), Some(b"no PEM here")).unwrap_err();
        assert!(matches!(error, TlsError::ClientCa(_)), "{error}");
        assert!(ServerTls::new(cert.as_bytes(), key.as_bytes(), Some(cert.as_bytes())).is_ok());
    }
}
