//! The journal: every record the server stores, appended to disk with a checksum, so that an acknowledged
//! record survives the process (and, with `always`, the machine). The anchor is redis's append-only file:
//! `appendfsync always | everysec | no`, fsync on a background thread, a torn tail cut at load
//! (`aof-load-truncated`), and a rewrite to the live data when the file has grown.
//!
//! ## Threads
//!
//! The loop thread never touches the disk. It copies each entry once, into a buffer (no allocation per
//! entry; the CRC is left to the writer), and at the end of its turn moves the buffer into a mailbox for
//! one writer thread, taking back an emptied one: a mutex held for a few instructions, no copy, and an
//! `unpark` only when the mailbox was empty (otherwise the writer has been unparked already and will take
//! both batches). The writer thread owns `write(2)` and `fsync`:
//!
//! ```text
//!   loop thread                               writer thread ("herd-journal")
//!   append(seq, line) into `buf`
//!   end of turn: flush ──── batches ────────▶ seal (CRCs), pwrite(tail segment): one call for all it took
//!                  ◀─────── emptied buffers ─ always: fdatasync now; everysec: once a second; no: never
//!   durable() ◀──── atomic "durable up to S" ─ store S, then Waker::wake() if the loop asked
//! ```
//!
//! Group commit falls out of it: while the writer waits for one fsync, the loop keeps filling the next
//! batches, and the writer takes everything queued for the next fsync. With `always` the loop holds each
//! IAMAT reply until `durable()` reaches its record's seq, so many replies share one fsync. With
//! `everysec` and `no` nothing waits, and the writer paces itself instead (`WRITE_PACE` after each write),
//! so that it writes about a hundred big batches a second rather than one per loop turn; meanwhile the
//! loop keeps one batch queued and grows the next in its own buffer.
//!
//! Under `everysec` and `no` the writer writes the tail segment with `O_DIRECT` where the filesystem allows
//! it: from a block-aligned buffer, in whole blocks, with no copy into the page cache (see `disk::Disk`).
//!
//! ## Failures
//!
//! A failing write or fsync (a full disk) leaves the journal's committed length where it was (the file is
//! cut back to it), marks every entry the attempt covered as failed (`failed()`), counts it, and retries
//! with back-off, writing the same bytes again: when the disk has room again the journal resumes by itself
//! and nothing is lost. Only if the backlog passes `BACKLOG_MAX` are entries dropped (counted, and marked
//! failed); the journal is then `lossy()` and asks for a rewrite, which writes the live table again.
//!
//! ## Compaction
//!
//! When the journal holds more than `rewrite_ratio` times as many entries as the table has records, the
//! loop starts a rewrite: the writer rotates to a fresh tail segment (every entry appended after this goes
//! there), the loop walks its table in bounded steps handing the live records to the writer, which writes
//! them to a snapshot file; the snapshot is fsynced, renamed, and listed in the meta file in place of the
//! old files in one atomic rename, and only then are the old files removed (see `disk`). A crash at any
//! point leaves either the old file list or the new one, each complete.
//!
//! ## The replication id rule
//!
//! Offsets into this server's stream of records (its seqs) mean something to a neighbour only under this
//! server's replication id. A new id is started:
//! - for a new journal;
//! - when replay had to cut entries that had been on disk: a corrupt entry with good ones after it
//!   (`truncate_corrupt`), or any cut after a clean close;
//! - after an unclean stop (no clean close recorded in the meta file) of a journal written with `everysec`
//!   or `no`: entries acknowledged but not yet fsynced may be gone.
//!
//! After an unclean stop of an `always` journal the id stays: everything acknowledged was fsynced. The seq
//! counter then resumes `UNCLEAN_SKIP` (2^30) past the greatest seq on disk, beyond any seq handed out and
//! flooded but not yet written when the process died, so a neighbour's offset never covers a seq that
//! will be reused. After a clean close it resumes right after the greatest seq.

mod block;
mod disk;
mod error;
mod format;
mod writer;

pub use disk::{new_rid, Meta, Replayed, UNCLEAN_SKIP};
pub use error::{IoOp, JournalError, MetaProblem};

use crate::protocol::AtFields;
use disk::Disk;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use writer::Writer;

