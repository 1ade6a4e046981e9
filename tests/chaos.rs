//! Chaos: the five-server herd under steady IAMAT load from several clients while servers are SIGKILLed
//! and restarted at random, one at a time. Afterwards every server's `/records` must hold, client by
//! client, the newest record that any server acknowledged: no lost update.
//!
//!     cargo test --test chaos                                       # 8 s of chaos (what CI runs)
//!     CHAOS_SECS=60 cargo test --release --test chaos -- --nocapture  # the full run (TESTING.md)

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const IDS: u64 = 40;
const CLIENTS: usize = 4;

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// One IAMAT, grader style, with short time-outs: Some(reply) when a server acknowledged it.
fn try_iamat(port: u16, line: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(line.as_bytes()).ok()?;
    s.shutdown(std::net::Shutdown::Write).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("AT ").then_some(out)
}

/// The client time (an integer here) of an `AT` line.
fn time_of(at: &str) -> u64 {
    at.trim_end().rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn no_acknowledged_update_is_lost_while_servers_are_killed_and_restarted() {
    let secs: u64 = std::env::var("CHAOS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut herd = Herd::start(HerdConfig::from_shipped("config/herd.json", ""));
    let names: Vec<String> = herd.config.members.iter().map(|m| m.name.clone()).collect();
    let ports: Vec<u16> = herd.config.members.iter().map(|m| m.port).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let clock = Arc::new(AtomicU64::new(1_700_000_000));
    let acked: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let attempts = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (stop, clock, acked, attempts, ports) =
                (stop.clone(), clock.clone(), acked.clone(), attempts.clone(), ports.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (c as u64 + 1);
                while !stop.load(Ordering::Relaxed) {
                    let id = xorshift(&mut rng) % IDS;
                    let port = ports[(xorshift(&mut rng) % ports.len() as u64) as usize];
                    let time = clock.fetch_add(1, Ordering::SeqCst);
                    attempts.fetch_add(1, Ordering::Relaxed);
                    if let Some(reply) = try_iamat(port, &format!("IAMAT chaos{id} +1+{c} {time}")) {
                        assert_eq!(time_of(&reply), time, "{reply}");
                        let mut acked = acked.lock().unwrap();
                        let best = acked.entry(id).or_insert(0);
                        *best = (*best).max(time);
                    }
                }
            })
        })
        .collect();

    // Chaos: one server at a time, SIGKILLed, down for 100-500 ms, restarted; 100-600 ms between kills.
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let end = Instant::now() + Duration::from_secs(secs);
    let mut kills = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100 + xorshift(&mut rng) % 500));
        let victim = names[(xorshift(&mut rng) % names.len() as u64) as usize].clone();
        herd.procs.get_mut(&victim).unwrap().signal(libc::SIGKILL);
        herd.kill(&victim);
        kills += 1;
        std::thread::sleep(Duration::from_millis(100 + xorshift(&mut rng) % 400));
        herd.restart(&victim);
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    // Every server must come to hold, for every client, a record at least as new as the newest one
    // acknowledged, and all of them the same one.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (tables, lost) = loop {
        let tables: Vec<HashMap<String, String>> = herd
            .config
            .members
            .iter()
            .map(|m| {
                let (_, body) = admin_get(m.admin_port, "/records");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|r| (r["client_id"].as_str().unwrap().to_string(), r["at"].as_str().unwrap().to_string()))
                    .collect()
            })
            .collect();
        let lost: Vec<(u64, u64, Option<u64>)> = acked
            .iter()
            .flat_map(|(&id, &t)| {
                tables.iter().filter_map(move |table| {
                    let held = table.get(&format!("chaos{id}")).map(|l| time_of(l));
                    (held.is_none_or(|h| h < t)).then_some((id, t, held))
                })
            })
            .collect();
        let agree = tables.windows(2).all(|w| w[0] == w[1]);
        if (lost.is_empty() && agree) || Instant::now() > deadline {
            break (tables, lost);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let total_acked = acked.len();
    println!(
        "chaos: {secs} s, {kills} kills, {} IAMATs tried, {total_acked} client ids acknowledged, lost updates: {}",
        attempts.load(Ordering::Relaxed),
        lost.len()
    );
    assert!(kills >= secs as usize, "the chaos ran ({kills} kills)");
    assert!(total_acked as u64 >= IDS / 2, "the load ran ({total_acked} ids acknowledged)");
    assert!(lost.is_empty(), "lost updates (id, acknowledged time, held time): {lost:?}");
    assert!(tables.windows(2).all(|w| w[0] == w[1]), "the servers disagree");
}
