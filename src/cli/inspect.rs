//! `certrotor inspect secret NAME` / `inspect file PATH`: what a `tls.crt` holds, and whether
//! the operator would accept it, by the very checks it applies before any tenant call
//! (`controller::tenant::source::read_source`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use clap::Subcommand;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;

use super::time::relative;
use crate::api::KeySource;
use crate::controller::tenant::plan::Source;
use crate::controller::tenant::source::{self, TLS_CRT, TLS_KEY};
use crate::pki;

#[derive(Subcommand, Debug)]
pub enum InspectCommand {
    /// A Secret's tls.crt, and its tls.key when present.
    Secret { name: String },
    /// A PEM file: a chain, leaf first; a private key in the same file (or --key) is checked too.
    File {
        path: PathBuf,
        /// The private key, when it is in a separate file.
        #[arg(long, value_name = "PATH")]
        key: Option<PathBuf>,
    },
}

pub async fn secret(client: Client, ns: &str, name: &str) -> anyhow::Result<i32> {
    let secret = Api::<Secret>::namespaced(client, ns)
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {ns}/{name}"))?
        .ok_or_else(|| anyhow!("Secret {ns}/{name} not found"))?;
    let data = source::secret_data(&secret);
    let chain = data
        .get(TLS_CRT)
        .ok_or_else(|| anyhow!("Secret {ns}/{name} has no {TLS_CRT}"))?;
    let (text, ok) = report(
        &format!("Secret {ns}/{name}"),
        chain,
        data.get(TLS_KEY),
        name,
    );
    print!("{text}");
    Ok(if ok { 0 } else { 1 })
}

pub fn file(path: &Path, key: Option<&Path>) -> anyhow::Result<i32> {
    let read =
        |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let text = read(path)?;
    let key_pem = match key {
        Some(k) => Some(read(k)?),
        None => private_key_block(&text),
    };
    let chain = without_private_keys(&text);
    let (out, ok) = report(
        &path.display().to_string(),
        &chain,
        key_pem.as_ref(),
        "inspected",
    );
    print!("{out}");
    Ok(if ok { 0 } else { 1 })
}

/// The first `… PRIVATE KEY` PEM block of `text`, if any.
fn private_key_block(text: &str) -> Option<String> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start..];
    let header_end = rest.find('\n')?;
    if !rest[..header_end].contains("PRIVATE KEY") {
        return private_key_block(&rest[header_end..]);
    }
    let end_marker = rest.find("-----END ")?;
    let end = rest[end_marker..]
        .find('\n')
        .map_or(rest.len(), |e| end_marker + e);
    Some(rest[..end].to_string())
}

/// `text` without its private key blocks: what would go in `tls.crt`.
fn without_private_keys(text: &str) -> String {
    let mut out = String::new();
    let mut in_key = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN ") && line.contains("PRIVATE KEY") {
            in_key = true;
        }
        if !in_key {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END ") && line.contains("PRIVATE KEY") {
            in_key = false;
        }
    }
    out
}

/// The decoded chain and the operator's verdict; true when it would be accepted.
fn report(what: &str, chain: &str, key: Option<&String>, secret_name: &str) -> (String, bool) {
    let now = Timestamp::now();
    let mut out = format!("{what}\n");
    match pki::parse_chain(chain) {
        Ok(certs) => {
            let _ = writeln!(
                out,
                "Chain: {} certificate(s), in the order given",
                certs.len()
            );
            for (i, c) in certs.iter().enumerate() {
                let role = match (i, c.is_ca) {
                    (0, false) => "leaf",
                    (_, true) => "CA",
                    (_, false) => "not a CA",
                };
                let _ = writeln!(out, "  [{i}] {role}");
                let _ = writeln!(out, "      subject  {}", c.subject);
                if !c.subject_alternative_names.is_empty() {
                    let _ = writeln!(
                        out,
                        "      SANs     {}",
                        c.subject_alternative_names.join(", ")
                    );
                }
                let _ = writeln!(out, "      issuer   {}", c.issuer);
                let _ = writeln!(out, "      serial   {}", c.serial_number);
                let _ = writeln!(
                    out,
                    "      valid    {} to {} ({})",
                    c.not_before,
                    c.not_after,
                    if c.not_after < now {
                        format!("expired {}", relative(c.not_after, now))
                    } else {
                        format!("expires {}", relative(c.not_after, now))
                    }
                );
                let _ = writeln!(out, "      {}", c.fingerprint);
            }
        }
        Err(e) => {
            let _ = writeln!(out, "Chain: cannot be read: {e}");
        }
    }
    let key_line = match key {
        None => "no private key (keySource Tenant: the tenant holds it)".to_string(),
        Some(k) => match pki::check_key_matches(chain, k) {
            Ok(()) => "matches the leaf".to_string(),
            Err(e) => format!("{e}"),
        },
    };
    let _ = writeln!(out, "Key:   {key_line}");

    // The operator's own checks, on the same data.
    let key_source = if key.is_some() {
        KeySource::Local
    } else {
        KeySource::Tenant
    };
    let spec = crate::controller::tenant::source::spec_for_checks(key_source, secret_name);
    let mut data = BTreeMap::new();
    data.insert(TLS_CRT.to_string(), ByteString(chain.as_bytes().to_vec()));
    if let Some(k) = key {
        data.insert(TLS_KEY.to_string(), ByteString(k.as_bytes().to_vec()));
    }
    let secret = Secret {
        data: Some(data),
        ..Default::default()
    };
    let mode = match key_source {
        KeySource::Local => "keySource Local",
        KeySource::Tenant => "keySource Tenant",
    };
    let ok = match source::read_source(&spec, Some(&secret), now) {
        Ok(Source::Present(_)) => {
            let _ = writeln!(
                out,
                "Verdict: accepted by the TenantCertificate checks ({mode})"
            );
            true
        }
        Ok(Source::NoChain) => {
            let _ = writeln!(out, "Verdict: refused: NoCertificate: no chain to check");
            false
        }
        Err(invalid) => {
            let _ = writeln!(
                out,
                "Verdict: refused ({mode}): {}: {}",
                invalid.reason, invalid.message
            );
            false
        }
    };
    (out, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_blocks_are_split_from_the_chain() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n";
        assert_eq!(
            private_key_block(pem).as_deref(),
            Some("-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----")
        );
        assert_eq!(
            without_private_keys(pem),
            "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            private_key_block("-----BEGIN CERTIFICATE-----\nAAA\n"),
            None
        );
    }
}