/// The fields of an `AT` line replayed from the journal (final LF included), found by its shape alone:
/// `AT` and five non-empty fields separated by single spaces. Every entry was a record this server had
/// checked before storing it (`protocol::check_at`, or built by `protocol::write_at`), and its CRC has just
/// been checked, so checking every field again (`check_at`: the decimals, the location's ranges) would only
/// repeat work; it was half of a 1,000,000-entry replay (callgrind: 1,690 of 3,600 instructions per entry).
/// redis trusts its append-only file the same way. Anything else is `None` (counted and skipped).
pub fn entry_fields(line: &[u8]) -> Option<AtFields> {
    let body = line.strip_suffix(b"\n")?;
    let rest = body.strip_prefix(b"AT ")?;
    let mut fields = [(0u32, 0u32); 5];
    let mut start = 3;
    let ends = memchr::memchr_iter(b' ', rest).map(|at| at + 3).chain(std::iter::once(body.len()));
    for (n, end) in ends.enumerate() {
        if n == fields.len() || end == start {
            return None; // a sixth field, or an empty one
        }
        fields[n] = (start as u32, end as u32);
        start = end + 1;
    }
    let [server, _diff, client_id, location, client_time] = fields;
    (client_time.1 as usize == body.len()).then_some(AtFields { server, client_id, location, client_time })
}

/// When the journal's data reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// After every batch, before the records in it are acknowledged.
    Always,
    /// About once a second; acknowledgements do not wait.
    EverySec,
    /// When the kernel decides.
    No,
}

impl FsyncMode {
    pub fn parse(s: &str) -> Option<FsyncMode> {
        match s {
            "always" => Some(FsyncMode::Always),
            "everysec" => Some(FsyncMode::EverySec),
            "no" => Some(FsyncMode::No),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::EverySec => "everysec",
            FsyncMode::No => "no",
        }
    }
}

/// Injected failures and delays, for tests of a full or slow disk. Shared with the writer thread.
#[derive(Default, Debug)]
pub struct Faults {
    /// Every write (segment, snapshot, meta) fails with "no space left" while set.
    pub fail_writes: AtomicBool,
    /// Every fsync of the tail segment fails while set.
    pub fail_syncs: AtomicBool,
    /// Milliseconds slept before each fsync: a slow disk.
    pub sync_delay_ms: AtomicU64,
    /// Tail segments are opened as on a filesystem that refuses `O_DIRECT`: buffered writes.
    pub refuse_direct: AtomicBool,
}

/// How the journal is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// `D/NAME`.
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// Rewrite when the journal holds more than this many entries per live record.
    pub rewrite_ratio: f64,
    /// ... and its files hold at least this many bytes. A rewrite has a fixed cost (about eight fsyncs and
    /// renames) whatever the table's size, so a small journal is not worth rewriting (redis's
    /// `auto-aof-rewrite-min-size`; the default is `config::JOURNAL_REWRITE_MIN_BYTES`).
    pub rewrite_min_bytes: u64,
    /// Keep what precedes a corrupt entry in the middle instead of refusing to start.
    pub truncate_corrupt: bool,
    pub faults: Arc<Faults>,
}

impl Options {
    pub fn new(dir: PathBuf, fsync: FsyncMode) -> Options {
        Options {
            dir,
            fsync,
            rewrite_ratio: 2.0,
            rewrite_min_bytes: crate::config::JOURNAL_REWRITE_MIN_BYTES,
            truncate_corrupt: false,
            faults: Arc::default(),
        }
    }
}

