//! The API's TLS, done by the coordinator (rustls) rather than by tonic so that its files can be
//! replaced while serving: cert-manager renews certificates in place, and a server that read
//! its certificate once would serve the old one until it expired. Handshakes run beside the
//! accept loop, so a slow or silent client holds up no one else.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
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

/// The server side of the API's TLS: its certificate and key, and for mutual TLS the CA of
/// clients' certificates. Clones share the configuration in force, which `replace` swaps.
#[derive(Clone, Debug)]
pub struct ServerTls {
    config: Arc<RwLock<Arc<rustls::ServerConfig>>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// From PEM: a certificate chain, the private key of its first certificate, and the CA (one or
/// more certificates) that must have signed clients' certificates.
fn server_config(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: Option<&[u8]>) -> Result<rustls::ServerConfig, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(format!("not a PEM private key: {e}")))?;
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
    // Parses the key and checks it against the certificate's public key.
    let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::Certificate(format!("unusable with its key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl ServerTls {
    /// From PEM: the server's certificate chain and key, and for mutual TLS the CA that
    /// clients' certificates must be signed by.
    pub fn new(cert_pem: &[u8], key_pem: &[u8], client_ca_pem: Option<&[u8]>) -> Result<Self, TlsError> {
        Ok(Self { config: Arc::new(RwLock::new(Arc::new(server_config(cert_pem, key_pem, client_ca_pem)?))) })
    }

    /// Serves renewed files from the next handshake on; connections already open keep what
    /// they agreed. Files that do not make a working configuration (a key that is not the
    /// certificate's, a half-written file) leave the one in force as it was.
    pub fn replace(&self, cert_pem: &[u8], key_pem: &[u8], client_ca_pem: Option<&[u8]>) -> Result<(), TlsError> {
        let renewed = Arc::new(server_config(cert_pem, key_pem, client_ca_pem)?);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = renewed;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.config.read().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// The TLS connections made to `listener`, each handshake in a task of its own. Accepting
    /// stops when the stream is dropped.
    pub fn incoming(&self, listener: TcpListener) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
        let tls = self.clone();
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
                let (acceptor, connections) = (tls.acceptor(), connections.clone());
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
    use crate::test_pki::{Pem, ca_and_leaves};
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;

    /// How long a connection that passed its handshake may take to be handed on.
    const WAIT: Duration = Duration::from_millis(1500);

    /// A CA and a server certificate it signed for 127.0.0.1.
    fn server_pki() -> (String, Pem) {
        let (ca, mut leaves) = ca_and_leaves(&[(&["127.0.0.1"], ServerAuth)]);
        (ca, leaves.remove(0))
    }

    /// A CA and a client certificate it signed.
    fn client_pki() -> (String, Pem) {
        let (ca, mut leaves) = ca_and_leaves(&[(&["client"], ClientAuth)]);
        (ca, leaves.remove(0))
    }

    struct Server {
        addr: std::net::SocketAddr,
        incoming: ReceiverStream<std::io::Result<TlsStream<TcpStream>>>,
    }

    impl Server {
        async fn start(tls: &ServerTls) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            Self { addr: listener.local_addr().unwrap(), incoming: tls.incoming(listener) }
        }

        /// Connects trusting `server_ca`, presenting `identity`; whether the server hands the
        /// connection on. (TLS 1.3 clients finish before the server has checked them, so
        /// the server side tells.)
        async fn admits(&mut self, server_ca: &str, identity: Option<&Pem>) -> bool {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from_pem_slice(server_ca.as_bytes()).unwrap()).unwrap();
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
            let tcp = TcpStream::connect(self.addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
            // Held open until the server has answered, so a refusal is not a connection gone.
            let Ok(_client) = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await else {
                return false;
            };
            match tokio::time::timeout(WAIT, self.incoming.next()).await {
                Ok(Some(Ok(accepted))) => {
                    assert_eq!(accepted.get_ref().1.peer_certificates().is_some(), identity.is_some());
                    true
                }
                _ => false,
            }
        }
    }

    #[tokio::test]
    async fn renewed_files_are_served_to_new_connections_and_bad_ones_are_refused() {
        let (ca, server) = server_pki();
        let tls = ServerTls::new(server.cert.as_bytes(), server.key.as_bytes(), None).unwrap();
        let mut listening = Server::start(&tls).await;
        assert!(listening.admits(&ca, None).await);

        let (renewed_ca, renewed) = server_pki();
        tls.replace(renewed.cert.as_bytes(), renewed.key.as_bytes(), None).unwrap();
        assert!(listening.admits(&renewed_ca, None).await, "the renewed certificate is served");
        assert!(!listening.admits(&ca, None).await, "the old one is not");

        // A key that is not the certificate's, a half-written file, no key: nothing changes.
        let error = tls.replace(server.cert.as_bytes(), renewed.key.as_bytes(), None).unwrap_err();
        assert!(matches!(error, TlsError::Certificate(ref m) if m.contains("unusable with its key")), "{error}");
        let error = tls.replace(&renewed.cert.as_bytes()[..40], renewed.key.as_bytes(), None).unwrap_err();
        assert!(matches!(error, TlsError::Certificate(_)), "{error}");
        let error = tls.replace(renewed.cert.as_bytes(), b"", None).unwrap_err();
        assert!(matches!(error, TlsError::Key(_)), "{error}");
        let error = tls.replace(renewed.cert.as_bytes(), renewed.key.as_bytes(), Some(b"no PEM here")).unwrap_err();
        assert!(matches!(error, TlsError::ClientCa(_)), "{error}");
        assert!(listening.admits(&renewed_ca, None).await, "still the renewed certificate, still no client certificate asked");
    }

    #[tokio::test]
    async fn mutual_tls_admits_only_clients_the_ca_signed_and_follows_a_new_ca() {
        let (server_ca, server) = server_pki();
        let (client_ca, member) = client_pki();
        let (other_ca, stranger) = client_pki();
        let tls = ServerTls::new(server.cert.as_bytes(), server.key.as_bytes(), Some(client_ca.as_bytes())).unwrap();
        let mut listening = Server::start(&tls).await;
        assert!(listening.admits(&server_ca, Some(&member)).await, "a client the CA signed");
        assert!(!listening.admits(&server_ca, None).await, "no client certificate");
        assert!(!listening.admits(&server_ca, Some(&stranger)).await, "a certificate another CA signed");

        tls.replace(server.cert.as_bytes(), server.key.as_bytes(), Some(other_ca.as_bytes())).unwrap();
        assert!(listening.admits(&server_ca, Some(&stranger)).await, "the new CA's clients");
        assert!(!listening.admits(&server_ca, Some(&member)).await, "not the old CA's");
    }
}
