//! Configuration: TOML text, then (after a NUL byte) `MIDGE_SECTION__KEY=value` overrides,
//! one per line, as the environment gives them. Parsing, overriding and validation must
//! not panic, and a configuration that loaded validates again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use midge_broker::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env = env
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
    match Config::from_toml_with_env(toml, "fuzz.toml", env) {
        Ok(config) => {
            if let Err(e) = config.validate("again") {
                panic!("a loaded configuration fails validation: {e}");
            }
        }
        // Errors are shown to the operator: formatting them must not panic either.
        Err(e) => drop(e.to_string()),
    }
});