/// Under `everysec`, the writer keeps what it wrote until its fsync (a failed fsync writes it again): past
/// this many bytes it fsyncs before the second is up, so that a fast loop (400,000 records a second is
/// 37 MB) does not make it hold a second's worth.
const EVERYSEC_UNSYNCED_MAX: usize = 16 << 20;
/// Under `everysec` and `no`, the writer sleeps this long after each write, so that the next write carries
/// what the loop gathered meanwhile (a hundred writes a second at most, not one per loop turn). A killed
/// process can lose what was gathered and not yet written: about this long's worth of records. Each write
/// costs a system call, a wait for the device and (in a virtual machine) an exit to the hypervisor to
/// notify it: at 2 ms the writer spent 0.060 µs of CPU per IAMAT, at 10 ms 0.045 (`benches/journal-cpu.sh`).
const WRITE_PACE: Duration = Duration::from_millis(10);
/// Emptied batch buffers kept in the mailbox for the loop to reuse (no allocation per hand-off).
const SPARE_BATCHES: usize = 8;
/// Beyond this many bytes waiting for the disk, entries are dropped rather than grow memory without bound.
pub const BACKLOG_MAX: usize = 64 << 20;
/// Snapshot chunks: the loop hands the writer the live table this many bytes at a time...
const CHUNK_BYTES: usize = 256 << 10;
/// ... with at most this many chunks waiting.
const CHUNKS_QUEUED: usize = 4;
/// How often peer offsets are written to the meta file at most.
const META_EVERY: Duration = Duration::from_secs(1);
/// Retry back-off after a failed write or fsync.
const RETRY_FIRST: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// A failed rewrite is not tried again sooner than this.
const REWRITE_PAUSE: Duration = Duration::from_secs(10);
/// Upper bounds of the fsync latency histogram, in microseconds (then +Inf).
pub const FSYNC_BUCKETS_US: [u64; 12] =
    [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];

enum Command {
    Rotate,
    Chunk(Vec<u8>),
    Finish,
}

#[derive(Default)]
struct Slots {
    /// Batches of encoded entries for the writer (one per hand-off, in seq order), and the greatest seq
    /// among them. A hand-off moves the loop's buffer here; nothing is copied on the loop's thread.
    queued: Vec<Vec<u8>>,
    queued_last: u64,
    /// Emptied buffers the writer hands back, for the loop's next batches.
    spare: Vec<Vec<u8>>,
    /// The loop kept entries back (`flush` under `everysec` and `no`): the writer wakes it when it takes
    /// the queue, so that they follow at once even if the loop has nothing else to do.
    held: bool,
    commands: VecDeque<Command>,
    /// Neighbour offsets to write to the meta file.
    peers: Option<BTreeMap<String, (String, u64)>>,
    /// Greatest seq handed to the journal (for the meta file's `last`).
    last_seq: u64,
    closing: bool,
    /// Test only: stop as a killed process would, without the clean close.
    crash: bool,
}

/// What the writer thread publishes.
#[derive(Default)]
struct Shared {
    slots: Mutex<Slots>,
    durable: AtomicU64,
    failed: AtomicU64,
    failing: AtomicBool,
    want_wake: AtomicBool,
    /// Bytes the writer holds that are not yet committed.
    writer_backlog: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    fsync_micros: AtomicU64,
    write_errors: AtomicU64,
    rewrites: AtomicU64,
    rewrite_failures: AtomicU64,
    /// 0: nothing new; 1: the last rewrite succeeded; 2: it failed.
    rewrite_outcome: AtomicU8,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A snapshot of the journal's counters, for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub bytes: u64,
    pub entries: u64,
    pub durable: u64,
    pub fsyncs: u64,
    /// Cumulative counts per bucket of `FSYNC_BUCKETS_US`, then the total (+Inf).
    pub fsync_buckets: Vec<u64>,
    pub fsync_seconds: f64,
    pub write_errors: u64,
    pub failing: bool,
    pub dropped: u64,
    pub rewrites: u64,
    pub rewrite_failures: u64,
}

/// The loop's side of a rewrite.
struct LoopRewrite {
    chunk: Vec<u8>,
    records: u64,
    appended_at_start: u64,
    dropped_at_start: u64,
    finished: bool,
}

/// The loop's handle on the journal.
pub struct Journal {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    mode: FsyncMode,
    rewrite_ratio: f64,
    rewrite_min_bytes: u64,
    buf: Vec<u8>,
    buf_last: u64,
    last_seq: u64,
    /// Entries in the journal's files or on their way there.
    entries: u64,
    appended: u64,
    dropped: u64,
    /// Drops since the last complete rewrite.
    lossy_since: Option<u64>,
    rewrite: Option<LoopRewrite>,
    rewrite_paused_until: Option<Instant>,
    rid: String,
    peers: BTreeMap<String, (String, u64)>,
}

