//! Mutual TLS between nodes. When a node is given the cluster's CA certificate and its
//! own certificate and key, every connection it opens to another node (Raft, shards,
//! passed-on uploads) presents its certificate and accepts only a peer whose
//! certificate the CA signed for the address dialled, and its listener accepts only
//! clients with such a certificate. The setting is per process: a process is one node
//! with one identity.

use std::sync::OnceLock;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The PEM text of the cluster's CA certificate and of this node's certificate chain
/// and private key.
#[derive(Clone)]
pub struct ClusterTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Why cluster TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cluster TLS is already set up in this process")]
    AlreadySet,
    #[error("{what} is not PEM text of the expected kind")]
    NotPem { what: &'static str },
}

static CLIENT: OnceLock<ClientTlsConfig> = OnceLock::new();

fn check_pem(what: &'static str, pem: &[u8], marker: &str) -> Result<(), TlsSetupError> {
    let text = std::str::from_utf8(pem).map_err(|_| TlsSetupError::NotPem { what })?;
    if !text.contains(&format!("-----BEGIN {marker}")) {
        return Err(TlsSetupError::NotPem { what });
    }
    Ok(())
}

impl ClusterTls {
    /// Makes every peer connection of this process use mutual TLS with this identity
    /// and returns the matching listener configuration. Once per process.
    pub fn install(&self) -> Result<ServerTlsConfig, TlsSetupError> {
        check_pem("the cluster CA certificate", &self.ca_pem, "CERTIFICATE")?;
        check_pem("the node certificate", &self.cert_pem, "CERTIFICATE")?;
        // PKCS#8 ("PRIVATE KEY"), SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY").
        if !String::from_utf8_lossy(&self.key_pem).contains("PRIVATE KEY-----") {
            return Err(TlsSetupError::NotPem {
                what: "the node key",
            });
        }
        let ca = Certificate::from_pem(&self.ca_pem);
        let identity = Identity::from_pem(&self.cert_pem, &self.key_pem);
        let client = ClientTlsConfig::new()
            .ca_certificate(ca.clone())
            .identity(identity.clone());
        CLIENT.set(client).map_err(|_| TlsSetupError::AlreadySet)?;
        Ok(ServerTlsConfig::new().identity(identity).client_ca_root(ca))
    }
}

/// The client side of cluster TLS, once [`ClusterTls::install`] ran.
pub(crate) fn client() -> Option<&'static ClientTlsConfig> {
    CLIENT.get()
}
