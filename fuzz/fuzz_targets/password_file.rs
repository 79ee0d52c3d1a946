//! Password file text (Mosquitto `user:hash` lines, `$6$`, `$7$`, `$argon2id$`): parsing
//! must not panic, and a parsed file must know exactly the users its lines name.
#![no_main]

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use midge_broker::auth::PasswordFile;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = PasswordFile::parse(Path::new("fuzz.passwd"), text) else {
        return;
    };
    let users: HashSet<&str> = text
        .lines()
        .map(|line| line.trim_end_matches(['\r', '\n']))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once(':').map(|(user, _)| user))
        .collect();
    assert_eq!(file.len(), users.len(), "user count");
    for user in &users {
        assert!(file.contains(user), "user {user:?} from a line is missing");
    }
    assert!(!file.contains(""), "the empty user name is never defined");
    assert!(file.verifications_per_login() <= users.len().max(1));
    // Verifying costs what the file says; only `$6$` (one SHA-512) is cheap enough to run
    // on every input. An unknown user never verifies, whatever the password.
    if !text.contains("$7$") && !text.contains("$argon2id$") {
        for user in &users {
            let _ = file.verify(user, b"password");
        }
        if !users.contains("fuzz-unknown-user") {
            assert!(!file.verify("fuzz-unknown-user", b""));
        }
    }
});
