//! Keys and CSRs (rcgen), PEM/X.509 parsing and chain checks, and a small CA for the simulators.
//!
//! Everything here is pure (no I/O, the clock is a parameter) so callers can test decisions
//! without a tenant. Signature checks use x509-parser's `verify-aws` feature, which rcgen's
//! `aws_lc_rs` feature turns on: aws-lc-rs stays the only crypto provider.

pub mod ca;
mod der;
pub mod jwk;
mod keys;
mod name;
#[cfg(test)]
mod tests;
mod x509;

pub use keys::{
    KeyAlgorithm, check_key_matches, generate_csr, generate_key, private_key_public_der,
    private_key_to_pkcs8_pem, reject_wildcards, same_public_key,
};
pub use x509::{check_chain, csr_info, fingerprint_of_leaf, parse_chain};

/// What the operator needs to know about one certificate of a chain.
#[derive(Debug, Clone, PartialEq)]
pub struct CertInfo {
    /// RFC 4514 style, most specific attribute first, e.g. `CN=login.example.com,O=Acme Inc`.
    pub subject: String,
    pub issuer: String,
    /// DNS names, and IP addresses as text.
    pub subject_alternative_names: Vec<String>,
    pub not_before: jiff::Timestamp,
    pub not_after: jiff::Timestamp,
    /// Lowercase hex.
    pub serial_number: String,
    /// `sha256:` followed by the lowercase hex SHA-256 of the certificate's DER.
    pub fingerprint: String,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
    pub is_ca: bool,
}

/// What a certificate signing request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct CsrInfo {
    pub subject: String,
    pub subject_alternative_names: Vec<String>,
    /// SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

/// Subject and SANs for [`generate_csr`]. Empty fields are left out of the CSR.
#[derive(Default, Clone, Debug)]
pub struct CsrSubject {
    pub common_name: Option<String>,
    pub organization: Option<String>,
    pub organizational_unit: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub email: Option<String>,
    pub subject_alternative_names: Vec<String>,
}

/// Why a PEM, key, chain or CSR was refused. Messages never contain key material.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PkiError {
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    #[error("no CERTIFICATE block found")]
    NoCertificate,
    #[error("chain order is wrong: a CA certificate comes before the leaf")]
    LeafNotFirst,
    #[error("chain is broken between certificate {index} and the next one")]
    ChainBroken { index: usize },
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    #[error("the private key does not match the leaf certificate")]
    KeyMismatch,
    #[error("certificate expired at {not_after}")]
    Expired { not_after: String },
    #[error("certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },
    #[error("wildcard names are not accepted: {0}")]
    WildcardName(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl PkiError {
    /// CamelCase reason for Kubernetes conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            PkiError::InvalidPem(_) => "InvalidPem",
            PkiError::NoCertificate => "NoCertificate",
            PkiError::LeafNotFirst => "LeafNotFirst",
            PkiError::ChainBroken { .. } => "ChainBroken",
            PkiError::InvalidKey(_) => "InvalidKey",
            PkiError::KeyMismatch => "KeyMismatch",
            PkiError::Expired { .. } => "CertificateExpired",
            PkiError::NotYetValid { .. } => "CertificateNotYetValid",
            PkiError::WildcardName(_) => "WildcardName",
            PkiError::Unsupported(_) => "Unsupported",
        }
    }
}
