//! Propagation along shortest-path trees (issue 19), with real server processes: each record crosses
//! each server once while every link is up, and the herd repairs itself when one is not.
//!
//! The expected counts come from the graph alone: with every link up, a record stored at one server
//! reaches the other `N - 1` exactly once each, so the records received summed over the herd are
//! `(N - 1)` per record. Plain flooding sends `2E - (N - 1)`: 8 per record on the default herd (E = 6),
//! of which 4 arrive as duplicates.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// The value of the sample `name{server="..."}` on a server's `/metrics`.
fn metric(admin_port: u16, name: &str) -> u64 {
    let (status, text) = admin_get(admin_port, "/metrics");
    assert_eq!(status, 200, "{text}");
    let prefix = format!("{name}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()).sum()
}

/// Sends `count` IAMATs for ids `{tag}0..` to `port` in one pipelined burst and reads every reply.
fn iamats(port: u16, tag: &str, count: usize) {
    let mut s = connect(port);
    let now = now_text();
    let mut burst = String::new();
    for i in 0..count {
        burst.push_str(&format!("IAMAT {tag}{i} +34.068930-118.445127 {now}\n"));
    }
    s.write_all(burst.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut replies = String::new();
    s.read_to_string(&mut replies).unwrap();
    assert_eq!(replies.lines().filter(|l| l.starts_with("AT ")).count(), count, "every IAMAT answered");
}

/// Waits until every member of `herd` holds `want` records (its `herd_records` gauge).
fn wait_held(herd: &Herd, want: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    for m in &herd.config.members {
        loop {
            let held = metric(m.admin_port, "herd_records");
            if held == want {
                break;
            }
            assert!(Instant::now() < deadline, "{} holds {held} records of {want} after {limit:?}", m.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn sum(herd: &Herd, name: &str) -> u64 {
    herd.config.members.iter().map(|m| metric(m.admin_port, name)).sum()
}

/// The check of issue 19 on the default herd: IAMATs at Bailey, records received summed over all five
/// servers = 4 per record (plain flooding: 8), none of them a duplicate, none flooded.
#[test]
fn on_the_default_herd_each_record_is_received_once_per_server() {
    let herd = Herd::start(HerdConfig::from_shipped("config/herd.json", ""));
    const RECORDS: u64 = 2_000;
    iamats(herd.port("Bailey"), "tree", RECORDS as usize);
    wait_held(&herd, RECORDS, Duration::from_secs(20));
    let received = sum(&herd, "herd_records_received_total");
    let duplicates = sum(&herd, "herd_records_duplicate_total");
    let forwarded = sum(&herd, "herd_records_forwarded_total");
    let flooded = sum(&herd, "herd_records_flooded_total");
    assert_eq!((received, duplicates), (4 * RECORDS, 0), "received, duplicates (plain flooding: 8 and 4 per record)");
    assert_eq!((forwarded, flooded), (4 * RECORDS, 0), "forwarded, of which flooded");
    // Bytes follow messages: four copies of a line of about 75 bytes, plus frames, OFF and ACK lines and
    // heartbeats (plain flooding: eight copies, over 600 bytes).
    let line = format!("AT Bailey +0.000000000 tree1000 +34.068930-118.445127 {}\n", now_text()).len() as u64;
    let bytes = sum(&herd, "herd_peer_bytes_out_total");
    assert!(bytes < RECORDS * (4 * line + 40), "{bytes} peer bytes for {RECORDS} records of ~{line} bytes");
}

/// 21 server processes on a sparse graph (a ring with four chords, 25 links): records stored at three
/// servers reach all 21, each server receiving each record once: N - 1 = 20 messages per record, against
/// 2E - (N - 1) = 30 for plain flooding. Every record is checked byte for byte at the farthest server.
#[test]
fn twenty_one_servers_on_a_sparse_graph_send_n_minus_1_messages_per_record() {
    const N: usize = 21;
    let names: Vec<String> = (0..N).map(|i| format!("S{i:02}")).collect();
    let mut links: Vec<(usize, usize)> = (0..N).map(|i| (i, (i + 1) % N)).collect();
    links.extend([(0, 10), (5, 15), (3, 17), (8, 19)]);
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let link_refs: Vec<(&str, &str)> = links.iter().map(|&(a, b)| (name_refs[a], name_refs[b])).collect();
    let herd = Herd::start(HerdConfig::new(&name_refs, &link_refs, ""));
    const EACH: u64 = 200;
    for (origin, tag) in [(0, "a"), (7, "b"), (13, "c")] {
        iamats(herd.port(name_refs[origin]), tag, EACH as usize);
    }
    wait_held(&herd, 3 * EACH, Duration::from_secs(30));
    let records = 3 * EACH;
    assert_eq!(sum(&herd, "herd_records_received_total"), (N as u64 - 1) * records);
    assert_eq!(sum(&herd, "herd_records_forwarded_total"), (N as u64 - 1) * records);
    assert_eq!(sum(&herd, "herd_records_duplicate_total"), 0);
    let far = herd.port(name_refs[12]);
    for (tag, origin) in [("a", "S00"), ("b", "S07"), ("c", "S13")] {
        let line = whatsat_first_line(far, &format!("{tag}{}", EACH - 1));
        assert!(line.starts_with(&format!("AT {origin} ")), "{line}");
    }
}

/// A tree link that is down: Bona is the tree parent of Clark for Bailey's records. With Bona gone,
/// Bailey's records flood around it (through Campbell and Jaquez), every live server gets every one,
/// and once Bona is back it catches up and the tree carries records again without floods.
#[test]
fn a_broken_tree_floods_around_the_gap_and_the_tree_returns_when_it_heals() {
    let mut herd = Herd::start(HerdConfig::from_shipped("config/herd.json", ""));
    herd.kill("Bona");
    let bailey = herd.port("Bailey");
    iamats(bailey, "gap", 300);
    let live: Vec<&Member> = herd.config.members.iter().filter(|m| m.name != "Bona").collect();
    for m in &live {
        let deadline = Instant::now() + Duration::from_secs(10);
        while metric(m.admin_port, "herd_records") < 300 {
            assert!(Instant::now() < deadline, "{} lacks records", m.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(metric(herd.config.member("Bailey").admin_port, "herd_records_flooded_total") >= 300);
    herd.restart("Bona");
    herd.wait_linked();
    // Each neighbour's link *to* the new Bona is up too (its second "linked to Bona").
    for name in ["Bailey", "Campbell", "Clark"] {
        herd.procs[name].wait_stderr("linked to Bona", 2, Duration::from_secs(10));
    }
    wait_held(&herd, 300, Duration::from_secs(15));
    // Healed: the next records go down the tree again, received once per server.
    let before = sum(&herd, "herd_records_received_total");
    let flooded = sum(&herd, "herd_records_flooded_total");
    iamats(bailey, "healed", 100);
    wait_held(&herd, 400, Duration::from_secs(15));
    assert_eq!(sum(&herd, "herd_records_received_total") - before, 4 * 100);
    assert_eq!(sum(&herd, "herd_records_flooded_total"), flooded, "no floods once every link is up");
}

/// Bona, the tree parent of Clark for Bailey's records, is SIGKILLed in the middle of a burst: what
/// Bailey had sent it unacknowledged is repaired, what follows goes round it, and every other live server
/// ends with every record Bailey answered. Clark, below Bona, ends with every record Bona had not
/// acknowledged to Bailey; of those Bona had acknowledged, it may lack the ones Bona had written towards
/// it but the kernel had not delivered when Bona died (the window the README names under "Repair"). Those
/// come once Bona is back: it catches up from its neighbours and floods on what it learns.
#[test]
fn a_tree_server_killed_mid_burst_loses_nothing_for_the_servers_below_it() {
    let mut herd = Herd::start(HerdConfig::from_shipped("config/herd.json", ""));
    const RECORDS: usize = 20_000;
    let mut s = connect(herd.port("Bailey"));
    let now = now_text();
    let burst: String = (0..RECORDS).map(|i| format!("IAMAT mid{i} +34.068930-118.445127 {now}\n")).collect();
    let writer = {
        let mut s = s.try_clone().unwrap();
        std::thread::spawn(move || {
            s.write_all(burst.as_bytes()).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    // Kill Bona once Bailey has answered a quarter of the burst: records are in flight on its links.
    let mut replies = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    let mut killed = false;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        replies.extend_from_slice(&buf[..n]);
        if !killed && replies.iter().filter(|&&b| b == b'\n').count() >= RECORDS / 4 {
            herd.kill("Bona");
            killed = true;
        }
    }
    writer.join().unwrap();
    assert!(killed);
    assert_eq!(replies.iter().filter(|&&b| b == b'\n').count(), RECORDS, "every IAMAT answered");
    let wait_all = |herd: &Herd, name: &str| {
        let m = herd.config.member(name);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let held = metric(m.admin_port, "herd_records");
            if held == RECORDS as u64 {
                break;
            }
            if Instant::now() >= deadline {
                print_record_counters(herd, "Bona");
            }
            assert!(Instant::now() < deadline, "{name} holds {held} of {RECORDS} records");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for name in ["Bailey", "Campbell", "Jaquez"] {
        wait_all(&herd, name);
    }
    // Bailey's stream numbers its records from 1 in the order of the burst: mid{i} is seq i + 1. Every one
    // past what Bona acknowledged must reach Clark without Bona.
    let acked = labelled_metric(herd.config.member("Bailey").admin_port, "herd_peer_acked_offset", "Bona");
    if acked == RECORDS as u64 {
        // Bona acknowledged the whole burst before it died (Bailey can answer far ahead of what this test
        // has read): this run tests only the restart. Said aloud, not failed: it is the machine's timing.
        println!("skipped in part: Bona had acknowledged all {RECORDS} records before it was killed");
    }
    let clark = herd.config.member("Clark").clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(clark.admin_port, "herd_records") < RECORDS as u64 - acked && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let asks: String = (acked as usize..RECORDS).map(|i| format!("WHATSAT mid{i} 1 1\n")).collect();
    let answers = pipelined(clark.port, asks);
    let unknown: Vec<&str> = answers.lines().filter(|l| l.starts_with("? ")).take(5).collect();
    assert!(unknown.is_empty(), "Clark lacks records Bona never acknowledged (after {acked}): {unknown:?}");
    let reflooded = metric(herd.config.member("Bailey").admin_port, "herd_records_reflooded_total");
    let held = metric(clark.admin_port, "herd_records");
    println!("Bona acknowledged {acked}; Bailey reflooded {reflooded}; Clark held {held} without Bona");
    // The window: back, Bona relinks, catches up and passes on what Clark lacks.
    herd.restart("Bona");
    wait_all(&herd, "Clark");
}

/// Sends `requests` on one connection from a thread of its own while this one reads every reply (a long
/// pipeline: the server stops reading while its replies wait to be read).
fn pipelined(port: u16, requests: String) -> String {
    let mut s = connect(port);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(requests.as_bytes()).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut answers = String::new();
    s.read_to_string(&mut answers).unwrap();
    writer.join().unwrap();
    answers
}

/// The value of `name{neighbour="..."}` on a server's `/metrics`.
fn labelled_metric(admin_port: u16, name: &str, neighbour: &str) -> u64 {
    let (_, text) = admin_get(admin_port, "/metrics");
    let label = format!("neighbour=\"{neighbour}\"");
    let line = text.lines().find(|l| l.starts_with(name) && l.contains(&label)).expect("the metric");
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

/// Every live server's record counters, for a failure's message.
fn print_record_counters(herd: &Herd, dead: &str) {
    for m in herd.config.members.iter().filter(|m| m.name != dead) {
        let (_, text) = admin_get(m.admin_port, "/metrics");
        let counters: Vec<&str> = text.lines().filter(|l| l.starts_with("herd_records")).collect();
        eprintln!("{}: {}", m.name, counters.join(" | "));
    }
}

/// Reads from `s` until what was read contains `needle`; returns all of it.
fn read_until_contains(s: &mut std::net::TcpStream, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        text.push_str(&String::from_utf8(read_until(s, b"\n")).unwrap());
    }
    text
}

/// A repair's notice on the wire (peer protocol version 4), with real server A and the test playing its
/// neighbours B and C (links A-B, A-C, B-C). A gets B's record down B's tree (B is A's parent there), then
/// a notice of it from C: A relays its copy, and its only other live link is B, which holds the record, so
/// B gets the notice (`N` frame: client id and client time), not the record. The same with C's record
/// and a notice from B, except that C answered A's handshake with `v=3`: a version 3 neighbour gets the
/// record itself in a repair frame instead, as version 3 did.
#[test]
fn a_repair_sends_a_tree_neighbour_holding_the_record_a_notice_and_a_version_3_one_the_record() {
    let config = HerdConfig::new(&["A", "B", "C"], &[("A", "B"), ("A", "C"), ("B", "C")], "");
    let a = config.member("A").clone();
    let listen = |name: &str| std::net::TcpListener::bind(("127.0.0.1", config.member(name).peer_port)).unwrap();
    let (b_listener, c_listener) = (listen("B"), listen("C"));
    let _a = config.serve("A");
    // A's sending links: B speaks version 4, C version 3.
    let mut from_a = Vec::new();
    for (listener, version) in [(&b_listener, 4), (&c_listener, 3)] {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = String::from_utf8(read_until(&mut s, b"\n")).unwrap();
        assert!(hello.split_whitespace().any(|f| f == "v=4"), "{hello}");
        let me = hello.split_whitespace().nth(2).unwrap().to_string();
        s.write_all(format!("WELCOME {me} n2 - v={version}\n").as_bytes()).unwrap();
        read_until_contains(&mut s, "PROOF -\n");
        from_a.push(s);
    }
    // Our sending links to A, as B and as C.
    let dial = |name: &str| {
        let mut s = connect(a.peer_port);
        s.write_all(format!("HELLO {name} A n1\nPROOF -\n").as_bytes()).unwrap();
        s
    };
    let mut to_a = [dial("B"), dial("C")];
    let now = now_text();
    let frame = |mode: char, body: &str| format!("{mode} {:05}\n{body}", body.len());
    // (origin and its socket index, the record's client id): B's record, noticed by C; C's, noticed by B.
    for (origin, id) in [(0, "fromb"), (1, "fromc")] {
        let name = ["B", "C"][origin];
        let line = format!("AT {name} +0.100000000 {id} +34.068930-118.445127 {now}\n");
        to_a[origin].write_all(frame('T', &line).as_bytes()).unwrap();
        wait_record(a.port, id, &line[..line.len() - 1], Duration::from_secs(10));
        let notice = format!("{id} {now}\n");
        to_a[1 - origin].write_all(frame('N', &notice).as_bytes()).unwrap();
        // What A sent the origin, its tree parent for this record, up to the repair.
        let (want, until) = match origin {
            0 => (frame('N', &notice), notice.clone()),
            _ => (frame('R', &line), line.clone()),
        };
        let text = read_until_contains(&mut from_a[origin], &until);
        assert!(text.contains(&want), "{name}: {want:?} not in {text:?}");
        assert_eq!(text.matches(id).count(), 1, "{name}: the record went once, as a notice or a repair: {text:?}");
    }
    assert_eq!(metric(a.admin_port, "herd_notices_received_total"), 2);
    assert_eq!(metric(a.admin_port, "herd_notices_sent_total"), 2, "counted as notices, whatever C was sent");
}
