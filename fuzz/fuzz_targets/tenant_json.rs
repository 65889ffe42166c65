//! What an AIC tenant answers: certificate and CSR lists and objects, token responses, error
//! bodies, OAuth errors, Retry-After.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    certrotor::aic::parse_any_response(data);
});
