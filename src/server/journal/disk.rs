//! The journal's directory: the meta file, the segment files, replay, and the steps of a rewrite. Plain
//! synchronous file I/O, run by the writer thread (and by `open` before it starts); the tests drive the
//! steps one by one to stop a rewrite at every point a crash could.
//!
//! ```text
//!   D/NAME/meta                          rid, fsync mode, clean flag, greatest seq, the file list, peers
//!   D/NAME/snap-00000000000000000007.log a rewrite's output: the live records (any seq order)
//!   D/NAME/seg-00000000000000000008.log  appended entries, in seq order; the last one is the tail
//! ```
//!
//! The meta file is the manifest, as redis 7's multi-part AOF manifest is: the journal is exactly the files
//! it lists, replayed in its order. It is only ever replaced whole (write `meta.tmp`, fsync, rename, fsync
//! the directory), so a crash leaves either the old list or the new one. A file it does not list is debris
//! of an interrupted rewrite and is removed at open.

use super::block::{AlignedBuf, BLOCK};
use super::error::{IoOp, JournalError, MetaProblem};
use super::format::{self, Entry, HEADER, MAGIC, MAX_PAYLOAD};
use super::{Faults, FsyncMode};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// After an unclean stop in `always` mode the sequence counter resumes this far past the greatest seq on
/// disk: entries handed out but still in memory when the process died were never acknowledged to a client,
/// but they may have been flooded, and a neighbour may hold an offset past them. What was handed out and not
/// yet on disk is bounded: the loop's queue holds at most `BACKLOG_MAX` bytes (64 MiB; past it entries are
/// dropped and counted) and the writer's tail at most what it took from the queue, in entries of at least
/// 43 bytes (a 16-byte header and the shortest `AT` line): about three million entries, far below 2^30. So
/// every new seq is greater than any offset a neighbour can hold, and the replication id can stay (no full
/// sync). Seqs are 47 bits in the record store: 2^17 unclean restarts.
pub const UNCLEAN_SKIP: u64 = 1 << 30;

/// Read size for replay: big reads, few system calls.
const CHUNK: usize = 8 << 20;

/// Under `always` the tail segment is extended with zeros this far ahead of the entries, fsynced with the
/// next commit: an `fdatasync` that only overwrites blocks already in the file does not make the
/// filesystem commit a new size and new blocks (ext4: no journal commit): a median of 125 µs a commit
/// at depth 1 where appending took 252 µs (`benches/journal-always.sh`, BENCHMARKS.md).
pub const ZERO_CHUNK: u64 = 4 << 20;
/// The zeros are written only while the filesystem has this much room left: a nearly full disk keeps its
/// last megabytes for entries and the meta file.
pub const ZERO_ROOM_MIN: u64 = 256 << 20;
/// Under `always` at most this many bytes are written between two fsyncs (at least one entry), so that a
/// write torn by a power loss inside the zeros is told from corruption by its size (`scan_file`).
const INFLIGHT_MAX: usize = 1 << 20;
/// The most a torn in-flight write can span: `INFLIGHT_MAX`, or one entry of the largest size.
pub const TORN_WRITE_MAX: u64 =
    if INFLIGHT_MAX > HEADER + MAX_PAYLOAD { INFLIGHT_MAX } else { HEADER + MAX_PAYLOAD } as u64;

/// The meta file's contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// This server's replication id (hex).
    pub rid: String,
    /// How the entries were written: decides what an unclean stop may have lost.
    pub mode: FsyncMode,
    /// Written `true` only by a clean close, after the last fsync.
    pub clean: bool,
    /// The greatest seq handed to the journal when this meta was written.
    pub last_seq: u64,
    /// The journal, in replay order.
    pub files: Vec<String>,
    /// Per neighbour: its replication id and the offset of its stream this server holds all of.
    pub peers: BTreeMap<String, (String, u64)>,
}

impl Meta {
    fn render(&self) -> String {
        let mut s = format!(
            "herd-journal 1\nrid {}\nmode {}\nclean {}\nlast {}\n",
            self.rid,
            self.mode.name(),
            u8::from(self.clean),
            self.last_seq
        );
        for f in &self.files {
            s += &format!("file {f}\n");
        }
        for (name, (rid, off)) in &self.peers {
            s += &format!("peer {name} {rid} {off}\n");
        }
        s
    }

