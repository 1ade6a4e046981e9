//! The propagation simulation (`herd::sim`: the real `Ctx` of every server, over a simulated network),
//! small: 10 and 30 servers. Expected values come from the graph alone: a spanning tree of N servers
//! has N - 1 links, and plain flooding sends a record over every link once plus once more over each link
//! outside the tree it follows, 2E - (N - 1) sends; after every failure has healed, each server must hold
//! the newest record of every client, which the simulation checks against the workload it drew.

use herd::sim::{self, Outcome, Params, Scheme};

const SEEDS: [u64; 2] = [1, 2];

/// A run of `n` servers with 300 IAMATs; `distinct`: every IAMAT for a client of its own, so no record
/// is overtaken by a newer one of its client and every record must reach every server.
fn run(n: usize, scheme: Scheme, seed: u64, failures: usize, distinct: bool) -> Outcome {
    let mut p = Params::new(n, scheme, seed).with_failures(failures, 0);
    p.records = 300;
    p.clients = if distinct { 300 } else { 75 };
    sim::run(&p)
}

fn edges(n: usize, seed: u64) -> usize {
    sim::graph(n, 4.5, &mut sim::Rng::new(seed)).len()
}

#[test]
fn with_every_link_up_a_record_crosses_n_minus_1_links_in_its_tree_and_2e_minus_n_plus_1_flooding() {
    for n in [10, 30] {
        for seed in SEEDS {
            let e = edges(n, seed);
            let tree = run(n, Scheme::Tree, seed, 0, true);
            let flood = run(n, Scheme::Flood, seed, 0, true);
            for (o, per_record) in [(&tree, n - 1), (&flood, 2 * e - (n - 1))] {
                let what = format!("N={n} seed {seed} {}", o.params.scheme.name());
                assert_eq!(o.missing, 0, "{what}: {:?}", o.missing_examples);
                assert_eq!(o.sends(), (o.records * per_record) as u64, "{what}: sends");
                assert_eq!(o.max_sends, per_record as u64, "{what}: most sends of one record");
                assert_eq!(o.messages_lost, 0, "{what}");
            }
            assert_eq!((tree.flood_sends, tree.sync_sends), (0, 0), "N={n}: nothing floods while the trees are whole");
            let flooded = (flood.tree_sends, flood.repair_sends, flood.notice_sends);
            assert_eq!(flooded, (0, 0, 0), "N={n}: without trees every send is a flood");
            // Bytes: every record line sent, and a little framing; the trees' a third of flooding's or less.
            for o in [&tree, &flood] {
                assert!(o.total_bytes() > o.record_bytes && o.record_bytes > o.sends() * 40, "N={n}");
            }
            assert!(
                3 * tree.total_bytes() < flood.total_bytes(),
                "N={n}: {} against {}",
                tree.total_bytes(),
                flood.total_bytes()
            );
            // What travels off the trees with every link up is announcements only: OFF lines of links that
            // carried no record (paced) and their ACKs, well under the 10% of record bytes issue 19 allows.
            assert!(tree.non_tree_fraction() < 0.10, "N={n}: {:.1}% off the trees", 100.0 * tree.non_tree_fraction());
        }
    }
}

#[test]
fn after_random_link_failures_heal_every_server_holds_every_clients_newest_record() {
    for n in [10, 30] {
        for seed in SEEDS {
            let failures = edges(n, seed) / 4;
            for scheme in [Scheme::Tree, Scheme::Flood] {
                let o = run(n, scheme, seed, failures, false);
                let what = format!("N={n} seed {seed} {} with {failures} failures", scheme.name());
                assert!(o.messages_lost > 0, "{what}: the failures must cost something to test anything");
                assert_eq!(o.missing, 0, "{what}: records lost: {:?}", o.missing_examples);
                assert!(o.convergence_ms.is_some(), "{what}: never converged");
            }
        }
    }
}

/// Issue 19: no acknowledged update is lost when links fail and come back, at 100 servers: five links
/// failing once (20-300 ms) during 1,000 IAMATs, seed 1. (With repairs deduplicated by the greatest
/// index of a repair stream, commit fe08931, s8, s77, s78 and s79 ended without c10's newest record: its
/// repair reached them after a greater index of the stream had, over a faster path, and was dropped.)
#[test]
fn after_a_few_link_failures_heal_every_one_of_100_servers_holds_every_clients_newest_record() {
    let edges = edges(100, 1);
    let o = sim::run(&Params::new(100, Scheme::Tree, 1).with_failures(edges / 40, 0));
    assert_eq!(o.missing, 0, "records lost: {:?}", o.missing_examples);
}

