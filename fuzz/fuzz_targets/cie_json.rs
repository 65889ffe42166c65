//! What the CIE Device-ID broker answers: cert:refresh and token:refresh bodies, error bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    certrotor::cie::parse_any_response(data);
});
