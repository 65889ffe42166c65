//! RSA private keys as JWK (RFC 7518 section 6.3): the form in which AIC hands out a service
//! account's key.

use std::fmt;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::PkiError;
use super::der::{TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE, expect, unsigned_magnitude};
use super::der::{write_tlv, write_unsigned};

/// An RSA private key; every number is base64url without padding.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct RsaJwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    pub n: String,
    pub e: String,
    pub d: String,
    pub p: String,
    pub q: String,
    pub dp: String,
    pub dq: String,
    pub qi: String,
}

/// Only the labels: the numbers are the private key.
impl fmt::Debug for RsaJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaJwk")
            .field("kty", &self.kty)
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

fn key_size(bits: usize) -> Result<KeySize, PkiError> {
    match bits {
        2048 => Ok(KeySize::Rsa2048),
        3072 => Ok(KeySize::Rsa3072),
        4096 => Ok(KeySize::Rsa4096),
        8192 => Ok(KeySize::Rsa8192),
        _ => Err(PkiError::Unsupported(format!("RSA key size {bits}"))),
    }
}

/// The nine INTEGERs of `RSAPrivateKey` (version, n, e, d, p, q, dP, dQ, qInv) inside PKCS#8.
fn rsa_private_key_integers(pkcs8: &[u8]) -> Option<Vec<&[u8]>> {
    let (info, _) = expect(pkcs8, TAG_SEQUENCE)?;
    let (_version, rest) = expect(info, TAG_INTEGER)?;
    let (_algorithm, rest) = expect(rest, TAG_SEQUENCE)?;
    let (private_key, _attributes) = expect(rest, TAG_OCTET_STRING)?;
    let (mut fields, _) = expect(private_key, TAG_SEQUENCE)?;
    let mut integers = Vec::with_capacity(9);
    while integers.len() < 9 {
        let (value, rest) = expect(fields, TAG_INTEGER)?;
        integers.push(unsigned_magnitude(value));
        fields = rest;
    }
    Some(integers)
}

/// A new RSA key of `bits` (2048, 3072, 4096 or 8192) as a JWK with `alg: RS256`.
pub fn generate_rsa_jwk(bits: usize) -> Result<RsaJwk, PkiError> {
    let key = KeyPair::generate(key_size(bits)?)
        .map_err(|_| PkiError::Unsupported("RSA key generation failed".to_owned()))?;
    let pkcs8 = key
        .as_der()
        .map_err(|_| PkiError::Unsupported("RSA key export failed".to_owned()))?;
    let ints = rsa_private_key_integers(pkcs8.as_ref())
        .ok_or_else(|| PkiError::InvalidKey("unexpected PKCS#8 layout".to_owned()))?;
    let b64 = |i: usize| URL_SAFE_NO_PAD.encode(ints[i]);
    Ok(RsaJwk {
        kty: "RSA".to_owned(),
        kid: None,
        alg: Some("RS256".to_owned()),
        n: b64(1),
        e: b64(2),
        d: b64(3),
        p: b64(4),
        q: b64(5),
        dp: b64(6),
        dq: b64(7),
        qi: b64(8),
    })
}

fn decode(field: &str, value: &str) -> Result<Vec<u8>, PkiError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| PkiError::InvalidKey(format!("JWK field {field} is not base64url")))?;
    if bytes.is_empty() {
        return Err(PkiError::InvalidKey(format!("JWK field {field} is empty")));
    }
    Ok(bytes)
}

fn check_kty(jwk: &RsaJwk) -> Result<(), PkiError> {
    if jwk.kty == "RSA" {
        Ok(())
    } else {
        Err(PkiError::Unsupported(format!("JWK kty {:?}", jwk.kty)))
    }
}

