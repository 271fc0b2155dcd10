//! Fuzzes `WorkerName::parse`: a name it accepts must be exactly one visible file name inside
//! the catalog directory, and a rejection message must stay short whatever the input.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use rbee_hive::catalog::{MAX_NAME_BYTES, WorkerName};

/// Maximum length of a rejection message: the name is cut to 64 characters, each escaped in at
/// most 10 bytes (`\u{10ffff}`), plus the reason.
const MAX_MESSAGE_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    match WorkerName::parse(input) {
        Ok(name) => {
            assert_eq!(name.as_str(), input);
            assert!(!input.is_empty(), "empty name accepted");
            assert!(input.len() <= MAX_NAME_BYTES, "long name accepted");
            assert!(!input.starts_with('.'), "hidden name accepted: {input:?}");
            assert!(!input.contains('\0'), "NUL accepted: {input:?}");
            assert!(
                !input.chars().any(char::is_control),
                "control character accepted: {input:?}"
            );

            let catalog = Path::new("/catalog");
            let joined = catalog.join(name.as_str());
            let components: Vec<Component<'_>> =
                joined.strip_prefix(catalog).unwrap().components().collect();
            assert_eq!(
                components,
                [Component::Normal(input.as_ref())],
                "{input:?} is not a single file name"
            );
        }
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.len() <= MAX_MESSAGE_BYTES,
                "message of {} bytes",
                message.len()
            );
        }
    }
});
