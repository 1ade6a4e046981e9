//! What a peer link does with the lines it reads that is pure: tokenizing handshake lines with `Fields`,
//! validating records with `parse_at`, and storing them with `RecordStore::offer_line` (newest wins).
//!
//! The input is split into lines on LF (each line keeps its LF, as the peer link hands them on; a last
//! line without LF is offered too). For every line:
//! - `Fields` yields non-empty runs of non-whitespace, in order, separated only by whitespace;
//! - `parse_at` ranges lie inside the line, in order, and hold valid fields; it agrees on the line with
//!   and without its LF;
//! - `offer_line` is `None` exactly when the line is not a valid `AT` line ending in LF; a stored line is
//!   held byte for byte and its `line()` parses again; a line not stored loses to the held record; the same
//!   line offered twice is `Some(false)` the second time.
//!
//! At the end every held record parses again and is found under its own client id.
//!
//! The checks live in `herd::fuzzing::peer_messages` (src/fuzzing.rs), so `cargo test --test fuzz_corpus` runs
//! them on the committed seeds without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd::fuzzing::peer_messages::run(data));
