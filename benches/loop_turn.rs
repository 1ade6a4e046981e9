//! One loop turn of a real server, in process: a client writes N pipelined IAMATs, the server runs
//! `turn()` until every reply is back. Measures the whole path (epoll, read, parse, store, format,
//! log, write) without a second process or a scheduler in the way.
//!
//!     cargo bench --bench loop_turn

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use herd::config::Config;
use herd::server::Server;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn server(log_dir: &Path) -> (Server, u16) {
    let port = free_port();
    let text = format!(
        r#"{{"servers": [{{"name": "Bench", "port": {port}, "peer_port": {}}}], "log_dir": {:?}}}"#,
        free_port(),
        log_dir.to_string_lossy()
    );
    let config = Config::parse(Path::new("bench.json"), &text).unwrap();
    (Server::bind(&config, "Bench").unwrap(), port)
}

fn loop_turn(c: &mut Criterion) {
    for log in [true, false] {
        run(c, log);
    }
}

/// `log`: with the log file (as deployed) or without it (what logging costs is the difference).
fn run(c: &mut Criterion, log: bool) {
    let base = std::env::var_os("HERD_BENCH_LOG_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("herd-bench-{}", std::process::id()));
    let (mut server, port) = server(&dir);
    if !log {
        server.disable_log();
    }
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client.set_nodelay(true).unwrap();
    client.set_nonblocking(true).unwrap();
    server.turn().unwrap(); // accept

    let mut g = c.benchmark_group(if log { "loop_turn" } else { "loop_turn_nolog" });
    for n in [1usize, 16, 64] {
        g.throughput(Throughput::Elements(n as u64));
        let mut time = 1_700_000_000u64;
        let mut batch = Vec::with_capacity(n * 64);
        let mut buf = vec![0u8; 1 << 16];
        g.bench_function(format!("iamat_x{n}"), |b| {
            b.iter(|| {
                // Newer client times each round, so every IAMAT replaces its stored record.
                time += 1;
                batch.clear();
                for i in 0..n {
                    writeln!(batch, "IAMAT bench{i} +34.068930-118.445127 {time}.5").unwrap();
                }
                client.write_all(&batch).unwrap();
                let mut lines = 0;
                while lines < n {
                    server.turn().unwrap();
                    loop {
                        match client.read(&mut buf) {
                            Ok(0) => panic!("server closed"),
                            Ok(k) => lines += buf[..k].iter().filter(|&&b| b == b'\n').count(),
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        });
    }
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, loop_turn);
criterion_main!(benches);
