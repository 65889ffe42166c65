//! Service-account access tokens: a JWT-bearer assertion (RS256, signed with the JWK the console
//! gave), exchanged at `/am/oauth2/access_token`; one cached token per client, renewed shortly
//! before it expires.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use aws_lc_rs::{rand::SystemRandom, signature};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use super::AicError;
use crate::pki::jwk::{RsaJwk, rsa_jwk_to_pkcs1_der};

/// How the operator authenticates to one tenant, read from the credentials Secret.
#[derive(Clone)]
pub enum Credentials {
    /// `serviceAccountId` + `privateKey` (the JWK JSON).
    ServiceAccount { id: String, key: Box<RsaJwk> },
    /// A pre-issued bearer token (`accessToken`); used as is, never renewed.
    AccessToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::ServiceAccount { id, .. } => f
                .debug_struct("ServiceAccount")
                .field("id", id)
                .finish_non_exhaustive(),
            Credentials::AccessToken(_) => f.write_str("AccessToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// Reads a credentials Secret's data. Errors name the missing key, never a value.
    pub fn from_secret_data(data: &BTreeMap<String, Vec<u8>>) -> Result<Self, AicError> {
        let text = |key: &str| {
            data.get(key)
                .map(|v| String::from_utf8(v.clone()).map(|s| s.trim().to_string()))
                .transpose()
                .map_err(|_| AicError::Config(format!("credentials key {key} is not UTF-8")))
        };
        if let Some(token) = text("accessToken")?.filter(|t| !t.is_empty()) {
            return Ok(Credentials::AccessToken(token));
        }
        let id = text("serviceAccountId")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                AicError::Config(
                    "credentials Secret needs serviceAccountId and privateKey, or accessToken"
                        .into(),
                )
            })?;
        let key_json = text("privateKey")?.ok_or_else(|| {
            AicError::Config("credentials Secret has serviceAccountId but no privateKey".into())
        })?;
        let key: RsaJwk = serde_json::from_str(&key_json).map_err(|_| {
            AicError::Config("privateKey is not a JWK (JSON) as the console exports it".into())
        })?;
        if key.kty != "RSA" {
            return Err(AicError::Config(format!(
                "privateKey JWK has kty {}, expected RSA",
                key.kty
            )));
        }
        // Fail on a broken key now, not at the first token request.
        rsa_jwk_to_pkcs1_der(&key)
            .map_err(|e| AicError::Config(format!("privateKey JWK is unusable: {e}")))?;
        Ok(Credentials::ServiceAccount {
            id,
            key: Box::new(key),
        })
    }

    /// Identifies the credential without revealing it (for client caches and logs).
    pub fn identity(&self) -> String {
        match self {
            Credentials::ServiceAccount { id, .. } => format!("serviceAccount:{id}"),
            Credentials::AccessToken(token) => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(token.as_bytes());
                format!("accessToken:{}", hex(&digest[..6]))
            }
        }
    }
}

/// The audience the tenant expects: the token endpoint, https, port always written.
pub fn audience(base: &reqwest::Url) -> String {
    let host = base.host_str().unwrap_or_default();
    let port = base.port().unwrap_or(443);
    format!("https://{host}:{port}/am/oauth2/access_token")
}

/// A signed JWT-bearer assertion. `lifetime` is kept short (the tenant allows at most 15 min).
pub fn assertion(
    service_account_id: &str,
    key: &RsaJwk,
    audience: &str,
    now: jiff::Timestamp,
    lifetime: Duration,
) -> Result<String, AicError> {
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let iat = now.as_second();
    let claims = serde_json::json!({
        "iss": service_account_id,
        "sub": service_account_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + lifetime.as_secs().min(900) as i64,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let der = rsa_jwk_to_pkcs1_der(key)
        .map_err(|e| AicError::Config(format!("privateKey JWK is unusable: {e}")))?;
    let pair = signature::RsaKeyPair::from_der(&der)
        .map_err(|_| AicError::Config("privateKey JWK is not a valid RSA key".into()))?;
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| AicError::Config("could not sign the token assertion".into()))?;
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

#[derive(Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// A bearer token and when to stop using it.
#[derive(Clone)]
pub(crate) struct CachedToken {
    pub value: String,
    pub renew_at: Instant,
}

impl CachedToken {
    /// Renew a minute early, or at 90 % of a short lifetime.
    pub fn new(value: String, expires_in: Duration, obtained: Instant) -> Self {
        let margin = Duration::from_secs(60).min(expires_in / 10);
        Self {
            value,
            renew_at: obtained + expires_in.saturating_sub(margin),
        }
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now < self.renew_at
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_always_writes_https_and_port() {
        let url = reqwest::Url::parse("https://openam-acme.id.forgerock.io").unwrap();
        assert_eq!(
            audience(&url),
            "https://openam-acme.id.forgerock.io:443/am/oauth2/access_token"
        );
        let url = reqwest::Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            audience(&url),
            "https://127.0.0.1:8080/am/oauth2/access_token"
        );
    }

    #[test]
    fn token_renews_before_expiry() {
        let t0 = Instant::now();
        let token = CachedToken::new("t".into(), Duration::from_secs(899), t0);
        assert!(token.is_fresh(t0 + Duration::from_secs(838)));
        assert!(!token.is_fresh(t0 + Duration::from_secs(840)));
        let short = CachedToken::new("t".into(), Duration::from_secs(10), t0);
        assert!(!short.is_fresh(t0 + Duration::from_secs(9)));
    }

    #[test]
    fn assertion_is_rs256_with_the_claims_the_tenant_checks() {
        let key = crate::pki::jwk::generate_rsa_jwk(2048).unwrap();
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let aud = "https://t:443/am/oauth2/access_token";
        let a = assertion("sa-1", &key, aud, now, Duration::from_secs(180)).unwrap();
        let b = assertion("sa-1", &key, aud, now, Duration::from_secs(180)).unwrap();
        let parts: Vec<_> = a.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "sa-1");
        assert_eq!(claims["sub"], "sa-1");
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["exp"], 1_700_000_180);
        let claims_b: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(b.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_ne!(claims["jti"], claims_b["jti"], "jti must be unique");
        // The signature verifies with the public half.
        let (n, e) = crate::pki::jwk::rsa_public_components(&key).unwrap();
        let public = signature::RsaPublicKeyComponents { n: &n, e: &e };
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        public
            .verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &sig,
            )
            .unwrap();
    }

    #[test]
    fn credentials_errors_name_keys_not_values() {
        let mut data = BTreeMap::new();
        data.insert("serviceAccountId".to_string(), b"sa".to_vec());
        data.insert(
            "privateKey".to_string(),
            b"{\"kty\":\"RSA\",\"secretstuff\":1}".to_vec(),
        );
        let err = Credentials::from_secret_data(&data)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secretstuff"), "{err}");
        data.clear();
        assert!(
            Credentials::from_secret_data(&data)
                .unwrap_err()
                .to_string()
                .contains("serviceAccountId")
        );
        data.insert("accessToken".to_string(), b"tok".to_vec());
        let creds = Credentials::from_secret_data(&data).unwrap();
        assert!(!format!("{creds:?}").contains("tok"));
        assert!(!creds.identity().contains("tok"));
    }
}
