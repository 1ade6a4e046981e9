//! Memory of the record store ALONE (no server around it): RSS of this process, read from /proc.
//! benches/records-mem.sh runs it next to the server-level measurement.
//!
//!     cargo bench --bench records_mem -- million [N]      N distinct clients, lines like the server's
//!     cargo bench --bench records_mem -- reuse [IDS] [UPDATES]
//!                                  UPDATES updates over IDS ids, line lengths uniform in 40..=300
//!
//! Prints `key value` lines.

use herd::protocol::{AtFields, Timestamp};
use herd::record::{RecordStore, Retention};
use std::time::Instant;

const NOW: Timestamp = Timestamp { secs: 1_764_870_000, nanos: 0 };

/// Resident set size of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// Offers a line with its fields found by its spaces: the store trusts the fields it is given (the server
/// validated them), and the reuse run pads time-diffs past the protocol's bound to reach 300 bytes.
fn offer(store: &mut RecordStore, line: &[u8]) -> bool {
    let sp: Vec<u32> = line.iter().enumerate().filter(|(_, &b)| b == b' ').map(|(i, _)| i as u32).collect();
    let fields = AtFields {
        server: (sp[0] + 1, sp[1]),
        client_id: (sp[2] + 1, sp[3]),
        location: (sp[3] + 1, sp[4]),
        client_time: (sp[4] + 1, line.len() as u32 - 1),
    };
    store.offer(line, fields, NOW).is_stored()
}

/// One million distinct clients `c0`.., location `+34.068930-118.445127`, a 20-byte time: the issue's
/// workload, with the line an IAMAT to server "Jaquez" would get (about 75 bytes).
fn million(n: u64) {
    let mut store = RecordStore::with_retention(Retention { max: Some(n as usize), max_age_s: None });
    let mut line = Vec::with_capacity(128);
    let before = rss();
    let t = Instant::now();
    let mut total_len = 0;
    for i in 0..n {
        line.clear();
        line.extend_from_slice(
            format!("AT Jaquez +12.345678901 c{i} +34.068930-118.445127 1764869987.654321099\n").as_bytes(),
        );
        total_len += line.len();
        assert!(offer(&mut store, &line));
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss();
    println!("records {}", store.len());
    println!("mean_line_bytes {:.1}", total_len as f64 / n as f64);
    println!("rss_growth_bytes_per_record {:.1}", (after - before) as f64 / n as f64);
    println!("store_bytes_per_record {:.1}", store.bytes() as f64 / n as f64);
    println!("inserts_per_second {:.0}", n as f64 / secs);
}

/// `updates` updates over `ids` ids, each line's length drawn uniformly from 40..=300: RSS after the
/// first pass over the ids against RSS at the end.
fn reuse(ids: u64, updates: u64) {
    let mut store = RecordStore::new();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut line = Vec::with_capacity(512);
    let base = rss();
    let mut first = 0;
    let t = Instant::now();
    for u in 0..updates.max(ids) {
        let id = u % ids;
        let len = 40 + (next() % 261) as usize;
        // "AT J +<zeros>0.000000000 <id in hex> +1+1 <time>\n": the time-diff takes the padding.
        let time = 1_000_000_000 + u;
        let short = format!("AT J +0.000000000 {id:x} +1+1 {time}\n");
        let pad = len - short.len();
        line.clear();
        line.extend_from_slice(format!("AT J +{}0.000000000 {id:x} +1+1 {time}\n", "0".repeat(pad)).as_bytes());
        assert_eq!(line.len(), len);
        assert!(offer(&mut store, &line));
        if u + 1 == ids {
            first = rss();
            println!("after_first_pass_rss_growth_bytes {}", first - base);
            println!("after_first_pass_store_bytes {}", store.bytes());
        }
    }
    let end = rss();
    println!("updates {}", updates.max(ids));
    println!("records {}", store.len());
    println!("end_rss_growth_bytes {}", end - base);
    println!("end_store_bytes {}", store.bytes());
    println!("rss_growth_ratio_end_over_first_pass {:.3}", (end - base) as f64 / (first - base) as f64);
    println!("updates_per_second {:.0}", updates as f64 / t.elapsed().as_secs_f64());
}

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let num = |i: usize, d: u64| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    match args.first().map(String::as_str) {
        Some("million") => million(num(1, 1_000_000)),
        Some("reuse") => reuse(num(1, 100_000), num(2, 10_000_000)),
        _ => eprintln!("usage: records_mem million [N] | reuse [IDS] [UPDATES]"),
    }
}
