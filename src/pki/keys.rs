//! Private keys (any common PEM form in, PKCS#8 out) and CSRs.

use std::net::IpAddr;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING, ECDSA_P521_SHA512_ASN1_SIGNING,
    EcdsaKeyPair,
};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, PublicKeyData, RsaKeySize,
    SanType,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::x509::{parse_chain, pem_blocks};
use super::{CsrSubject, PkiError};

/// Key types the operator generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

/// The unencrypted PKCS#8 DER of the first private key in `key_pem`, converted from PKCS#1
/// (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`) when needed.
fn pkcs8_der(key_pem: &str) -> Result<Vec<u8>, PkiError> {
    let block = pem_blocks(key_pem)
        .map_err(|_| PkiError::InvalidKey("PEM does not decode".to_owned()))?
        .into_iter()
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| PkiError::InvalidKey("no PRIVATE KEY block".to_owned()))?;
    let der = match block.label.as_str() {
        "PRIVATE KEY" => block.contents,
        "RSA PRIVATE KEY" => aws_lc_rs::rsa::KeyPair::from_der(&block.contents)
            .ok()
            .and_then(|k| k.as_der().ok())
            .map(|d| d.as_ref().to_vec())
            .ok_or_else(|| PkiError::InvalidKey("RSA PRIVATE KEY does not parse".to_owned()))?,
        "EC PRIVATE KEY" => sec1_to_pkcs8(&block.contents)?,
        "ENCRYPTED PRIVATE KEY" => {
            return Err(PkiError::Unsupported(
                "encrypted private keys (the tenant wants an unencrypted PKCS#8 key)".to_owned(),
            ));
        }
        other => return Err(PkiError::Unsupported(format!("{other} keys"))),
    };
    // Parsing proves the key is usable and of a type rcgen can sign with.
    KeyPair::try_from(der.as_slice())
        .map_err(|_| PkiError::InvalidKey("PKCS#8 key does not parse".to_owned()))?;
    Ok(der)
}

fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, PkiError> {
    [
        &ECDSA_P256_SHA256_ASN1_SIGNING,
        &ECDSA_P384_SHA384_ASN1_SIGNING,
        &ECDSA_P521_SHA512_ASN1_SIGNING,
    ]
    .into_iter()
    .find_map(|alg| EcdsaKeyPair::from_private_key_der(alg, sec1).ok())
    .and_then(|key| key.to_pkcs8v1().ok())
    .map(|doc| doc.as_ref().to_vec())
    .ok_or_else(|| PkiError::InvalidKey("EC PRIVATE KEY does not parse".to_owned()))
}

fn key_pair(key_pem: &str) -> Result<KeyPair, PkiError> {
    KeyPair::try_from(pkcs8_der(key_pem)?)
        .map_err(|_| PkiError::InvalidKey("PKCS#8 key does not parse".to_owned()))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// SubjectPublicKeyInfo DER of a private key (PKCS#8, PKCS#1 RSA or SEC1 EC PEM).
pub fn private_key_public_der(key_pem: &str) -> Result<Vec<u8>, PkiError> {
    Ok(key_pair(key_pem)?.subject_public_key_info())
}

/// The key as unencrypted PKCS#8 PEM, the only form AIC accepts.
pub fn private_key_to_pkcs8_pem(key_pem: &str) -> Result<String, PkiError> {
    Ok(pem_encode("PRIVATE KEY", &pkcs8_der(key_pem)?))
}

/// Algorithm and key bits of an SPKI. Comparing these rather than whole DER tolerates encoders
/// that differ in optional details (such as an absent or NULL RSA parameter).
fn key_identity(spki_der: &[u8]) -> Option<(String, Vec<u8>)> {
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    Some((
        spki.algorithm.algorithm.to_id_string(),
        spki.subject_public_key.data.to_vec(),
    ))
}

/// Whether two SubjectPublicKeyInfo DERs hold the same key (algorithm and key bits).
pub fn same_public_key(a: &[u8], b: &[u8]) -> bool {
    matches!((key_identity(a), key_identity(b)), (Some(x), Some(y)) if x == y)
}

/// `Ok` when the chain's first certificate carries the public half of `key_pem`.
pub fn check_key_matches(chain_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    let chain = parse_chain(chain_pem)?;
    let key = private_key_public_der(key_pem)?;
    if same_public_key(&chain[0].public_key_der, &key) {
        Ok(())
    } else {
        Err(PkiError::KeyMismatch)
    }
}

/// A fresh key as PKCS#8 PEM.
pub fn generate_key(alg: KeyAlgorithm) -> Result<String, PkiError> {
    let generated = match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
        }
        KeyAlgorithm::Rsa4096 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
        }
    };
    generated
        .map(|k| k.serialize_pem())
        .map_err(|e| PkiError::Unsupported(format!("key generation failed: {e}")))
}

/// Wildcard names are refused by AIC, so they are refused before anything reaches a tenant.
pub fn reject_wildcards<S: AsRef<str>>(names: &[S]) -> Result<(), PkiError> {
    match names.iter().find(|n| n.as_ref().contains('*')) {
        Some(name) => Err(PkiError::WildcardName(name.as_ref().to_owned())),
        None => Ok(()),
    }
}

pub(crate) fn san_type(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|_| PkiError::Unsupported(format!("subject alternative name {name:?}")))
}

/// Attributes in the conventional encoding order (country first), so that the RFC 4514 form
/// reads most-specific first: `CN=…,OU=…,O=…,L=…,ST=…,C=…`.
fn distinguished_name(subject: &CsrSubject) -> Result<DistinguishedName, PkiError> {
    let mut dn = DistinguishedName::new();
    let fields = [
        (DnType::CountryName, &subject.country),
        (DnType::StateOrProvinceName, &subject.state),
        (DnType::LocalityName, &subject.city),
        (DnType::OrganizationName, &subject.organization),
        (DnType::OrganizationalUnitName, &subject.organizational_unit),
        (DnType::CommonName, &subject.common_name),
    ];
    for (ty, value) in fields {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            dn.push(ty, value);
        }
    }
    if let Some(email) = subject.email.as_deref().filter(|v| !v.is_empty()) {
        let value = email
            .try_into()
            .map_err(|_| PkiError::Unsupported(format!("email {email:?} is not ASCII")))?;
        dn.push(
            DnType::CustomDnType(vec![1, 2, 840, 113_549, 1, 9, 1]),
            DnValue::Ia5String(value),
        );
    }
    Ok(dn)
}

/// A CSR (PEM) for `key_pem` with the given subject and SANs. Wildcards are refused.
pub fn generate_csr(key_pem: &str, subject: &CsrSubject) -> Result<String, PkiError> {
    reject_wildcards(&subject.subject_alternative_names)?;
    reject_wildcards(subject.common_name.as_slice())?;
    let key = key_pair(key_pem)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = distinguished_name(subject)?;
    params.subject_alt_names = subject
        .subject_alternative_names
        .iter()
        .map(|n| san_type(n))
        .collect::<Result<_, _>>()?;
    params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|e| PkiError::Unsupported(format!("CSR generation failed: {e}")))
}

#[cfg(test)]
pub(crate) mod tests_support {
    pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
        super::pem_encode(label, der)
    }
}
