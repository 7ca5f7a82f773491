//! `docs/configuration.md` holds the configuration reference generated from the code
//! (`hookbridge::config::reference_markdown`): this test fails when the checked-in block differs,
//! and with `HOOKBRIDGE_BLESS=1` rewrites it instead.

use std::path::PathBuf;

const BEGIN: &str = "<!-- generated from src/config/reference.rs; tests/config_reference.rs checks it (HOOKBRIDGE_BLESS=1 rewrites it) -->\n";
const END: &str = "<!-- end of generated reference -->";

#[test]
fn configuration_page_is_the_generated_reference() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let page = std::fs::read_to_string(&path).unwrap();
    let start = page
        .find(BEGIN)
        .expect("docs/configuration.md has the generated block")
        + BEGIN.len();
    let stop = start
        + page[start..]
            .find(END)
            .expect("docs/configuration.md's generated block ends");
    let generated = hookbridge::config::reference_markdown();
    if std::env::var_os("HOOKBRIDGE_BLESS").is_some_and(|v| v == "1") {
        let text = format!("{}{generated}{}", &page[..start], &page[stop..]);
        std::fs::write(&path, text).unwrap();
        return;
    }
    assert!(
        page[start..stop] == generated,
        "docs/configuration.md's reference differs from the code: run \
         `HOOKBRIDGE_BLESS=1 cargo test --test config_reference` and review the diff"
    );
}
