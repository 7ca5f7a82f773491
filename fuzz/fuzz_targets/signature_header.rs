//! The signature-header parser and verifier on arbitrary headers, timestamps and bodies: must
//! never panic, never accept a signature that was not made with the key, and always accept one
//! that was.
#![no_main]

use std::time::Duration;

use hookbridge::ingress::signature::{self, Key};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fuzz_target!(|input: (&str, &str, &[u8])| {
    let (header, timestamp, body) = input;
    let keys = [Key::parse(SECRET).unwrap()];
    let tol = Duration::from_secs(300);
    let entries = signature::parse_header(header);
    assert!(entries.len() <= signature::MAX_SIGNATURES);
    let _ = signature::verify(&keys, tol, "msg_fuzz", timestamp, header, body, 1_700_000_000);
    // A genuine signature appended to arbitrary junk still verifies (any entry may match)...
    let good = signature::sign_v1(SECRET, "msg_fuzz", "1700000000", body);
    if entries.len() < signature::MAX_SIGNATURES {
        let h = format!("{header} {good}");
        assert_eq!(
            signature::verify(&keys, tol, "msg_fuzz", "1700000000", &h, body, 1_700_000_000),
            Ok(())
        );
    }
    // ...and the junk alone never does, unless it contains that signature.
    if !header.contains(&good[3..]) {
        assert!(signature::verify(&keys, tol, "msg_fuzz", "1700000000", header, body, 1_700_000_000).is_err());
    }
});