impl Journal {
    /// Opens the journal in `opts.dir`, replays it through `on_entry(seq, line)` in journal order, and
    /// starts the writer thread, which wakes the loop through `waker`. Errors print as one line (a corrupt
    /// middle, `JournalError::Corrupt`, names the file and the byte offset).
    pub fn open(
        opts: &Options,
        waker: Arc<mio::Waker>,
        on_entry: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(Journal, Replayed), JournalError> {
        let (disk, replayed) =
            Disk::open(&opts.dir, opts.fsync, opts.truncate_corrupt, Arc::clone(&opts.faults), on_entry)?;
        if let Some((file, at)) = &replayed.cut_at {
            log::warn!(
                "journal {}: cut {} bytes from {file} at byte {at} (torn or corrupt tail)",
                opts.dir.display(),
                replayed.cut_bytes
            );
        }
        if let Some(why) = replayed.new_rid {
            log::info!("journal {}: new replication id {} ({why})", opts.dir.display(), replayed.rid);
        }
        if disk.direct() {
            log::debug!("journal {}: the tail segment is written with O_DIRECT", opts.dir.display());
        }
        let shared = Arc::new(Shared::default());
        shared.bytes.store(disk.bytes(), Ordering::Relaxed);
        shared.durable.store(replayed.next_seq - 1, Ordering::Relaxed);
        shared.slots().last_seq = replayed.next_seq - 1;
        let theirs = Arc::clone(&shared);
        let mode = opts.fsync;
        let thread = std::thread::Builder::new()
            .name("herd-journal".into())
            .spawn(move || Writer::new(disk, theirs, waker, mode).run())
            .map_err(JournalError::Thread)?;
        let journal = Journal {
            shared,
            thread: Some(thread),
            mode,
            rewrite_ratio: opts.rewrite_ratio,
            rewrite_min_bytes: opts.rewrite_min_bytes,
            buf: Vec::with_capacity(CHUNK_BYTES),
            buf_last: 0,
            last_seq: replayed.next_seq - 1,
            entries: replayed.entries,
            appended: 0,
            dropped: 0,
            lossy_since: None,
            rewrite: None,
            rewrite_paused_until: None,
            rid: replayed.rid.clone(),
            peers: replayed.peers.clone(),
        };
        Ok((journal, replayed))
    }

    /// About how many entries the journal in `dir` holds, from its files' sizes (for reserving room
    /// before a replay): one entry per 64 bytes of the files (a record line is longer than 48 bytes).
    pub fn estimate_entries(dir: &std::path::Path) -> u64 {
        let bytes: u64 = std::fs::read_dir(dir)
            .map(|it| it.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
            .unwrap_or(0);
        bytes / 64
    }

    pub fn mode(&self) -> FsyncMode {
        self.mode
    }

    /// This server's replication id.
    pub fn rid(&self) -> &str {
        &self.rid
    }

    /// Appends the record `line` stored at `seq` (greater than every seq appended before). Nothing reaches
    /// the writer before `flush`. `false`: the entry was dropped (the disk is `BACKLOG_MAX` behind) and
    /// will never be durable; a reply waiting for it must not wait.
    pub fn append(&mut self, seq: u64, line: &[u8]) -> bool {
        debug_assert!(seq > self.last_seq, "seqs are appended in order");
        self.last_seq = seq;
        if line.is_empty() || line.len() > format::MAX_PAYLOAD {
            return false;
        }
        let waiting = self.buf.len() as u64 + self.shared.writer_backlog.load(Ordering::Relaxed);
        if waiting as usize >= BACKLOG_MAX {
            if self.dropped == 0 || self.lossy_since.is_none() {
                log::warn!("journal: the disk is {waiting} bytes behind; dropping entries until it catches up");
            }
            self.dropped += 1;
            self.lossy_since.get_or_insert(seq);
            return false;
        }
        format::encode_unsealed(&mut self.buf, seq, line);
        self.buf_last = seq;
        self.entries += 1;
        self.appended += 1;
        true
    }

    /// End of turn: hands what was appended to the writer thread: the buffer itself moves to the mailbox
    /// and an emptied one comes back (no copy). Never waits for the disk. The writer is unparked only when
    /// the mailbox was empty: otherwise it was unparked with the batch already there and has not taken it
    /// yet, so it will take this one with it.
    pub fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let was_empty = {
            let mut slots = self.shared.slots();
            // Entries appended after a rotation was asked for must land in the new segment: they wait here
            // until the writer has taken the rotation (it takes queued bytes only with no rotation pending).
            if slots.commands.iter().any(|c| matches!(c, Command::Rotate)) {
                return;
            }
            // Under `everysec` and `no` the writer is pacing itself and has not yet taken the batch queued
            // before: this turn's entries stay in `buf`, which grows into one big batch instead of many
            // small ones. `always` hands over at once: the writer's next fsync should carry them.
            if self.mode != FsyncMode::Always && !slots.queued.is_empty() {
                slots.held = true;
                return;
            }
            let empty = slots.spare.pop().unwrap_or_else(|| Vec::with_capacity(self.buf.capacity()));
            let was_empty = slots.queued.is_empty();
            slots.queued.push(std::mem::replace(&mut self.buf, empty));
            slots.queued_last = self.buf_last;
            slots.last_seq = self.last_seq;
            was_empty
        };
        if was_empty {
            self.unpark();
        }
    }

    fn unpark(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Every entry with a seq at or below this is committed: fsynced (`always`, `everysec`), or written
    /// (`no`).
    pub fn durable(&self) -> u64 {
        // SeqCst with `want_wake`: the loop stores the flag then loads this, the writer stores this then
        // swaps the flag, so at least one of them sees the other's store and no wake-up is missed.
        self.shared.durable.load(Ordering::SeqCst)
    }

    /// Entries with a seq at or below this and above `durable()` failed to be written at least once:
    /// their acknowledgement must not wait for them (they are retried, and may yet become durable). The
    /// loop decides a waiting reply in this order: `seq <= durable()` answers it, else `seq <= failed()`
    /// gives it up. A failure only ever covers entries above `durable()` at the time.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Acquire)
    }

    /// Writes or fsyncs are failing right now.
    pub fn failing(&self) -> bool {
        self.shared.failing.load(Ordering::Relaxed)
    }

    /// Entries were dropped since the last complete rewrite: the files miss records of the table.
    pub fn lossy(&self) -> bool {
        self.lossy_since.is_some()
    }

    /// Asks the writer to wake the loop the next time `durable()` moves (the loop has replies waiting).
    pub fn want_wake(&self) {
        self.shared.want_wake.store(true, Ordering::SeqCst);
    }

    /// Records that this server holds every record of neighbour `name`'s stream (replication id `rid`) up to
    /// `off`. Written to the meta file within a second; the caller says so only once the records covering
    /// it are durable here.
    pub fn set_peer(&mut self, name: &str, rid: &str, off: u64) {
        let entry = (rid.to_string(), off);
        if self.peers.get(name) == Some(&entry) {
            return;
        }
        self.peers.insert(name.to_string(), entry);
        self.shared.slots().peers = Some(self.peers.clone());
        self.unpark();
    }

    /// The offsets recorded by `set_peer` (and replayed from the meta file).
    pub fn peers(&self) -> &BTreeMap<String, (String, u64)> {
        &self.peers
    }

    /// Whether the journal should be rewritten now, for a table of `live` records.
    pub fn wants_rewrite(&mut self, live: u64) -> bool {
        self.poll_rewrite();
        if self.rewrite.is_some() || self.failing() {
            return false;
        }
        if self.rewrite_paused_until.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let bytes = self.shared.bytes.load(Ordering::Relaxed) + self.buf.len() as u64;
        self.lossy()
            || (bytes >= self.rewrite_min_bytes && self.entries as f64 > self.rewrite_ratio * live.max(1) as f64)
    }

    /// Starts a rewrite: the writer rotates to a fresh tail segment. The loop then hands over every live
    /// record with `rewrite_record` (pacing itself with `rewrite_room`) and ends with `finish_rewrite`.
    pub fn start_rewrite(&mut self) {
        if self.rewrite.is_some() {
            return;
        }
        {
            let mut slots = self.shared.slots();
            // Everything appended so far may go to the old segment: it precedes the rotation.
            let empty = slots.spare.pop().unwrap_or_default();
            slots.queued.push(std::mem::replace(&mut self.buf, empty));
            slots.queued_last = slots.queued_last.max(self.buf_last);
            slots.last_seq = self.last_seq;
            slots.commands.push_back(Command::Rotate);
        }
        self.unpark();
        self.rewrite = Some(LoopRewrite {
            chunk: Vec::with_capacity(CHUNK_BYTES + 4096),
            records: 0,
            appended_at_start: self.appended,
            dropped_at_start: self.dropped,
            finished: false,
        });
    }

    /// Whether the writer can take more of the snapshot now (at most `CHUNKS_QUEUED` chunks wait).
    pub fn rewrite_room(&self) -> bool {
        self.rewrite.as_ref().is_some_and(|r| !r.finished)
            && self.shared.slots().commands.iter().filter(|c| matches!(c, Command::Chunk(_))).count() < CHUNKS_QUEUED
    }

    /// One live record for the snapshot, with the seq at which it was last stored.
    pub fn rewrite_record(&mut self, seq: u64, line: &[u8]) {
        let Some(rw) = self.rewrite.as_mut().filter(|r| !r.finished) else { return };
        if line.is_empty() || line.len() > format::MAX_PAYLOAD {
            return;
        }
        format::encode_unsealed(&mut rw.chunk, seq, line);
        rw.records += 1;
        if rw.chunk.len() >= CHUNK_BYTES {
            let chunk = std::mem::replace(&mut rw.chunk, Vec::with_capacity(CHUNK_BYTES + 4096));
            self.shared.slots().commands.push_back(Command::Chunk(chunk));
            self.unpark();
        }
    }

    /// The loop has handed over the whole table: the writer seals and installs the snapshot.
    pub fn finish_rewrite(&mut self) {
        let Some(rw) = self.rewrite.as_mut().filter(|r| !r.finished) else { return };
        rw.finished = true;
        let chunk = std::mem::take(&mut rw.chunk);
        {
            let mut slots = self.shared.slots();
            slots.commands.push_back(Command::Chunk(chunk));
            slots.commands.push_back(Command::Finish);
        }
        self.unpark();
    }

    /// A rewrite is under way (started and not yet installed or given up).
    pub fn rewriting(&mut self) -> bool {
        self.poll_rewrite();
        self.rewrite.is_some()
    }

    /// Takes the outcome of a finished rewrite, if there is a new one.
    fn poll_rewrite(&mut self) {
        let outcome = self.shared.rewrite_outcome.swap(0, Ordering::AcqRel);
        if outcome == 0 {
            return;
        }
        let Some(rw) = self.rewrite.take() else { return };
        if outcome == 1 {
            self.entries = rw.records + (self.appended - rw.appended_at_start);
            if self.dropped == rw.dropped_at_start {
                self.lossy_since = None;
            }
        } else {
            self.rewrite_paused_until = Some(Instant::now() + REWRITE_PAUSE);
        }
    }

    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let mut cumulative = 0;
        let fsync_buckets = s
            .fsync_buckets
            .iter()
            .map(|b| {
                cumulative += b.load(Ordering::Relaxed);
                cumulative
            })
            .collect();
        Stats {
            bytes: s.bytes.load(Ordering::Relaxed),
            entries: self.entries,
            durable: self.durable(),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
            fsync_buckets,
            fsync_seconds: s.fsync_micros.load(Ordering::Relaxed) as f64 / 1e6,
            write_errors: s.write_errors.load(Ordering::Relaxed),
            failing: self.failing(),
            dropped: self.dropped,
            rewrites: s.rewrites.load(Ordering::Relaxed),
            rewrite_failures: s.rewrite_failures.load(Ordering::Relaxed),
        }
    }

    /// Clean shut-down: everything appended is written and fsynced, and the meta file says so. Waits for
    /// the writer thread (bounded: a disk that keeps failing is given a few retries).
    pub fn close(&mut self) {
        self.stop(false);
    }

    fn stop(&mut self, crash: bool) {
        let Some(thread) = self.thread.take() else { return };
        {
            let mut slots = self.shared.slots();
            if slots.commands.iter().any(|c| matches!(c, Command::Rotate)) {
                slots.commands.clear(); // a rewrite not yet begun is simply not begun
            }
            slots.queued.push(std::mem::take(&mut self.buf));
            slots.queued_last = slots.queued_last.max(self.buf_last);
            slots.last_seq = self.last_seq;
            slots.closing = true;
            slots.crash = crash;
        }
        self.buf.clear();
        thread.thread().unpark();
        let _ = thread.join();
    }

    /// Test only: the writer stops where it is, as if the process were killed: no final fsync, no clean
    /// flag. What was handed over may or may not be written.
    #[cfg(test)]
    fn crash(mut self) {
        self.stop(true);
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests;