    fn parse(text: &str, file: &Path) -> Result<Meta, JournalError> {
        let problem = |problem| JournalError::BadMeta { file: file.to_path_buf(), problem };
        let mut lines = text.lines().enumerate();
        if lines.next().map(|(_, l)| l) != Some("herd-journal 1") {
            return Err(problem(MetaProblem::NotMeta));
        }
        let mut meta = Meta {
            rid: String::new(),
            mode: FsyncMode::Always,
            clean: false,
            last_seq: 0,
            files: Vec::new(),
            peers: BTreeMap::new(),
        };
        for (i, line) in lines {
            let bad = || problem(MetaProblem::BadLine { line: i + 1, text: line.to_string() });
            let words: Vec<&str> = line.split(' ').collect();
            match words[..] {
                ["rid", rid] if is_hex(rid) => meta.rid = rid.to_string(),
                ["mode", m] => meta.mode = FsyncMode::parse(m).ok_or_else(bad)?,
                ["clean", c] => meta.clean = c == "1",
                ["last", n] => meta.last_seq = n.parse().map_err(|_| bad())?,
                ["file", f] if kind_of(f).is_some() => meta.files.push(f.to_string()),
                ["peer", name, rid, off] if is_hex(rid) => {
                    meta.peers.insert(name.to_string(), (rid.to_string(), off.parse().map_err(|_| bad())?));
                }
                _ => return Err(bad()),
            }
        }
        if meta.rid.is_empty() {
            return Err(problem(MetaProblem::NoRid));
        }
        Ok(meta)
    }
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Segment,
    Snapshot,
}

/// `seg-<gen>.log` or `snap-<gen>.log` with a 20-digit generation.
fn kind_of(name: &str) -> Option<(Kind, u64)> {
    let (kind, rest) = if let Some(rest) = name.strip_prefix("seg-") {
        (Kind::Segment, rest)
    } else {
        (Kind::Snapshot, name.strip_prefix("snap-")?)
    };
    let digits = rest.strip_suffix(".log")?;
    (digits.len() == 20).then(|| digits.parse().ok().map(|g| (kind, g)))?
}

fn file_name(kind: Kind, gen: u64) -> String {
    match kind {
        Kind::Segment => format!("seg-{gen:020}.log"),
        Kind::Snapshot => format!("snap-{gen:020}.log"),
    }
}

/// A new replication id: 20 random bytes in hex, as long as redis's.
pub fn new_rid() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 20];
    ring::rand::SystemRandom::new().fill(&mut bytes).expect("the system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `open` found and decided.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub rid: String,
    /// Why a new replication id was started, if one was.
    pub new_rid: Option<&'static str>,
    /// The seq the next stored record gets.
    pub next_seq: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Bytes cut from a torn or corrupt tail (or, with `truncate_corrupt`, from a corrupt middle on).
    pub cut_bytes: u64,
    /// Where the cut was: file and byte offset.
    pub cut_at: Option<(String, u64)>,
    pub peers: BTreeMap<String, (String, u64)>,
    pub elapsed: Duration,
}

/// The state of a rewrite on disk.
struct Rewrite {
    /// Index in `meta.files` of the segment opened by the rotation: it and every later file stay.
    keep_from: usize,
    snap: Option<(File, u64)>,
}

/// The journal's directory, open for appending to its tail segment, and the bytes taken for the tail and
/// not yet committed to it.
///
/// Under `everysec` and `no` the tail segment is written with `O_DIRECT` where the filesystem allows it
/// (`open_direct`; buffered otherwise, and the bytes are kept the same way). Every write starts at the
/// block boundary at or before the write position and ends padded with zeros to the next one, so the block
/// the last write ended in is written again, whole, by the next. The bytes of that block are kept in `buf`
/// for it. Rewriting bytes already on disk with the same bytes cannot lose them (a device writes a sector
/// whole or not at all). Under `always` the tail is written buffered and zeroed ahead (`zero_ahead`).
/// Neither the padding nor the zeros ahead are part of the journal: a clean close cuts them off, and
/// replay after an unclean stop removes them (`scan_file`).
pub struct Disk {
    dir: PathBuf,
    pub meta: Meta,
    tail: File,
    /// The same file opened with `O_DIRECT`, or `None` (`open_direct`).
    direct: Option<File>,
    /// The tail segment from byte `base` (a block boundary) on: committed bytes of the block `committed`
    /// lies in, then every byte taken and not yet committed.
    buf: AlignedBuf,
    base: u64,
    /// Bytes of the tail segment written, and of those, committed (fsynced, or just written in mode `no`).
    written: u64,
    committed: u64,
    /// `always`: the tail segment holds zeros ahead of the entries (`zero_ahead`) up to here.
    zeroed_to: u64,
    /// Bytes of every listed file but the tail.
    others: u64,
    next_gen: u64,
    pub faults: Arc<Faults>,
    rewrite: Option<Rewrite>,
}

