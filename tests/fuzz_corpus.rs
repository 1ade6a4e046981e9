//! The fuzz targets without libFuzzer: every committed seed in `fuzz/corpus/<target>/` (written by
//! `fuzz/seed_corpus.py`) goes through the same checks the target runs (`herd::fuzzing::<target>::run`),
//! and so do a few hundred deterministic variants of each (bytes flipped, cut, repeated), so a change
//! that breaks a target's code path or one of its invariants fails a plain `cargo test`. The targets
//! themselves must stay one-line wrappers around those functions, which the last test checks, so the
//! checks run here are the ones the fuzzer runs.

use std::path::{Path, PathBuf};

/// A target's name and its check of one input.
type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 3] = [
    ("command_parser", herd::fuzzing::command_parser::run),
    ("http_response", herd::fuzzing::http_response::run),
    ("peer_messages", herd::fuzzing::peer_messages::run),
];

/// Variants of each seed, besides the seed itself.
const VARIANTS: usize = 200;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (run python3 fuzz/seed_corpus.py)", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    out.sort();
    out
}

/// A small deterministic mutator (xorshift): flip, insert, delete or repeat a byte run, or cut.
fn variant(seed: &[u8], mut x: u64) -> Vec<u8> {
    let mut next = move |n: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % n.max(1) as u64) as usize
    };
    let mut v = seed.to_vec();
    for _ in 0..1 + next(4) {
        let at = next(v.len() + 1);
        match next(6) {
            0 if at < v.len() => v[at] ^= 1 << next(8),
            1 => v.insert(at, [b'\n', b' ', b'.', b'0', b'9', b'+', b'-', 0xff][next(8)]),
            2 if at < v.len() => {
                v.remove(at);
            }
            3 => v.truncate(at),
            4 if at < v.len() => {
                let end = (at + 1 + next(16)).min(v.len());
                let run = v[at..end].to_vec();
                v.splice(at..at, run);
            }
            _ => {
                if at < v.len() {
                    v[at] = next(256) as u8;
                }
            }
        }
    }
    v
}

fn replay(target: &str, check: fn(&[u8])) {
    let seeds = seeds(target);
    assert!(seeds.len() >= 10, "{target}: only {} seeds", seeds.len());
    for (i, (path, bytes)) in seeds.iter().enumerate() {
        let run = |input: &[u8], what: &str| {
            if std::panic::catch_unwind(|| check(input)).is_err() {
                panic!("{target}: {what} of {} fails the target's checks: {:?}", path.display(), input);
            }
        };
        run(bytes, "the seed");
        for k in 0..VARIANTS {
            let input = variant(bytes, (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (k as u64 + 1));
            run(&input, &format!("variant {k}"));
        }
    }
}

#[test]
fn command_parser_seeds_pass_the_targets_checks() {
    replay("command_parser", TARGETS[0].1);
}

#[test]
fn http_response_seeds_pass_the_targets_checks() {
    replay("http_response", TARGETS[1].1);
}

#[test]
fn peer_messages_seeds_pass_the_targets_checks() {
    replay("peer_messages", TARGETS[2].1);
}

#[test]
fn every_fuzz_target_is_a_wrapper_around_the_checks_replayed_here() {
    for (target, _) in TARGETS {
        let path = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&path).unwrap();
        let code: Vec<&str> = text.lines().filter(|l| !l.starts_with("//") && !l.trim().is_empty()).collect();
        assert_eq!(
            code,
            ["#![no_main]", &format!("libfuzzer_sys::fuzz_target!(|data: &[u8]| herd::fuzzing::{target}::run(data));")],
            "{}: a fuzz target must only call herd::fuzzing::{target}::run, which this test replays",
            path.display()
        );
    }
    // And every target has a corpus here.
    let bins = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (target, _) in TARGETS {
        assert!(bins.contains(&format!("name = \"{target}\"")), "fuzz/Cargo.toml lacks {target}");
    }
    assert_eq!(bins.matches("[[bin]]").count(), TARGETS.len(), "a fuzz target without a replay here");
}