/// Issue 19: "a record never costs more than plain flooding's 2E - (N - 1) messages, even while
/// repairing". Every record's tree, flood and repair sends together stay within it, under link failures
/// that heal and under some that never do, at 10 and 30 servers and four seeds: per version, each server
/// relays once, never sends the record back where it first came from, sends it on each other link once
/// at most, and sends a notice instead where the neighbour holds it. (With repairs sent as records to
/// every live link, 2e53e5c to bd82ff6, the first run here cost one record 57 sends against 37.)
///
/// A link-up catch-up is counted apart: plain flooding pays it too, and with it plain flooding itself
/// passes 2E - (N - 1) in these runs, which the test shows as well, so the bound cannot mean it.
#[test]
fn while_repairing_a_record_costs_at_most_2e_minus_n_plus_1_messages() {
    let mut flooding_past_its_bound = 0;
    for n in [10, 30] {
        for seed in [1, 2, 3, 4] {
            let e = edges(n, seed);
            for (failures, permanent) in [(e / 4, 0), (e / 8, 2)] {
                let o = run_with(n, Scheme::Tree, seed, failures, permanent);
                let what = format!("N={n} seed {seed} with {failures} + {permanent} failures");
                assert!(o.repair_sends > 0 && o.notice_sends > 0, "{what}: the failures must start repairs");
                // A notice is `c<client> <time>\n`: ids c0..c74, times of 20 characters, so 24 to 26 bytes.
                let per_notice = o.notice_bytes as f64 / o.notice_sends as f64;
                assert!((24.0..=26.0).contains(&per_notice), "{what}: {per_notice} bytes a notice");
                assert!(o.total_bytes() >= o.record_bytes + o.notice_bytes + o.header_bytes, "{what}");
                assert!(o.max_live_sends <= o.bound, "{what}: {} > {}: {}", o.max_live_sends, o.bound, o.worst);
                if permanent == 0 {
                    assert_eq!(o.missing, 0, "{what}: {:?}", o.missing_examples);
                }
                let flood = run_with(n, Scheme::Flood, seed, failures, permanent);
                assert!(flood.max_live_sends <= flood.bound, "{what}: plain flooding");
                flooding_past_its_bound += usize::from(flood.max_sends > flood.bound);
            }
        }
    }
    assert!(flooding_past_its_bound > 0, "plain flooding with its catch-ups never passed 2E - (N - 1)");
}

fn run_with(n: usize, scheme: Scheme, seed: u64, failures: usize, permanent: usize) -> Outcome {
    let mut p = Params::new(n, scheme, seed).with_failures(failures, permanent);
    p.records = 300;
    p.clients = 75;
    sim::run(&p)
}

/// The default five-server herd (Bailey 0, Bona 1, Campbell 2, Clark 3, Jaquez 4) with the link
/// Campbell-Jaquez down for good from 1 ms on: the graph stays connected (Jaquez-Clark-Bona-Bailey), so
/// every record must still reach Jaquez. In Bailey's and Bona's trees Jaquez hangs below Campbell and
/// Clark is a leaf, so their records reach Jaquez only if Bona and Bailey, which hold them already, pass
/// on what Campbell floods. (As plain floods, at 6cd243a, they stopped there and Jaquez lacked 22 of 50
/// clients' newest records; as repairs deduplicated by stream index, at fe08931, Bona dropped its own
/// records' repairs arriving out of order and Jaquez lacked 7.)
#[test]
fn a_tree_link_that_stays_down_does_not_cut_the_servers_below_it_off() {
    let links = vec![(0, 1), (0, 2), (1, 2), (1, 3), (2, 4), (3, 4)];
    for scheme in [Scheme::Flood, Scheme::Tree] {
        let mut p = Params::new(5, scheme, 1);
        p.graph = Some(links.clone());
        p.cuts = vec![(4, 1)];
        p.records = 200;
        p.clients = 50;
        let o = sim::run(&p);
        assert_eq!(o.missing, 0, "{}: {:?}", scheme.name(), o.missing_examples);
    }
}
