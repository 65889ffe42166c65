//! PEM from Secrets and from the tenant: chains, keys and CSRs, through the checks the
//! controllers run on a TenantCertificate's source Secret and a DeviceIdCredential's onboarding
//! Secret. The input is split at the first NUL into `tls.crt` and `tls.key`.
#![no_main]

use std::collections::BTreeMap;

use certrotor::api::KeySource;
use certrotor::controller::deviceid::inputs;
use certrotor::controller::tenant::source;
use certrotor::pki;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (crt, key) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let now = jiff::Timestamp::from_second(1_790_000_000).unwrap();
    let text = String::from_utf8_lossy(crt);
    let key_text = String::from_utf8_lossy(key);
    let _ = pki::parse_chain(&text);
    let _ = pki::check_chain(&text, now);
    let _ = pki::fingerprint_of_leaf(&text);
    let _ = pki::csr_info(&text);
    let _ = pki::check_key_matches(&text, &key_text);
    let _ = pki::private_key_to_pkcs8_pem(&key_text);
    let _ = pki::private_key_public_der(&key_text);

    let secret = Secret {
        data: Some(BTreeMap::from([
            ("tls.crt".to_string(), ByteString(crt.to_vec())),
            ("tls.key".to_string(), ByteString(key.to_vec())),
        ])),
        ..Default::default()
    };
    for key_source in [KeySource::Local, KeySource::Tenant] {
        let spec = source::spec_for_checks(key_source, "s");
        let _ = source::read_source(&spec, Some(&secret), now);
    }
    let _ = inputs::read_onboarding("onboarding", Some(&secret));
    let _ = inputs::read_output(Some(&secret));
});
