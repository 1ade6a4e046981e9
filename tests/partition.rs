//! A silent partition (PROTOCOL section 5): a neighbour that vanishes without a FIN or a reset, as
//! when a cable is pulled or a firewall starts dropping. Nothing on the socket says the link is dead;
//! only the absence of traffic does.
//!
//! Two servers, Alpha and Beta, each in its own network namespace (Linux, root), joined through a
//! bridge in a third, hub namespace. Cutting Alpha's port out of the bridge (`ip link set … nomaster`)
//! drops every frame between them silently while both servers' own interfaces stay up; putting it
//! back heals the path. The test's client connections run on threads that entered the servers'
//! namespaces (`setns`), so nothing of it touches the host's network.
//!
//! Checked:
//! - each side notices the dead link within `limits.peer_dead_after_ms` (3000, the default) plus one
//!   second (the heartbeat period the detection waits on at most, and the metrics poll);
//! - each keeps serving its clients meanwhile, and records stored on one side do not cross;
//! - after the heal, each holds the other's records within 3 s: a redial (backoff capped at 250 ms)
//!   plus, for a dial that was already waiting on a SYN sent into the partition, its first
//!   retransmission (1 s).
//!
//! Needs root and `ip` (iproute2) with bridge support; skips loudly without them.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

const ALPHA_IP: &str = "10.203.0.1";
const BETA_IP: &str = "10.203.0.2";
const DEAD_AFTER: Duration = Duration::from_millis(3000);

