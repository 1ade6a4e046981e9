//! What a run measured.

use super::Params;

/// What one run measured. Sends count record lines written to a link (lost or not); bytes count what
/// the links carried: record lines, frame headers, `OFF` and `ACK` lines (not `PING`/`PONG`, which do
/// not depend on the records).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub params: Params,
    /// Undirected links of the graph.
    pub links: usize,
    /// `2E - (N - 1)`: what plain flooding costs a record with every link up.
    pub bound: u64,
    pub records: usize,
    /// Record lines sent: in tree frames, in flood frames (a tree broken at the sender), in repair frames
    /// (sent again after a link broke, passed on once by every server), in link-up catch-ups.
    pub tree_sends: u64,
    pub flood_sends: u64,
    pub repair_sends: u64,
    pub sync_sends: u64,
    /// A repair's notices (`route::Mode::Notice`): lines naming a record (client id and client time)
    /// sent instead of it to a neighbour that holds it. Not record sends; their bytes (and their frames'
    /// headers) count as announcements, off the trees.
    pub notice_sends: u64,
    pub notice_bytes: u64,
    /// The most sends any one record cost, with and without the link-up catch-ups.
    pub max_sends: u64,
    pub max_live_sends: u64,
    /// The record that cost the most, and how.
    pub worst: String,
    pub record_bytes: u64,
    /// Record lines that crossed a link of their origin's shortest-path tree.
    pub tree_record_bytes: u64,
    pub header_bytes: u64,
    pub off_bytes: u64,
    pub ack_bytes: u64,
    /// Announcement and repair bytes off the trees: record lines on a link that is not in their origin's
    /// tree, and the headers, `OFF` and `ACK` lines of messages that carried no tree record.
    pub non_tree_bytes: u64,
    /// Messages sent into a failed link or caught in flight when it failed.
    pub messages_lost: u64,
    pub duplicates: u64,
    pub reflooded: u64,
    pub delta_syncs: u64,
    pub full_syncs: u64,
    /// Simulated time from the last fault (heal, or permanent failure) or the last IAMAT, whichever came
    /// later, until every server held the newest record of every client; `None` if that never happened.
    pub convergence_ms: Option<f64>,
    /// (server, client) pairs where the server does not hold the client's newest record at the end.
    pub missing: u64,
    /// The first few of them, for the report.
    pub missing_examples: Vec<String>,
    pub end_ms: f64,
}

impl Outcome {
    pub(super) fn new(params: Params, links: usize, bound: u64) -> Outcome {
        Outcome {
            records: params.records,
            params,
            links,
            bound,
            tree_sends: 0,
            flood_sends: 0,
            repair_sends: 0,
            sync_sends: 0,
            notice_sends: 0,
            notice_bytes: 0,
            max_sends: 0,
            max_live_sends: 0,
            worst: String::new(),
            record_bytes: 0,
            tree_record_bytes: 0,
            header_bytes: 0,
            off_bytes: 0,
            ack_bytes: 0,
            non_tree_bytes: 0,
            messages_lost: 0,
            duplicates: 0,
            reflooded: 0,
            delta_syncs: 0,
            full_syncs: 0,
            convergence_ms: None,
            missing: 0,
            missing_examples: Vec::new(),
            end_ms: 0.0,
        }
    }

    pub fn sends(&self) -> u64 {
        self.tree_sends + self.flood_sends + self.repair_sends + self.sync_sends
    }

    pub fn total_bytes(&self) -> u64 {
        self.record_bytes + self.header_bytes + self.off_bytes + self.ack_bytes + self.notice_bytes
    }

    pub fn sends_per_record(&self) -> f64 {
        self.sends() as f64 / self.records as f64
    }

    pub fn bytes_per_record(&self) -> f64 {
        self.total_bytes() as f64 / self.records as f64
    }

    /// Announcement and repair bytes off the trees, as a fraction of the record bytes.
    pub fn non_tree_fraction(&self) -> f64 {
        self.non_tree_bytes as f64 / self.record_bytes.max(1) as f64
    }
}
