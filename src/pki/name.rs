//! Distinguished names and SANs as text.

use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::x509::X509Name;

/// Short names from RFC 4514 (plus the `emailAddress` everyone prints); others stay dotted.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.5" => "serialNumber",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.17" => "postalCode",
        "0.9.2342.19200300.100.1.1" => "UID",
        "0.9.2342.19200300.100.1.25" => "DC",
        "1.2.840.113549.1.9.1" => "emailAddress",
        _ => return None,
    })
}

/// Escapes a value as RFC 4514 section 2.4 asks.
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 4514 string: RDNs in reverse order of the encoding, so the most specific (usually CN)
/// comes first.
pub(crate) fn format_name(name: &X509Name<'_>) -> String {
    let rdns: Vec<String> = name
        .iter()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let key = attribute_name(&oid).map_or(oid, str::to_owned);
                    let value = match attr.as_str() {
                        Ok(text) => escape_value(text),
                        Err(_) => format!("#{}", hex(attr.attr_value().data)),
                    };
                    format!("{key}={value}")
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.into_iter().rev().collect::<Vec<_>>().join(",")
}

/// DNS names and IP addresses as text; other kinds of names are not ours to judge.
pub(crate) fn san_text(name: &GeneralName<'_>) -> Option<String> {
    match name {
        GeneralName::DNSName(dns) => Some((*dns).to_owned()),
        GeneralName::IPAddress(bytes) => ip_from_bytes(bytes).map(|ip| ip.to_string()),
        _ => None,
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_rfc4514_specials() {
        assert_eq!(escape_value("Acme, Inc"), "Acme\\, Inc");
        assert_eq!(escape_value("#1 "), "\\#1\\ ");
        assert_eq!(escape_value("a+b=c"), "a\\+b=c");
        assert_eq!(escape_value("plain"), "plain");
    }

    #[test]
    fn ip_sans_become_text() {
        assert_eq!(
            san_text(&GeneralName::IPAddress(&[10, 0, 0, 1])).as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(san_text(&GeneralName::IPAddress(&[1, 2, 3])), None);
        assert_eq!(
            san_text(&GeneralName::DNSName("a.example.com")).as_deref(),
            Some("a.example.com")
        );
        assert_eq!(san_text(&GeneralName::URI("https://x")), None);
    }
}
