//! The propagation simulation (issue 19 point 3): the herd's own propagation code (`herd::sim`, one real
//! `Ctx` per server) on generated graphs of 10, 100 and 1,000 servers, shortest-path trees against plain
//! flooding, with every link up, with few or many random link failures that heal, and with failures of
//! which a few never heal.
//!
//! ```text
//! cargo bench --bench propagation                 # the table; writes benches/plots/propagation.{md,svg}
//! cargo bench --bench propagation -- --quick      # N = 10 and 30, prints only
//! cargo bench --bench propagation -- --n 100 --seed 7 --failures 50 --permanent 2   # one graph, both schemes
//! ```

use herd::sim::{self, report, Outcome, Params, Scheme};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<u64> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
    };
    let quick = args.iter().any(|a| a == "--quick");
    let seed = value("--seed").unwrap_or(1);
    let sizes: Vec<usize> = match value("--n") {
        Some(n) => vec![n as usize],
        None if quick => vec![10, 30],
        None => vec![10, 100, 1000],
    };
    let mut rows: Vec<Outcome> = Vec::new();
    for &n in &sizes {
        let links = sim::graph(n, 4.5, &mut sim::Rng::new(seed)).len();
        // "few failures": one link in forty fails once and heals; "failures": one in four; "permanent":
        // one in four, and a few more never come back.
        let few = (links / 40).max(1);
        let failures = value("--failures").map_or((links / 4).max(3), |f| f as usize);
        let permanent = value("--permanent").map_or((links / 50).max(1), |p| p as usize);
        let scenarios: Vec<(usize, usize)> = match (value("--failures"), value("--permanent")) {
            (None, None) => vec![(0, 0), (few, 0), (failures, 0), (failures, permanent)],
            _ => vec![(failures, value("--permanent").unwrap_or(0) as usize)],
        };
        for (f, p) in scenarios {
            for scheme in [Scheme::Tree, Scheme::Flood] {
                let mut params = Params::new(n, scheme, seed).with_failures(f, p);
                if let Some(r) = value("--records") {
                    params.records = r as usize;
                    params.clients = (r as usize / 4).max(1);
                }
                let started = Instant::now();
                let o = sim::run(&params);
                eprintln!(
                    "N={n} {} {}: {:.2} msgs/record, max {} (bound {}), {} lost msgs, {} missing, {:.1} s",
                    report::scenario(&o),
                    scheme.name(),
                    o.sends_per_record(),
                    o.max_sends,
                    o.bound,
                    o.messages_lost,
                    o.missing,
                    started.elapsed().as_secs_f64()
                );
                eprintln!("  most sends: {}; without catch-ups at most {}", o.worst, o.max_live_sends);
                for m in &o.missing_examples {
                    eprintln!("  {m}");
                }
                rows.push(o);
            }
        }
    }
    let table = report::table(&rows);
    println!("{table}");
    if !quick && value("--n").is_none() && value("--failures").is_none() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/plots");
        std::fs::create_dir_all(&dir).expect("benches/plots");
        std::fs::write(dir.join("propagation.md"), &table).expect("write the table");
        std::fs::write(dir.join("propagation.svg"), report::svg(&rows)).expect("write the plot");
        eprintln!("wrote {}/propagation.{{md,svg}}", dir.display());
    }
}
