//! A certificate authority made on the spot and the certificates it issues: the throwaway PKI of
//! local clusters, tests and the demo (installs use [`crate::lifecycle`] or cert-manager).

use crate::CertError;

/// What a leaf certificate is for.
pub enum Usage<'a> {
    /// A TLS server answering to these DNS names or IP addresses.
    Server(&'a [String]),
    /// A TLS client; Kubernetes reads the user from the CN and a group from the O.
    Client,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A self-signed CA able to sign leaf certificates.
pub struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    cert_pem: String,
}

impl Authority {
    pub fn new(common_name: &str) -> Result<Self, CertError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: rcgen::Issuer::new(params, key),
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate with a fresh key, subject `CN=common_name[, O=organization]` (rcgen keeps
    /// one value per attribute, so one O).
    pub fn issue(
        &self,
        common_name: &str,
        organization: Option<&str>,
        usage: Usage<'_>,
    ) -> Result<Issued, CertError> {
        let (names, purpose) = match usage {
            Usage::Server(names) => (names.to_vec(), rcgen::ExtendedKeyUsagePurpose::ServerAuth),
            Usage::Client => (Vec::new(), rcgen::ExtendedKeyUsagePurpose::ClientAuth),
        };
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        if let Some(organization) = organization {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, organization);
        }
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A bare signing key pair (PKCS#8 private key, SPKI public key, PEM), e.g. for service-account
/// tokens.
pub fn key_pair() -> Result<(String, String), CertError> {
    let key = rcgen::KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, UnixTime};

    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn client_certificates_carry_user_and_group_and_chain_to_their_authority() {
        let ca = Authority::new("test CA").unwrap();
        let node = ca
            .issue("system:node:n1", Some("system:nodes"), Usage::Client)
            .unwrap();
        let cert = der(&node.cert_pem);
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let subject = parsed.subject();
        let cn = subject.iter_common_name().next().unwrap().as_str().unwrap();
        let o = subject
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!((cn, o), ("system:node:n1", "system:nodes"));

        let mut roots = RootCertStore::empty();
        roots.add(der(ca.cert_pem())).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        assert!(
            verifier
                .verify_client_cert(&cert, &[], UnixTime::now())
                .is_ok()
        );

        let other = Authority::new("other CA").unwrap();
        let stranger = other.issue("admin", None, Usage::Client).unwrap();
        assert!(
            verifier
                .verify_client_cert(&der(&stranger.cert_pem), &[], UnixTime::now())
                .is_err()
        );
        // A serving certificate is no client identity.
        let server = ca
            .issue("localhost", None, Usage::Server(&["localhost".into()]))
            .unwrap();
        assert!(
            verifier
                .verify_client_cert(&der(&server.cert_pem), &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn key_pairs_are_pem_pkcs8_and_spki() {
        let (private, public) = key_pair().unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(public.starts_with("-----BEGIN PUBLIC KEY-----"));
        let reloaded = rcgen::KeyPair::from_pem(&private).unwrap();
        assert_eq!(reloaded.public_key_pem(), public);
    }
}
