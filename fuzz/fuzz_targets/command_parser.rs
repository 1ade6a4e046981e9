//! Client commands (PROTOCOL sections 2 to 4): `parse_command` on arbitrary bytes, and the replies built
//! from what it accepts.
//!
//! The input is parsed whole, then line by line (split on LF, as the client connection does). For every
//! line:
//! - `Blank` exactly when the line has no fields;
//! - an accepted `IAMAT` whose time is within the allowed clock skew (the server answers the others `?`)
//!   gives an `AT` reply that `parse_at` accepts again, whose field ranges are the ones `write_at`
//!   returned and whose fields are the command's bytes, with a well-formed time difference;
//! - an accepted `WHATSAT` has a client id of 1 to 255 bytes and a bound of at most 20;
//! - `write_invalid` echoes the line exactly.
//!
//! The checks live in `herd::fuzzing::command_parser` (src/fuzzing.rs), so `cargo test --test fuzz_corpus` runs
//! them on the committed seeds without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd::fuzzing::command_parser::run(data));
