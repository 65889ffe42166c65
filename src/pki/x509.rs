//! Certificate chains and CSRs: parsing and the checks the tenant does not do for us.

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use super::name::{format_name, hex, san_text};
use super::{CertInfo, CsrInfo, PkiError};

/// Every PEM block in `text`, in order. A block that cannot be decoded is an error rather than
/// skipped: silently dropping an intermediate would produce a chain that looks broken.
pub(crate) fn pem_blocks(text: &str) -> Result<Vec<Pem>, PkiError> {
    Pem::iter_from_buffer(text.as_bytes())
        .map(|block| block.map_err(|e| PkiError::InvalidPem(e.to_string())))
        .collect()
}

fn certificate_ders(pem: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let ders: Vec<Vec<u8>> = pem_blocks(pem)?
        .into_iter()
        .filter(|block| block.label == "CERTIFICATE")
        .map(|block| block.contents)
        .collect();
    if ders.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(ders)
}

fn parse_der(der: &[u8], index: usize) -> Result<X509Certificate<'_>, PkiError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(PkiError::InvalidPem(format!(
            "certificate {index} has trailing data"
        ))),
        Err(e) => Err(PkiError::InvalidPem(format!("certificate {index}: {e}"))),
    }
}

fn timestamp(seconds: i64) -> Result<jiff::Timestamp, PkiError> {
    jiff::Timestamp::from_second(seconds)
        .map_err(|_| PkiError::Unsupported(format!("validity time {seconds} out of range")))
}

fn cert_info(der: &[u8], cert: &X509Certificate<'_>) -> Result<CertInfo, PkiError> {
    let subject_alternative_names = match cert.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(san_text)
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(PkiError::InvalidPem(format!("subjectAltName: {e}"))),
    };
    Ok(CertInfo {
        subject: format_name(cert.subject()),
        issuer: format_name(cert.issuer()),
        subject_alternative_names,
        not_before: timestamp(cert.validity().not_before.timestamp())?,
        not_after: timestamp(cert.validity().not_after.timestamp())?,
        serial_number: serial_hex(cert.raw_serial()),
        fingerprint: fingerprint(der),
        public_key_der: cert.public_key().raw.to_vec(),
        is_ca: cert.is_ca(),
    })
}

/// Lowercase hex of the serial without DER's sign-padding zero bytes.
fn serial_hex(raw: &[u8]) -> String {
    let hex = hex(super::der::unsigned_magnitude(raw));
    if hex.is_empty() { "00".to_owned() } else { hex }
}

fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(der)))
}

/// Every CERTIFICATE block of `pem`, in order. Other blocks (a key pasted along) are ignored.
pub fn parse_chain(pem: &str) -> Result<Vec<CertInfo>, PkiError> {
    let ders = certificate_ders(pem)?;
    ders.iter()
        .enumerate()
        .map(|(i, der)| cert_info(der, &parse_der(der, i)?))
        .collect()
}

/// A leaf-first chain, each link checked by name and signature, and a leaf valid at `now`.
/// No trust anchor is required: the tenant does no trust check either, and a self-signed or a
/// lone leaf certificate is a legitimate upload.
pub fn check_chain(pem: &str, now: jiff::Timestamp) -> Result<Vec<CertInfo>, PkiError> {
    let ders = certificate_ders(pem)?;
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, der)| parse_der(der, i))
        .collect::<Result<Vec<_>, _>>()?;
    let infos = ders
        .iter()
        .zip(&certs)
        .map(|(der, cert)| cert_info(der, cert))
        .collect::<Result<Vec<_>, _>>()?;

    check_order(&infos)?;
    for (index, pair) in certs.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        let names_link = child.issuer().as_raw() == parent.subject().as_raw();
        if !names_link || child.verify_signature(Some(parent.public_key())).is_err() {
            return Err(PkiError::ChainBroken { index });
        }
    }
    check_validity(&infos[0], now)?;
    Ok(infos)
}

/// A CA certificate before a non-CA one means the chain is upside down (or mixed up).
fn check_order(infos: &[CertInfo]) -> Result<(), PkiError> {
    let first_ca = infos.iter().position(|c| c.is_ca);
    let last_leaf = infos.iter().rposition(|c| !c.is_ca);
    match (first_ca, last_leaf) {
        (Some(ca), Some(leaf)) if ca < leaf => Err(PkiError::LeafNotFirst),
        _ => Ok(()),
    }
}

fn check_validity(leaf: &CertInfo, now: jiff::Timestamp) -> Result<(), PkiError> {
    if now > leaf.not_after {
        return Err(PkiError::Expired {
            not_after: leaf.not_after.to_string(),
        });
    }
    if now < leaf.not_before {
        return Err(PkiError::NotYetValid {
            not_before: leaf.not_before.to_string(),
        });
    }
    Ok(())
}

/// The fingerprint of the first certificate: our handle on a tenant certificate, since the
/// tenant never returns the PEM.
pub fn fingerprint_of_leaf(chain_pem: &str) -> Result<String, PkiError> {
    let ders = certificate_ders(chain_pem)?;
    parse_der(&ders[0], 0)?;
    Ok(fingerprint(&ders[0]))
}

/// Subject, SANs and key of a CSR whose self-signature verifies.
pub fn csr_info(csr_pem: &str) -> Result<CsrInfo, PkiError> {
    let block = pem_blocks(csr_pem)?
        .into_iter()
        .find(|b| b.label == "CERTIFICATE REQUEST" || b.label == "NEW CERTIFICATE REQUEST")
        .ok_or_else(|| PkiError::InvalidPem("no CERTIFICATE REQUEST block".to_owned()))?;
    let (_, csr) = X509CertificationRequest::from_der(&block.contents)
        .map_err(|e| PkiError::InvalidPem(format!("certificate request: {e}")))?;
    csr.verify_signature().map_err(|_| {
        PkiError::InvalidPem("certificate request signature does not verify".into())
    })?;
    let subject_alternative_names = csr
        .requested_extensions()
        .into_iter()
        .flatten()
        .filter_map(|ext| match ext {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter().filter_map(san_text))
        .collect();
    let info = &csr.certification_request_info;
    Ok(CsrInfo {
        subject: format_name(&info.subject),
        subject_alternative_names,
        public_key_der: info.subject_pki.raw.to_vec(),
    })
}