/// Three namespaces (Alpha's, Beta's, the hub with the bridge), removed on drop.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, which: &str) -> String {
        format!("{}{which}", self.prefix)
    }

    /// Builds the network, or says why it cannot.
    fn build() -> Result<Net, String> {
        let prefix = format!("hp{}", std::process::id() % 100_000);
        let net = Net { prefix: prefix.clone() };
        let (hub, a, b) = (net.ns("h"), net.ns("a"), net.ns("b"));
        let mut steps: Vec<Vec<String>> = vec![
            vec!["netns", "add", &hub],
            vec!["-n", &hub, "link", "add", "br0", "type", "bridge"],
            vec!["-n", &hub, "link", "set", "br0", "up"],
        ]
        .into_iter()
        .map(|v| v.into_iter().map(String::from).collect())
        .collect();
        for (ns, ip) in [(&a, ALPHA_IP), (&b, BETA_IP)] {
            let (inner, outer) = (format!("{ns}i"), format!("{ns}o"));
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            steps.push(s(&["netns", "add", ns]));
            steps.push(s(&["link", "add", &inner, "type", "veth", "peer", "name", &outer]));
            steps.push(s(&["link", "set", &inner, "netns", ns]));
            steps.push(s(&["link", "set", &outer, "netns", &hub]));
            steps.push(s(&["-n", ns, "link", "set", &inner, "name", "eth0"]));
            steps.push(s(&["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]));
            steps.push(s(&["-n", ns, "link", "set", "eth0", "up"]));
            steps.push(s(&["-n", ns, "link", "set", "lo", "up"]));
            steps.push(s(&["-n", &hub, "link", "set", &outer, "master", "br0", "up"]));
        }
        for step in steps {
            ip(&step)?;
        }
        Ok(net)
    }

    /// Drops every frame between Alpha and the rest, silently (`false` heals).
    fn cut_alpha(&self, cut: bool) {
        let port = format!("{}o", self.ns("a"));
        let args: Vec<String> = if cut {
            vec!["-n".into(), self.ns("h"), "link".into(), "set".into(), port, "nomaster".into()]
        } else {
            vec!["-n".into(), self.ns("h"), "link".into(), "set".into(), port, "master".into(), "br0".into()]
        };
        ip(&args).unwrap();
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for which in ["a", "b", "h"] {
            let _ = ip(&["netns".into(), "del".into(), self.ns(which)]);
        }
    }
}

fn ip(args: &[String]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`: its sockets live there.
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns on a descriptor we own; it changes only this thread's network namespace.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Connect, send, half-close, read to the end, from inside `ns`.
fn ns_ask(ns: &str, ip: &'static str, port: u16, bytes: &[u8]) -> String {
    let bytes = bytes.to_vec();
    in_ns(ns, move || {
        let mut s = TcpStream::connect((ip, port)).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read to end");
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// Whether `herd_link_up{neighbour=…}` is 1 on the admin port (127.0.0.1 inside `ns`).
fn ns_link_up(ns: &str, admin: u16, neighbour: &str) -> bool {
    let raw = ns_ask(ns, "127.0.0.1", admin, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let (head, mut rest) = raw.split_once("\r\n\r\n").expect("an HTTP head");
    let mut text = String::new();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        loop {
            let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
            let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
            if size == 0 {
                break;
            }
            text.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
    } else {
        text.push_str(rest);
    }
    let label = format!("neighbour=\"{neighbour}\"");
    text.lines().any(|l| l.starts_with("herd_link_up{") && l.contains(&label) && l.ends_with(" 1"))
}

/// The first line of a WHATSAT for `id` (the stored AT line, or the `?` echo).
fn ns_record(ns: &str, ip: &'static str, port: u16, id: &str) -> String {
    let reply = ns_ask(ns, ip, port, format!("WHATSAT {id} 1 0\n").as_bytes());
    reply.split('\n').next().unwrap_or("").to_string()
}

#[test]
fn a_silent_partition_is_noticed_served_through_and_healed() {
    let net = match Net::build() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("\n*** SKIPPED a_silent_partition_is_noticed_served_through_and_healed: {why} (needs root and ip netns) ***\n");
            return;
        }
    };
    let dir = TempDir::new("partition");
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let config = format!(
        r#"{{"servers": [
            {{"name": "Alpha", "host": "{ALPHA_IP}", "port": {}, "peer_port": {}, "admin_port": {}}},
            {{"name": "Beta", "host": "{BETA_IP}", "port": {}, "peer_port": {}, "admin_port": {}}}],
          "links": [["Alpha", "Beta"]], "log_dir": {:?}}}"#,
        ports[0],
        ports[1],
        ports[2],
        ports[3],
        ports[4],
        ports[5],
        dir.path().join("logs").to_string_lossy()
    );
    let path = dir.path().join("herd.json");
    std::fs::write(&path, config).unwrap();
    let serve = |name: &str, ns: String| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, herd_bin(), "serve", name, "--config", path.to_str().unwrap()]);
        Proc::start_command(name, cmd, " listening on ")
    };
    let (ns_a, ns_b) = (net.ns("a"), net.ns("b"));
    let alpha = serve("Alpha", ns_a.clone());
    let beta = serve("Beta", ns_b.clone());
    alpha.wait_stderr("linked to ", 1, Duration::from_secs(10));
    beta.wait_stderr("linked to ", 1, Duration::from_secs(10));
    let (a_port, a_admin, b_port, b_admin) = (ports[0], ports[2], ports[3], ports[5]);
    let before = ns_ask(&ns_a, ALPHA_IP, a_port, b"IAMAT before +1+1 1\n");
    let deadline = Instant::now() + Duration::from_secs(2);
    while ns_record(&ns_b, BETA_IP, b_port, "before") != before.trim_end() {
        assert!(Instant::now() < deadline, "the link does not carry records before the cut");
    }

    // The cut: no FIN, no reset, no error on either socket.
    net.cut_alpha(true);
    let cut = Instant::now();
    let during_a = ns_ask(&ns_a, ALPHA_IP, a_port, b"IAMAT during-a +2+2 2\n");
    let during_b = ns_ask(&ns_b, BETA_IP, b_port, b"IAMAT during-b +3+3 3\n");
    assert!(during_a.starts_with("AT Alpha ") && during_b.starts_with("AT Beta "), "both serve clients");

    // Each side notices, within peer_dead_after_ms and a heartbeat period.
    let (mut a_noticed, mut b_noticed) = (None, None);
    while a_noticed.is_none() || b_noticed.is_none() {
        if a_noticed.is_none() && !ns_link_up(&ns_a, a_admin, "Beta") {
            a_noticed = Some(cut.elapsed());
        }
        if b_noticed.is_none() && !ns_link_up(&ns_b, b_admin, "Alpha") {
            b_noticed = Some(cut.elapsed());
        }
        assert!(
            cut.elapsed() < DEAD_AFTER + Duration::from_secs(1),
            "dead link not noticed within {DEAD_AFTER:?} + 1 s: Alpha {a_noticed:?}, Beta {b_noticed:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("noticed after: Alpha {a_noticed:?}, Beta {b_noticed:?}");
    // Still serving, and nothing crossed.
    assert!(ns_ask(&ns_b, BETA_IP, b_port, b"IAMAT still +4+4 4\n").starts_with("AT Beta "));
    assert!(ns_record(&ns_b, BETA_IP, b_port, "during-a").starts_with("? "), "a record crossed the cut");
    assert!(ns_record(&ns_a, ALPHA_IP, a_port, "during-b").starts_with("? "), "a record crossed the cut");

    // The heal: each side catches up on what the other stored.
    net.cut_alpha(false);
    let healed = Instant::now();
    loop {
        let b_has = ns_record(&ns_b, BETA_IP, b_port, "during-a") == during_a.trim_end();
        let a_has = ns_record(&ns_a, ALPHA_IP, a_port, "during-b") == during_b.trim_end();
        if a_has && b_has {
            break;
        }
        assert!(
            healed.elapsed() < Duration::from_secs(3),
            "not caught up 3 s after the heal: Alpha has Beta's: {a_has}, Beta has Alpha's: {b_has}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("caught up {:?} after the heal", healed.elapsed());
}
