//! Heap allocations per IAMAT in steady state, counted by a global allocator around an in-process
//! server (counts, unlike times, do not drift on a shared machine, so they can be asserted).

use herd::config::Config;
use herd::server::Server;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Sends `rounds` batches of `depth` IAMATs for ids 0..depth (newer times each round) and returns the
/// allocations counted on this thread while the server handled them.
fn run(server: &mut Server, client: &mut TcpStream, depth: usize, rounds: usize, time: &mut u64) -> u64 {
    let mut batch = Vec::with_capacity(depth * 64);
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    for _ in 0..rounds {
        *time += 1;
        batch.clear();
        for i in 0..depth {
            writeln!(batch, "IAMAT alloc{i} +34.068930-118.445127 {time}.25").unwrap();
        }
        client.write_all(&batch).unwrap();
        let mut lines = 0;
        while lines < depth {
            COUNTING.with(|c| c.set(true));
            server.turn().unwrap();
            COUNTING.with(|c| c.set(false));
            loop {
                match client.read(&mut buf) {
                    Ok(0) => panic!("closed"),
                    Ok(k) => lines += buf[..k].iter().filter(|&&b| b == b'\n').count(),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("{e}"),
                }
            }
        }
        total += ALLOCS.with(|a| a.replace(0));
    }
    total
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
