//! The Places upstream's HTTP/1.1 response parser, fed arbitrary bytes split anywhere.
//!
//! Input layout: byte 0 gives `k = byte0 % 16`, the next `2k` bytes are `k` little-endian u16 piece lengths
//! (each taken modulo what is left, so a piece may be empty), and everything after them is the response
//! stream. The stream is fed in those pieces (then the rest in one piece), then `finish()` is called, as
//! the upstream does when the server closes.
//!
//! Checks: nothing panics; the outcome (a complete `Response`, or an error) is the same whether the bytes
//! arrive in one piece or split; once complete, `finish()` says `AlreadyComplete`; after an error the
//! parser keeps returning that error; `reset()` makes the parser as good as new.
//!
//! The checks live in `herd::fuzzing::http_response` (src/fuzzing.rs), so `cargo test --test fuzz_corpus` runs
//! them on the committed seeds without libFuzzer.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd::fuzzing::http_response::run(data));