fn injected(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, format!("injected {what} failure"))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Disk {
    /// Opens or creates the journal in `dir`, replays every entry through `on_entry` in journal order, cuts
    /// a torn tail, removes debris of an interrupted rewrite, decides the replication id, and marks the
    /// journal open (not clean) before returning.
    pub fn open(
        dir: &Path,
        mode: FsyncMode,
        truncate_corrupt: bool,
        faults: Arc<Faults>,
        on_entry: &mut dyn FnMut(u64, &[u8]),
    ) -> Result<(Disk, Replayed), JournalError> {
        let started = Instant::now();
        std::fs::create_dir_all(dir).map_err(JournalError::io(IoOp::CreateDir, dir))?;
        let meta_path = dir.join("meta");
        let old_meta = match std::fs::read_to_string(&meta_path) {
            Ok(text) => Some(Meta::parse(&text, &meta_path)?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(JournalError::io(IoOp::Read, meta_path)(e)),
        };
        let mut meta = old_meta.clone().unwrap_or_else(|| Meta {
            rid: String::new(),
            mode,
            clean: true,
            last_seq: 0,
            files: Vec::new(),
            peers: BTreeMap::new(),
        });

        // Debris: files the meta does not list. Without a meta file, a data file with entries in it means
        // the meta file was lost, and guessing would be worse than stopping.
        let mut next_gen = 1;
        let listing = std::fs::read_dir(dir).map_err(JournalError::io(IoOp::List, dir))?;
        for item in listing {
            let item = item.map_err(JournalError::io(IoOp::List, dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = item.path();
            if let Some((_, gen)) = kind_of(&name) {
                next_gen = next_gen.max(gen + 1);
                if meta.files.contains(&name) {
                    continue;
                }
                let len = item.metadata().map(|m| m.len()).unwrap_or(0);
                if old_meta.is_none() && len > MAGIC.len() as u64 {
                    return Err(JournalError::NoMeta { dir: dir.to_path_buf(), file: name });
                }
            } else if !name.ends_with(".tmp") {
                continue;
            }
            std::fs::remove_file(&path).map_err(JournalError::io(IoOp::Remove, &path))?;
        }
        for name in &meta.files {
            next_gen = next_gen.max(kind_of(name).map_or(0, |(_, g)| g + 1));
        }

        // Replay, in the meta file's order.
        let mut stats = Scan::default();
        let mut cut: Option<(String, u64, u64)> = None; // file, offset, bytes cut
        let mut lost_durable = false;
        for i in 0..meta.files.len() {
            let path = dir.join(&meta.files[i]);
            let mut scan = scan_file(&path, on_entry).map_err(JournalError::io(IoOp::Read, &path))?;
            if scan.padding > 0 {
                if old_meta.as_ref().is_some_and(|m| m.clean) {
                    // A clean close cuts the padding off: zeros there now stand where entries were.
                    scan.bad = Some(scan.good_end);
                } else {
                    // The last write's padding, left by a stop before the close could cut it.
                    truncate_to(&path, scan.good_end).map_err(JournalError::io(IoOp::Truncate, &path))?;
                }
            }
            stats.entries += scan.entries;
            stats.max_seq = stats.max_seq.max(scan.max_seq);
            stats.len += scan.good_end;
            let Some(bad) = scan.bad else { continue };
            let later = &meta.files[i + 1..];
            // Good entries after a bad one in the last file, within what one write under `always` spans and
            // followed by zeros, after an unclean stop of an `always` journal: the write in flight when the
            // power went, torn. None of it was acknowledged (its fsync never returned), so it is a tail.
            let torn_write = scan.torn_write
                && later.is_empty()
                && old_meta.as_ref().is_some_and(|m| !m.clean && m.mode == FsyncMode::Always);
            let good_later =
                (scan.good_after && !torn_write) || later.iter().any(|f| has_good_entry(&dir.join(f)).unwrap_or(true));
            if good_later && !truncate_corrupt {
                return Err(JournalError::Corrupt { file: path, offset: bad });
            }
            // A tail that was being written when the process or machine stopped: cut it. Or, when asked,
            // everything from a corrupt entry on.
            let mut cut_bytes = scan.len - bad;
            truncate_to(&path, bad).map_err(JournalError::io(IoOp::Truncate, &path))?;
            for f in later {
                let p = dir.join(f);
                cut_bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0).saturating_sub(MAGIC.len() as u64);
                if good_later {
                    let _ = std::fs::remove_file(&p);
                } else {
                    truncate_to(&p, 0).map_err(JournalError::io(IoOp::Truncate, &p))?;
                }
            }
            if good_later {
                meta.files.truncate(i + 1);
            }
            // A cut of something once fsynced loses acknowledged records: so for a corrupt middle, and for
            // any cut after a clean close. A torn tail after an unclean stop holds only entries whose fsync
            // never finished (the mode rule below covers what else an unclean stop may have lost).
            lost_durable = good_later || old_meta.as_ref().is_some_and(|m| m.clean);
            cut = Some((meta.files[i].clone(), bad, cut_bytes));
            break;
        }

        // The replication id rule (see the module documentation of `journal`).
        let max_seq = stats.max_seq.max(meta.last_seq);
        let (why_new, next_seq) = match &old_meta {
            None => (Some("new journal"), 1),
            Some(_) if lost_durable => (Some("entries that had been on disk were cut"), max_seq + 1),
            Some(m) if m.clean => (None, max_seq + 1),
            Some(m) if m.mode == FsyncMode::Always => (None, max_seq + UNCLEAN_SKIP),
            Some(_) => (Some("unclean stop without `always`: entries not yet fsynced may be lost"), max_seq + 1),
        };
        if why_new.is_some() {
            meta.rid = new_rid();
        }
        if lost_durable || old_meta.as_ref().is_some_and(|m| !m.clean && m.mode == FsyncMode::No) {
            // Offsets of neighbours' streams were acknowledged on the strength of entries that may be gone.
            meta.peers.clear();
        }

        // The tail: the last listed segment, or a new one.
        meta.mode = mode;
        meta.clean = false;
        meta.last_seq = next_seq - 1;
        let fail = |source| JournalError::Io { op: IoOp::Open, path: dir.to_path_buf(), source };
        let reuse = meta.files.last().filter(|f| kind_of(f).is_some_and(|(k, _)| k == Kind::Segment)).cloned();
        let (tail, len) = match reuse {
            Some(name) => {
                let file = OpenOptions::new().read(true).write(true).open(dir.join(&name)).map_err(fail)?;
                let mut len = file.metadata().map_err(fail)?.len();
                if len < MAGIC.len() as u64 {
                    // Torn while being created: it holds nothing.
                    file.set_len(0).map_err(fail)?;
                    file.write_all_at(MAGIC, 0).map_err(fail)?;
                    file.sync_all().map_err(fail)?;
                    len = MAGIC.len() as u64;
                }
                (file, len)
            }
            None => {
                let (file, name) = new_segment(dir, next_gen).map_err(fail)?;
                next_gen += 1;
                meta.files.push(name);
                (file, MAGIC.len() as u64)
            }
        };
        let tail_name = meta.files.last().expect("the tail is listed");
        let direct = open_direct(dir, tail_name, mode, &faults).map_err(fail)?;
        let mut disk = Disk {
            dir: dir.to_path_buf(),
            meta,
            tail,
            direct,
            buf: AlignedBuf::new(),
            base: len / BLOCK as u64 * BLOCK as u64,
            written: len,
            committed: len,
            zeroed_to: len,
            others: 0,
            next_gen,
            faults,
            rewrite: None,
        };
        disk.read_lead().map_err(fail)?;
        disk.write_meta().map_err(fail)?;
        disk.others = disk.sum_others();
        let peers = disk.meta.peers.clone();
        let replayed = Replayed {
            rid: disk.meta.rid.clone(),
            new_rid: why_new,
            next_seq,
            entries: stats.entries,
            bytes: stats.len,
            cut_bytes: cut.as_ref().map_or(0, |c| c.2),
            cut_at: cut.map(|c| (c.0, c.1)),
            peers,
            elapsed: started.elapsed(),
        };
        Ok((disk, replayed))
    }

    fn sum_others(&self) -> u64 {
        let n = self.meta.files.len().saturating_sub(1);
        self.meta.files[..n].iter().map(|f| std::fs::metadata(self.dir.join(f)).map_or(0, |m| m.len())).sum()
    }

    /// Bytes in the journal's files (the tail as written).
    pub fn bytes(&self) -> u64 {
        self.others + self.written
    }

    /// Replaces the meta file atomically: a crash leaves the old one or this one.
    pub fn write_meta(&mut self) -> io::Result<()> {
        if self.faults.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(injected("meta write"));
        }
        let tmp = self.dir.join("meta.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(self.meta.render().as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join("meta"))?;
        sync_dir(&self.dir)
    }

    /// The bytes of the block the write position lies in, from the file: where the next write begins.
    fn read_lead(&mut self) -> io::Result<()> {
        self.buf.clear();
        let mut lead = vec![0u8; (self.committed - self.base) as usize];
        self.tail.read_exact_at(&mut lead, self.base)?;
        self.buf.extend_from_slice(&lead);
        Ok(())
    }

    /// Takes `bytes` (whole entries) for the tail segment; `write` writes them.
    pub fn stage(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes taken and not yet committed.
    pub fn pending(&self) -> usize {
        (self.base + self.buf.len() as u64 - self.committed) as usize
    }

    /// Bytes taken and not yet written.
    pub fn unwritten(&self) -> usize {
        (self.base + self.buf.len() as u64 - self.written) as usize
    }

    /// Takes `bytes` and writes them (the tests' shortcut).
    #[cfg(test)]
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stage(bytes);
        self.write()
    }

    /// Writes every byte taken and not yet written, after what is written of the tail segment. Positioned
    /// writes: after a failure and a rollback, the retry lands exactly where the failed write began.
    pub fn write(&mut self) -> io::Result<()> {
        if self.faults.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(injected("write"));
        }
        let from = (self.written - self.base) as usize;
        if let Some(direct) = &self.direct {
            let at = self.base + (from / BLOCK * BLOCK) as u64;
            match direct.write_all_at(self.buf.padded_from(from), at) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The filesystem took the flag at open but not the write: buffered from now on.
                    log::info!("journal {}: O_DIRECT write refused ({e}); writing buffered", self.dir.display());
                    self.direct = None;
                    return self.write();
                }
                Err(e) => return Err(e),
            }
            self.written = self.base + self.buf.len() as u64;
            return Ok(());
        }
        let to = if self.meta.mode == FsyncMode::Always {
            let to = self.capped_end(from);
            self.zero_ahead(self.base + to as u64);
            to
        } else {
            self.buf.len()
        };
        self.tail.write_all_at(&self.buf.as_slice()[from..to], self.written)?;
        self.written = self.base + to as u64;
        Ok(())
    }

    /// Where a write from `from` in `buf` ends under `always`: after the last whole entry within
    /// `INFLIGHT_MAX` bytes, and after the first entry in any case. The rest goes in the next write.
    fn capped_end(&self, from: usize) -> usize {
        let bytes = self.buf.as_slice();
        let mut to = from;
        while to < bytes.len() {
            let next = to + HEADER + u32::from_le_bytes(bytes[to..to + 4].try_into().expect("4 bytes")) as usize;
            if to > from && next - from > INFLIGHT_MAX {
                break;
            }
            to = next;
        }
        to
    }

    /// Makes sure the tail segment holds zeros well past `end` (written here, made durable by the next
    /// commit's fsync along with the entries), so that the commits after it only overwrite. Gives up
    /// quietly, appending as before, where the filesystem is short of room or refuses the write.
    fn zero_ahead(&mut self, end: u64) {
        static ZEROS: [u8; 1 << 16] = [0; 1 << 16];
        if end + ZERO_CHUNK / 4 <= self.zeroed_to || !has_room(&self.tail, ZERO_ROOM_MIN) {
            return;
        }
        let target = (end + ZERO_CHUNK).next_multiple_of(BLOCK as u64);
        let mut at = self.zeroed_to.max(end);
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            if self.tail.write_all_at(&ZEROS[..n], at).is_err() {
                let _ = self.tail.set_len(self.zeroed_to.max(self.written));
                return;
            }
            at += n as u64;
        }
        self.zeroed_to = target;
    }

    /// fsync (data only: the file's size is data) of the tail: everything written is now committed.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.faults.fail_syncs.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(injected("fsync"));
        }
        self.tail.sync_data()?;
        self.commit_unsynced();
        Ok(())
    }

    /// Everything written is committed (mode `no` says so without an fsync): of the bytes kept, only the
    /// block the next write begins in stays.
    pub fn commit_unsynced(&mut self) {
        self.committed = self.written;
        if self.pending() == 0 {
            self.base += (self.buf.len() / BLOCK * BLOCK) as u64;
            self.buf.keep_last_partial_block();
        }
    }

    /// After a failed write or fsync: forget what was written and not committed (it will be written again),
    /// and cut the file back so that a crash before the retry finds no half-written entry. After a failed
    /// fsync the kernel may have dropped the dirty pages, so trusting them would be wrong (PostgreSQL's
    /// "fsyncgate").
    pub fn rollback(&mut self) {
        self.written = self.committed;
        self.zeroed_to = self.committed;
        let _ = self.tail.set_len(self.committed);
    }

    /// Cuts the last write's padding or the zeros ahead off the tail segment, durably: before a clean
    /// close is recorded, and before the tail is left for a new one.
    pub fn trim(&mut self) -> io::Result<()> {
        if self.tail.metadata()?.len() != self.committed {
            self.tail.set_len(self.committed)?;
            self.tail.sync_data()?;
        }
        self.zeroed_to = self.committed;
        Ok(())
    }

    /// Whether the tail segment is written with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Step 1 of a rewrite: the tail is synced and closed, a new tail segment is listed in the meta file.
    /// Every entry appended after this goes to the new segment, so the old files plus the snapshot are no
    /// longer needed once the snapshot holds the live table.
    pub fn rotate(&mut self) -> io::Result<()> {
        debug_assert_eq!(self.pending(), 0, "the tail is committed before a rotation");
        self.sync()?;
        self.trim()?;
        let (file, name) = new_segment(&self.dir, self.next_gen)?;
        self.next_gen += 1;
        let direct = open_direct(&self.dir, &name, self.meta.mode, &self.faults).inspect_err(|_| {
            let _ = std::fs::remove_file(self.dir.join(&name));
        })?;
        self.meta.files.push(name.clone());
        if let Err(e) = self.write_meta() {
            self.meta.files.pop();
            let _ = std::fs::remove_file(self.dir.join(&name));
            return Err(e);
        }
        self.others += self.written;
        self.direct = direct;
        self.tail = file;
        self.base = 0;
        self.written = MAGIC.len() as u64;
        self.committed = self.written;
        self.zeroed_to = self.written;
        self.buf.clear();
        self.buf.extend_from_slice(MAGIC);
        self.rewrite = Some(Rewrite { keep_from: self.meta.files.len() - 1, snap: None });
        Ok(())
    }

    /// Step 2: the snapshot's entries, in chunks, to `snap-<gen>.tmp` (not listed, so debris if we crash).
    pub fn snapshot_write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.faults.fail_writes.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(injected("snapshot write"));
        }
        let rewrite = self.rewrite.as_mut().ok_or_else(|| io::Error::other("no rewrite under way"))?;
        if rewrite.snap.is_none() {
            let gen = self.next_gen;
            self.next_gen += 1;
            let path = self.dir.join(format!("snap-{gen:020}.tmp"));
            let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
            file.write_all(MAGIC)?;
            rewrite.snap = Some((file, gen));
        }
        let (file, _) = rewrite.snap.as_mut().expect("just made");
        file.write_all(chunk)
    }

    /// Step 3: the snapshot is fsynced and renamed to `snap-<gen>.log` (still unlisted).
    pub fn snapshot_seal(&mut self) -> io::Result<String> {
        if self.rewrite.as_ref().is_some_and(|r| r.snap.is_none()) {
            self.snapshot_write(&[])?; // an empty table still gets its (empty) snapshot
        }
        let rewrite = self.rewrite.as_mut().ok_or_else(|| io::Error::other("no rewrite under way"))?;
        let (file, gen) = rewrite.snap.as_ref().expect("written above");
        file.sync_all()?;
        let name = file_name(Kind::Snapshot, *gen);
        std::fs::rename(self.dir.join(format!("snap-{gen:020}.tmp")), self.dir.join(&name))?;
        sync_dir(&self.dir)?;
        Ok(name)
    }

    /// Step 4: the meta file lists the snapshot and the segments from the rotation on. This rename is the
    /// moment the rewrite takes effect.
    pub fn snapshot_install(&mut self, name: &str) -> io::Result<Vec<String>> {
        let keep_from = self.rewrite.as_ref().ok_or_else(|| io::Error::other("no rewrite under way"))?.keep_from;
        let old: Vec<String> = self.meta.files[..keep_from].to_vec();
        let mut files = vec![name.to_string()];
        files.extend_from_slice(&self.meta.files[keep_from..]);
        let before = std::mem::replace(&mut self.meta.files, files);
        if let Err(e) = self.write_meta() {
            self.meta.files = before;
            return Err(e);
        }
        self.rewrite = None;
        Ok(old)
    }

    /// Step 5: the files the rewrite replaced are removed.
    pub fn remove_old(&mut self, old: &[String]) -> io::Result<()> {
        for f in old {
            std::fs::remove_file(self.dir.join(f))?;
        }
        sync_dir(&self.dir)?;
        self.others = self.sum_others();
        Ok(())
    }

    /// Gives up a rewrite (a write failed): the snapshot file goes, the rotated segments stay listed.
    pub fn abandon_rewrite(&mut self) {
        if let Some(Rewrite { snap: Some((_, gen)), .. }) = self.rewrite.take() {
            let _ = std::fs::remove_file(self.dir.join(format!("snap-{gen:020}.tmp")));
            let _ = std::fs::remove_file(self.dir.join(file_name(Kind::Snapshot, gen)));
        }
    }

    pub fn rewriting(&self) -> bool {
        self.rewrite.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The tail segment `name` opened for `O_DIRECT` writes under `everysec` and `no`, or `None`: under
/// `always`, and where the filesystem refuses the flag (or `faults.refuse_direct` says to act as if it did).
///
/// Not under `always`: there every commit is a small write followed at once by `fdatasync`, and an
/// `O_DIRECT` write that extends the file waits for the device and makes the filesystem log the new size
/// on its own, before the `fdatasync` commits it. At 50 connections and depth 1 that made `always` answer
/// 0.86x what redis `appendfsync always` did, against 0.98x written buffered (BENCHMARKS.md). The gain is
/// in the CPU time of writing many records at once, which is what `everysec` and `no` do.
fn open_direct(dir: &Path, name: &str, mode: FsyncMode, faults: &super::Faults) -> io::Result<Option<File>> {
    if mode == FsyncMode::Always {
        return Ok(None);
    }
    let refused = || log::info!("journal {}: the filesystem refuses O_DIRECT; writing buffered", dir.display());
    if faults.refuse_direct.load(std::sync::atomic::Ordering::Relaxed) {
        refused();
        return Ok(None);
    }
    match OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(dir.join(name)) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            refused();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Creates `seg-<gen>.log` holding only the magic, durable with its directory entry.
fn new_segment(dir: &Path, gen: u64) -> io::Result<(File, String)> {
    let name = file_name(Kind::Segment, gen);
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(dir.join(&name))?;
    file.write_all_at(MAGIC, 0)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((file, name))
}

fn truncate_to(path: &Path, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    if len < MAGIC.len() as u64 {
        f.set_len(0)?;
        f.write_all_at(MAGIC, 0)?;
    } else {
        f.set_len(len)?;
    }
    f.sync_all()
}

#[derive(Default, Debug)]
struct Scan {
    entries: u64,
    max_seq: u64,
    len: u64,
    /// End of the last good entry before `bad`.
    good_end: u64,
    /// Offset of the first entry that is not whole and good.
    bad: Option<u64>,
    /// A good entry somewhere after `bad`.
    good_after: bool,
    /// Zeros from `good_end` to the end of the file, which ends on a block boundary: the padding of the
    /// last `O_DIRECT` write or the zeros written ahead under `always` (then `bad` is `None`).
    padding: u64,
    /// The bad entry and the good ones after it lie within `TORN_WRITE_MAX` bytes, followed by zeros to
    /// the end of the file: what a power loss leaves of a write into the zeros ahead whose sectors reached
    /// the device out of order.
    torn_write: bool,
}

/// Replays one file through `on_entry` until its end or its first bad entry, reading 8 MiB at a time.
fn scan_file(path: &Path, on_entry: &mut dyn FnMut(u64, &[u8])) -> io::Result<Scan> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut scan = Scan { len, ..Scan::default() };
    let mut magic = [0u8; 8];
    let got = read_full(&mut file, &mut magic)?;
    if got < MAGIC.len() || &magic != MAGIC {
        scan.bad = Some(0);
        scan.good_after = got == MAGIC.len() && has_good_from(&mut file, 0)?;
        return Ok(scan);
    }
    let mut buf = vec![0u8; CHUNK.max(HEADER + MAX_PAYLOAD)];
    let (mut filled, mut pos, mut base, mut eof) = (0usize, 0usize, MAGIC.len() as u64, false);
    loop {
        match format::decode(&buf[..filled], pos) {
            Entry::Good { seq, payload, next } => {
                on_entry(seq, payload);
                scan.entries += 1;
                scan.max_seq = scan.max_seq.max(seq);
                pos = next;
            }
            Entry::Short if !eof => {
                buf.copy_within(pos..filled, 0);
                base += pos as u64;
                filled -= pos;
                pos = 0;
                let n = read_full(&mut file, &mut buf[filled..])?;
                eof = filled + n < buf.len();
                filled += n;
            }
            Entry::Short if pos == filled => break,
            Entry::Short | Entry::Bad => {
                let bad = base + pos as u64;
                if is_padding(&file, bad, len)? {
                    scan.padding = len - bad;
                    break;
                }
                scan.bad = Some(bad);
                let (good_after, nonzero_end) = rest_after(&mut file, bad + 1)?;
                scan.good_after = good_after;
                scan.torn_write =
                    good_after && len % BLOCK as u64 == 0 && nonzero_end < len && nonzero_end - bad <= TORN_WRITE_MAX;
                break;
            }
        }
    }
    scan.good_end = base + pos as u64;
    Ok(scan)
}

/// Whether the file's bytes from `from` to its end `len` are zeros this journal writes after its entries
/// (an `O_DIRECT` write's padding, the zeros ahead under `always`): the file ends on a block boundary and
/// they are all zero.
fn is_padding(file: &File, from: u64, len: u64) -> io::Result<bool> {
    if len % BLOCK as u64 != 0 {
        return Ok(false);
    }
    let mut piece = vec![0u8; (len - from).min(1 << 20) as usize];
    let mut at = from;
    while at < len {
        let n = (len - at).min(piece.len() as u64) as usize;
        file.read_exact_at(&mut piece[..n], at)?;
        if piece[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Whether the filesystem holding `file` has `bytes` free for an unprivileged writer.
pub fn has_room(file: &File, bytes: u64) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: `fstatvfs` writes only into the struct it is given, which is plain data.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::fstatvfs(file.as_raw_fd(), &mut st) } == 0;
    ok && (st.f_bavail as u64).saturating_mul(st.f_frsize as u64) >= bytes
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether a good entry starts anywhere at or after byte `from` (only on the corruption path).
fn has_good_from(file: &mut File, from: u64) -> io::Result<bool> {
    Ok(rest_after(file, from)?.0)
}

/// Whether a good entry starts anywhere at or after byte `from`, and where the file's last non-zero byte
/// ends (`from` if there is none).
fn rest_after(file: &mut File, from: u64) -> io::Result<(bool, u64)> {
    let mut rest = Vec::new();
    file.seek(SeekFrom::Start(from))?;
    file.read_to_end(&mut rest)?;
    let nonzero_end = from + rest.iter().rposition(|&b| b != 0).map_or(0, |i| i as u64 + 1);
    Ok((format::any_good_after(&rest, 0).is_some(), nonzero_end))
}

fn has_good_entry(path: &Path) -> io::Result<bool> {
    let mut file = File::open(path)?;
    has_good_from(&mut file, MAGIC.len() as u64)
}
