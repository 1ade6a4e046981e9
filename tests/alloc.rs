//! Heap allocations per IAMAT in steady state, counted by a global allocator around an in-process
//! server (counts, unlike times, do not drift on a shared machine, so they can be asserted).
//!
//! The count covers every thread of this process, not only the loop's: the server's log writer and its
//! Places shaper run on threads of their own, and an allocation there per IAMAT (a log line copied into
//! a fresh `String`, say) costs the same as one on the loop. While a round is counted, this test's own
//! thread allocates nothing (its buffers are made before), and the test harness's threads are idle.

use herd::config::Config;
use herd::server::Server;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

struct Counting;

/// Whether allocations are counted now, and how many were, on any thread.
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `rounds` batches of `depth` IAMATs for ids 0..depth (newer times each round) and returns the
/// allocations counted on every thread of the process meanwhile.
fn run(server: &mut Server, client: &mut TcpStream, depth: usize, rounds: usize, time: &mut u64) -> u64 {
    let mut batch = Vec::with_capacity(depth * 64);
    let mut buf = vec![0u8; 1 << 16];
    ALLOCS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    for _ in 0..rounds {
        *time += 1;
        batch.clear();
        for i in 0..depth {
            writeln!(batch, "IAMAT alloc{i} +34.068930-118.445127 {time}.25").unwrap();
        }
        client.write_all(&batch).unwrap();
        let mut lines = 0;
        while lines < depth {
            server.turn().unwrap();
            loop {
                match client.read(&mut buf) {
                    Ok(0) => panic!("closed"),
                    Ok(k) => lines += buf[..k].iter().filter(|&&b| b == b'\n').count(),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }
    // The loop hands its log lines to the writer thread every 50 ms of turns, so the writer's work for
    // this run's lines (but the last 50 ms) happens while it is counted.
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCS.load(Ordering::SeqCst)
}

#[test]
fn a_steady_state_iamat_allocates_nothing() {
    let dir = std::env::temp_dir().join(format!("herd-alloc-{}", std::process::id()));
    let text = format!(
        r#"{{"servers": [{{"name": "Alloc", "port": {}, "peer_port": {}}}], "log_dir": {:?}}}"#,
        free_port(),
        free_port(),
        dir.to_string_lossy()
    );
    let config = Config::parse(Path::new("alloc.json"), &text).unwrap();
    let mut server = Server::bind(&config, "Alloc").unwrap();
    let port = server.local_addrs().0.port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_nodelay(true).unwrap();
    client.set_nonblocking(true).unwrap();
    server.turn().unwrap();
    let mut time = 1_700_000_000;
    for depth in [1usize, 16, 1200] {
        // Warm-up: the records exist, buffers have grown to their working size.
        run(&mut server, &mut client, depth, 200, &mut time);
        let rounds = (2000 / depth).max(20);
        let allocs = run(&mut server, &mut client, depth, rounds, &mut time);
        let per = allocs as f64 / (rounds * depth) as f64;
        println!("depth {depth}: {allocs} allocations for {} IAMATs ({per:.4} each)", rounds * depth);
        // The stored record reuses its buffer, replies and log lines go to buffers that are kept:
        // nothing is allocated per IAMAT (a rare log-buffer swap or timer-heap growth aside).
        assert!(per < 0.01, "depth {depth}: {per} allocations per IAMAT");
        if depth > 256 {
            // 1,200 IAMATs (62,400 bytes) arrive in one read and are answered 256 a turn (the command
            // budget). The lines left over are copied out of the shared read buffer once, and answered
            // from that copy in place; the queues that bring the connection back each turn (`again`,
            // `dirty`) keep their allocations. One allocation per batch, where there were ten.
            assert!(allocs <= rounds as u64 * 3 / 2, "depth {depth}: {allocs} allocations for {rounds} batches");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
