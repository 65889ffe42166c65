//! A small certificate authority for the simulators, the demo and tests. Not test-only: the
//! simulators ship in the binary. Keys live in memory only.

use std::fmt;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};

use super::keys::san_type;
use super::{KeyAlgorithm, PkiError, generate_key};

/// Root and intermediate validity: long enough for any demo or test run.
const CA_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;
/// Backdating absorbs clock skew between the simulators and their clients.
const CA_BACKDATE_SECS: i64 = 3600;

/// An issuing key and certificate, plus the certificates above it.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    chain_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Sets rcgen's validity from jiff timestamps without naming the `time` crate: the epoch plus or
/// minus a std Duration.
fn set_validity(
    params: &mut CertificateParams,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
) {
    let at = |ts: jiff::Timestamp| {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let secs = ts.as_second();
        let offset = Duration::from_secs(secs.unsigned_abs());
        if secs >= 0 {
            epoch + offset
        } else {
            epoch - offset
        }
    };
    params.not_before = at(not_before);
    params.not_after = at(not_after);
}

/// A random positive 128-bit serial (RFC 5280 wants them unpredictable and unique per CA).
fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes().to_vec();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep 16 bytes, positive, no leading zero
    SerialNumber::from(bytes)
}

fn rcgen_error(context: &str, e: rcgen::Error) -> PkiError {
    PkiError::Unsupported(format!("{context}: {e}"))
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    let now = jiff::Timestamp::now();
    let from = now - jiff::SignedDuration::from_secs(CA_BACKDATE_SECS);
    let until = now + jiff::SignedDuration::from_secs(CA_LIFETIME_SECS);
    set_validity(&mut params, from, until);
    params
}

/// Turns leaf parameters into an end-entity profile for `purpose`.
fn leaf_profile(
    params: &mut CertificateParams,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
    purpose: ExtendedKeyUsagePurpose,
) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(params, not_before, not_after);
}

impl Ca {
    /// A self-signed ECDSA P-256 root.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(|e| rcgen_error("CA key", e))?;
        let params = ca_params(common_name);
        let cert = params
            .self_signed(&key)
            .map_err(|e| rcgen_error("CA certificate", e))?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
            chain_pem: cert.pem(),
        })
    }

    /// An intermediate CA signed by this one; its chain includes this CA's chain.
    pub fn intermediate(&self, common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate().map_err(|e| rcgen_error("CA key", e))?;
        let mut params = ca_params(common_name);
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| rcgen_error("intermediate certificate", e))?;
        let cert_pem = cert.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            cert_pem,
        })
    }

    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// This CA's certificate followed by its issuers', up to the root.
    pub fn chain_pem(&self) -> String {
        self.chain_pem.clone()
    }

    /// Signs a CSR as a server certificate, keeping its subject and SANs. Returns the leaf
    /// followed by [`Ca::chain_pem`].
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
    ) -> Result<String, PkiError> {
        self.sign_csr_naming(csr_pem, None, not_before, not_after)
    }

    /// Signs a CSR for the names given rather than those it asks for (subject CN and SANs), as a
    /// CA policy that drops or rewrites names does: for tests of what the operator refuses.
    pub fn sign_csr_naming(
        &self,
        csr_pem: &str,
        names: Option<&[&str]>,
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::CouldNotParseCertificationRequest
            | rcgen::Error::InvalidCertificationRequestSignature => {
                PkiError::InvalidPem(format!("certificate request: {e}"))
            }
            other => rcgen_error("certificate request", other),
        })?;
        if let Some(names) = names {
            let mut dn = DistinguishedName::new();
            if let Some(first) = names.first() {
                dn.push(DnType::CommonName, *first);
            }
            csr.params.distinguished_name = dn;
            csr.params.subject_alt_names = names
                .iter()
                .map(|n| san_type(n))
                .collect::<Result<_, _>>()?;
        }
        leaf_profile(
            &mut csr.params,
            not_before,
            not_after,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| rcgen_error("signing", e))?;
        Ok(format!("{}{}", cert.pem(), self.chain_pem))
    }

    /// A new key and server certificate: (chain PEM leaf first, PKCS#8 key PEM).
    pub fn issue(
        &self,
        common_name: &str,
        sans: &[&str],
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
        alg: KeyAlgorithm,
    ) -> Result<(String, String), PkiError> {
        self.issue_for(
            common_name,
            sans,
            not_before,
            not_after,
            alg,
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Like [`Ca::issue`], for TLS client authentication (the CIE mutual-TLS simulator).
    pub fn issue_client(
        &self,
        common_name: &str,
        sans: &[&str],
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
        alg: KeyAlgorithm,
    ) -> Result<(String, String), PkiError> {
        self.issue_for(
            common_name,
            sans,
            not_before,
            not_after,
            alg,
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }

    fn issue_for(
        &self,
        common_name: &str,
        sans: &[&str],
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
        alg: KeyAlgorithm,
        purpose: ExtendedKeyUsagePurpose,
    ) -> Result<(String, String), PkiError> {
        let key_pem = generate_key(alg)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| rcgen_error("generated key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.subject_alt_names = sans.iter().map(|s| san_type(s)).collect::<Result<_, _>>()?;
        leaf_profile(&mut params, not_before, not_after, purpose);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| rcgen_error("signing", e))?;
        Ok((format!("{}{}", cert.pem(), self.chain_pem), key_pem))
    }
}
