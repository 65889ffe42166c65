//! A tenant credentials Secret: the service account's private key as a JWK, as the console
//! exports it (parsed, then checked by building the RSA key).
#![no_main]

use std::collections::BTreeMap;

use certrotor::aic::Credentials;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let secret = BTreeMap::from([
        ("serviceAccountId".to_string(), b"sa".to_vec()),
        ("privateKey".to_string(), data.to_vec()),
    ]);
    let _ = Credentials::from_secret_data(&secret);
});