/// The key as DER `RSAPrivateKey` (PKCS#1), checked for consistency by aws-lc-rs.
pub fn rsa_jwk_to_pkcs1_der(jwk: &RsaJwk) -> Result<Vec<u8>, PkiError> {
    check_kty(jwk)?;
    let fields = [
        ("n", &jwk.n),
        ("e", &jwk.e),
        ("d", &jwk.d),
        ("p", &jwk.p),
        ("q", &jwk.q),
        ("dp", &jwk.dp),
        ("dq", &jwk.dq),
        ("qi", &jwk.qi),
    ];
    let mut body = Vec::new();
    write_unsigned(&mut body, &[0]); // version: two-prime
    for (name, value) in fields {
        write_unsigned(&mut body, &decode(name, value)?);
    }
    let mut der = Vec::with_capacity(body.len() + 4);
    write_tlv(&mut der, TAG_SEQUENCE, &body);
    KeyPair::from_der(&der)
        .map_err(|_| PkiError::InvalidKey("JWK is not a consistent RSA key".to_owned()))?;
    Ok(der)
}

/// The public modulus and exponent, big-endian, as `RsaPublicKeyComponents` wants them.
pub fn rsa_public_components(jwk: &RsaJwk) -> Result<(Vec<u8>, Vec<u8>), PkiError> {
    check_kty(jwk)?;
    Ok((decode("n", &jwk.n)?, decode("e", &jwk.e)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaPublicKeyComponents,
    };

    #[test]
    fn jwk_round_trips_through_pkcs1_and_signs() {
        let jwk = generate_rsa_jwk(2048).unwrap();
        assert_eq!(jwk.kty, "RSA");
        assert_eq!(jwk.e, "AQAB");
        let der = rsa_jwk_to_pkcs1_der(&jwk).unwrap();
        let key = KeyPair::from_der(&der).unwrap();
        assert_eq!(key.public_modulus_len(), 256);
        let message = b"header.payload";
        let mut signature = vec![0; key.public_modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            message,
            &mut signature,
        )
        .unwrap();
        let (n, e) = rsa_public_components(&jwk).unwrap();
        let public = RsaPublicKeyComponents { n: &n, e: &e };
        public
            .verify(&RSA_PKCS1_2048_8192_SHA256, message, &signature)
            .unwrap();
        assert!(
            public
                .verify(&RSA_PKCS1_2048_8192_SHA256, b"other", &signature)
                .is_err()
        );
    }

    #[test]
    fn json_round_trip_and_redacted_debug() {
        let jwk = generate_rsa_jwk(2048).unwrap();
        let json = serde_json::to_string(&jwk).unwrap();
        let back: RsaJwk = serde_json::from_str(&json).unwrap();
        assert_eq!(back, jwk);
        let debug = format!("{jwk:?}");
        assert!(debug.contains("RS256"));
        for secret in [&jwk.d, &jwk.p, &jwk.q, &jwk.n] {
            assert!(!debug.contains(secret.as_str()));
        }
    }

    #[test]
    fn inconsistent_or_malformed_jwks_are_refused() {
        let jwk = generate_rsa_jwk(2048).unwrap();
        let other = generate_rsa_jwk(2048).unwrap();
        let mixed = RsaJwk {
            d: other.d.clone(),
            ..jwk.clone()
        };
        assert!(matches!(
            rsa_jwk_to_pkcs1_der(&mixed),
            Err(PkiError::InvalidKey(_))
        ));
        let garbage = RsaJwk {
            p: "!!".to_owned(),
            ..jwk.clone()
        };
        assert!(matches!(
            rsa_jwk_to_pkcs1_der(&garbage),
            Err(PkiError::InvalidKey(_))
        ));
        let ec = RsaJwk {
            kty: "EC".to_owned(),
            ..jwk
        };
        assert!(matches!(
            rsa_public_components(&ec),
            Err(PkiError::Unsupported(_))
        ));
        assert!(matches!(
            generate_rsa_jwk(1000),
            Err(PkiError::Unsupported(_))
        ));
    }
}
