//! The service-account token grant (RFC 7523 JWT bearer), as pure checks over the request.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
pub(crate) const CLIENT_ID: &str = "service-account";
pub(crate) const SCOPE_ALL: &str = "fr:idc:certificate:*";
pub(crate) const SCOPE_READ: &str = "fr:idc:certificate:read";
/// AIC refuses assertions that live longer than this.
pub(crate) const MAX_ASSERTION_LIFETIME_SECS: i64 = 15 * 60;

/// An OAuth error: the `error` code and a description, sent as a 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

fn invalid_grant(description: impl Into<String>) -> OAuthError {
    OAuthError {
        error: "invalid_grant",
        description: description.into(),
    }
}

/// Decodes `application/x-www-form-urlencoded`. Later duplicates win.
pub(crate) fn parse_form(body: &[u8]) -> BTreeMap<String, String> {
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut parts = pair.splitn(2, |&b| b == b'=');
            let key = percent_decode(parts.next().unwrap_or_default());
            let value = percent_decode(parts.next().unwrap_or_default());
            (key, value)
        })
        .collect()
}

fn percent_decode(input: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < input.len() => match (hex(input[i + 1]), hex(input[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The audience a client must use: the token URL as it called it, always `https` with the port
/// written out (443 when the Host header has none).
pub(crate) fn expected_audience(host_header: Option<&str>) -> String {
    let host = host_header.unwrap_or("localhost");
    // An IPv6 literal ends with `]`; only a colon after it starts a port.
    let has_port = match host.rfind(']') {
        Some(end) => host[end..].contains(':'),
        None => host.contains(':'),
    };
    if has_port {
        format!("https://{host}/am/oauth2/access_token")
    } else {
        format!("https://{host}:443/am/oauth2/access_token")
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, aud: &str) -> bool {
        match self {
            Audience::One(one) => one == aud,
            Audience::Many(many) => many.iter().any(|a| a == aud),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    jti: Option<String>,
}

/// What the caller still has to check against its state: the `jti` must be new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcceptedAssertion {
    pub jti: String,
    pub exp: i64,
}

/// Who may sign assertions, and what they must say.
pub(crate) struct Expectations<'a> {
    pub service_account_id: &'a str,
    pub modulus: &'a [u8],
    pub exponent: &'a [u8],
    pub audience: &'a str,
    pub now: i64,
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str, what: &str) -> Result<T, OAuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| invalid_grant(format!("JWT {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| invalid_grant(format!("JWT {what} is not valid JSON")))
}

/// Checks signature (RS256 with the account's key), issuer, subject, audience and expiry.
pub(crate) fn verify_assertion(
    jwt: &str,
    expect: &Expectations<'_>,
) -> Result<AcceptedAssertion, OAuthError> {
    let Some((signing_input, signature)) = jwt.rsplit_once('.') else {
        return Err(invalid_grant(
            "assertion is not a JWS compact serialization",
        ));
    };
    let Some((header, payload)) = signing_input.split_once('.') else {
        return Err(invalid_grant(
            "assertion is not a JWS compact serialization",
        ));
    };
    let header: Header = decode_part(header, "header")?;
    if header.alg != "RS256" {
        return Err(invalid_grant(format!("unsupported JWT alg {}", header.alg)));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| invalid_grant("JWT signature is not base64url"))?;
    RsaPublicKeyComponents {
        n: expect.modulus,
        e: expect.exponent,
    }
    .verify(
        &RSA_PKCS1_2048_8192_SHA256,
        signing_input.as_bytes(),
        &signature,
    )
    .map_err(|_| invalid_grant("JWT signature does not verify"))?;

    let claims: Claims = decode_part(payload, "payload")?;
    let account = Some(expect.service_account_id);
    if claims.iss.as_deref() != account || claims.sub.as_deref() != account {
        return Err(invalid_grant("iss and sub must be the service account id"));
    }
    if !claims.aud.is_some_and(|aud| aud.contains(expect.audience)) {
        return Err(invalid_grant(format!("aud must be {}", expect.audience)));
    }
    let exp = claims.exp.ok_or_else(|| invalid_grant("exp is missing"))?;
    if exp <= expect.now {
        return Err(invalid_grant("JWT has expired"));
    }
    if exp - expect.now > MAX_ASSERTION_LIFETIME_SECS {
        return Err(invalid_grant("exp is more than 15 minutes ahead"));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty())
        .ok_or_else(|| invalid_grant("jti is missing"))?;
    Ok(AcceptedAssertion { jti, exp })
}

/// The scopes granted: all that were asked for, when the account has each of them; the
/// account's scopes when none were asked for.
pub(crate) fn granted_scopes(
    requested: Option<&str>,
    account_scopes: &[String],
) -> Result<Vec<String>, OAuthError> {
    let requested: Vec<String> = requested
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if requested.is_empty() {
        return Ok(account_scopes.to_vec());
    }
    match requested.iter().find(|s| !account_scopes.contains(s)) {
        Some(missing) => Err(OAuthError {
            error: "invalid_scope",
            description: format!("scope {missing} is not granted to this service account"),
        }),
        None => Ok(requested),
    }
}

/// Whether a token with `scopes` may make a call with `method`.
pub(crate) fn scope_allows(scopes: &[String], method: &axum::http::Method) -> bool {
    let all = scopes.iter().any(|s| s == SCOPE_ALL);
    let read = scopes.iter().any(|s| s == SCOPE_READ);
    all || (read && method == axum::http::Method::GET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let form =
            parse_form(b"client_id=service-account&scope=fr%3Aidc%3Acertificate%3A*+x&bad=%zz&=v");
        assert_eq!(form["client_id"], "service-account");
        assert_eq!(form["scope"], "fr:idc:certificate:* x");
        assert_eq!(form["bad"], "%zz");
        assert_eq!(form[""], "v");
        assert_eq!(parse_form(b"a=%4")["a"], "%4");
    }

    #[test]
    fn audience_always_names_https_and_port() {
        assert_eq!(
            expected_audience(Some("tenant.example.com")),
            "https://tenant.example.com:443/am/oauth2/access_token"
        );
        assert_eq!(
            expected_audience(Some("127.0.0.1:8080")),
            "https://127.0.0.1:8080/am/oauth2/access_token"
        );
        assert_eq!(
            expected_audience(Some("[::1]")),
            "https://[::1]:443/am/oauth2/access_token"
        );
        assert_eq!(
            expected_audience(Some("[::1]:9")),
            "https://[::1]:9/am/oauth2/access_token"
        );
    }

    #[test]
    fn scopes_must_be_a_subset() {
        let account = vec![SCOPE_ALL.to_owned(), SCOPE_READ.to_owned()];
        assert_eq!(granted_scopes(None, &account).unwrap(), account);
        assert_eq!(
            granted_scopes(Some(SCOPE_READ), &account).unwrap(),
            [SCOPE_READ]
        );
        let err = granted_scopes(Some("fr:idc:certificate:read other"), &account).unwrap_err();
        assert_eq!(err.error, "invalid_scope");
        assert!(granted_scopes(Some(SCOPE_ALL), &account[1..]).is_err());
    }

    #[test]
    fn read_scope_allows_only_get() {
        let read = vec![SCOPE_READ.to_owned()];
        assert!(scope_allows(&read, &axum::http::Method::GET));
        assert!(!scope_allows(&read, &axum::http::Method::PATCH));
        let all = vec![SCOPE_ALL.to_owned()];
        assert!(scope_allows(&all, &axum::http::Method::DELETE));
        assert!(!scope_allows(&[], &axum::http::Method::GET));
    }
}
