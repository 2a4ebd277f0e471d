//! Certificates for tests: a CA and leaf certificates it signed, made with rcgen. Crates whose
//! tests need them include this file from their root (`#[cfg(test)] #[path = ...] mod`), with
//! rcgen as a dev-dependency.

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A PEM certificate and its PEM private key.
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A new CA's PEM certificate and, for each `(names, usage)`, a certificate it signed for those
/// names (DNS names or IP addresses) and that use.
pub fn ca_and_leaves(leaves: &[(&[&str], ExtendedKeyUsagePurpose)]) -> (String, Vec<Pem>) {
    // Distinct subjects: a leaf named like its CA would read as self-signed.
    let named = |names: Vec<String>, name: &str| {
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let mut ca_params = named(Vec::new(), "vidfarm test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaves = leaves
        .iter()
        .map(|(names, usage)| {
            let mut params = named(names.iter().map(|n| n.to_string()).collect(), &format!("vidfarm test {usage:?}"));
            params.extended_key_usages = vec![usage.clone()];
            let key = KeyPair::generate().unwrap();
            Pem { cert: params.signed_by(&key, &issuer).unwrap().pem(), key: key.serialize_pem() }
        })
        .collect();
    (ca, leaves)
}
