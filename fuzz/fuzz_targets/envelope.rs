//! The ingress body scanner on arbitrary bytes: must never panic, and whatever it accepts must be
//! a single valid JSON document whose action and data.id it reports consistently.
#![no_main]

use hookbridge::ingress::envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(env) = envelope::parse(data) {
        let v: serde_json::Value = serde_json::from_slice(data).expect("accepted bodies are JSON");
        assert_eq!(v["metadata"]["action"].as_str(), Some(env.action.as_str()));
        assert!(!env.resource_id.is_empty());
    }
});
