//! The server's own log file (PROTOCOL section 6): every command and reply, every connection opened and
//! dropped, every Places request, start-up and shut-down.
//!
//! Logging every command at full rate must not be what limits throughput, so nothing here writes per line.
//! Lines are formatted into one in-memory buffer with a timestamp formatted once per loop turn, and the
//! buffer is handed off when it passes 256 KiB, when the loop's log timer fires (every 50 ms while there is
//! something to write), and at shut-down.
//!
//! The loop thread never writes the file itself. A regular-file `write` is the one system call here that
//! can block for as long as the disk likes (page-cache allocation, ext4's journal, writeback throttling),
//! and even when it does not, copying 64 KiB into fresh page-cache pages was the largest single cost of a
//! deep pipeline (BENCHMARKS.md, "The log writer"). So a full buffer is handed to one writer thread, which
//! writes it and hands it back empty:
//!
//! ```text
//!   loop thread                          writer thread ("herd-log")
//!   format lines into `buf`
//!   buf ≥ 256 KiB or timer: ──full──▶    write_all(buf) to the file
//!   take an empty buffer    ◀─empty──    buf.clear()
//! ```
//!
//! Four buffers circulate, so in steady state nothing is allocated. The hand-off is a `Mailbox`: two
//! queues behind a mutex that each side holds for a few instructions, and `park`/`unpark` to sleep and
//! wake the writer, called only once the mutex is released. That is one futex wake on the loop thread and
//! one futex wait on the writer per buffer. (`std::sync::mpsc::sync_channel` woke the writer while it still
//! held its own lock; pinned to one core with the loop, the writer preempted the loop, found the lock taken
//! and slept again: 4.3 futex calls per buffer instead of 2.) If the disk falls so far behind that no empty
//! buffer is back, the loop keeps appending to the buffer it has, up to `BACKLOG_MAX`; past that it drops
//! lines rather than stall every client, counts them, and writes how many were dropped once the disk
//! catches up.
//!
//! What an operator needs to leave it running for weeks, all on the writer thread so the loop never waits:
//! - **Privacy.** The log holds every client's position: files are created `0600` (an existing file is
//!   tightened to `0600`) and a directory the server creates is `0700`.
//! - **Rotation.** Past `log_max_bytes` the file is renamed `NAME.log.1` (older ones shift up to
//!   `NAME.log.<log_keep>`, the oldest is deleted) and a fresh `NAME.log` is started, always at a line
//!   boundary. `log_max_bytes × (log_keep + 1)` bounds the disk the log can take.
//! - **Reopen.** SIGHUP asks the writer to reopen the file by name: external rotation (logrotate's
//!   `create` mode) works too.
//! - **Detail.** `log_detail: "events"` keeps connections, links, errors and Places outcomes and drops the
//!   per-command, per-reply and per-record lines.
//! - **Escaping.** Every byte that came from the network reaches the file escaped: printable ASCII as is,
//!   `\\`, `\n`, `\t`, `\r`, and `\xNN` for any other byte, so no control byte (a terminal escape, a
//!   line break) is ever written raw. Command, reply and record lines escape their bytes; an event line is
//!   escaped after formatting if it holds any such byte (a HELLO name, a Places status).

use super::error::ServerError;
pub use crate::config::{LogDetail as Detail, LogOptions as Options};
use crate::protocol::Timestamp;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often buffered lines reach the file at the latest.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Each hand-off costs system calls: a futex wake on the loop thread, and a `write` and a futex wait on the
/// writer thread. At 256 KiB, about a thousand logged IAMATs share them (BENCHMARKS.md, "System calls").
const FLUSH_AT: usize = 256 * 1024;
/// Buffers circulating between the loop and the writer thread.
const BUFFERS: usize = 4;
/// How far one buffer may grow while the writer is behind, before command, reply and peer lines are dropped.
const BACKLOG_MAX: usize = 8 * 1024 * 1024;
/// How much further lines about the server's own life (`event`: start-up, shut-down, connections, Places)
/// may grow it, so that a flood of commands, even blank lines, cannot crowd them out.
const EVENT_RESERVE: usize = 1024 * 1024;
/// Bytes of a reply body logged before the rest is summarised as a count.
const BODY_PREVIEW: usize = 120;

pub struct ServerLog {
    writer: Option<Writer>,
    detail: Detail,
    buf: Vec<u8>,
    stamp: [u8; 27],
    /// Lines dropped since the last notice written to the file, and in all.
    dropped: u64,
    dropped_total: u64,
}

/// The loop's end of the writer thread.
struct Writer {
    mailbox: Arc<Mailbox>,
    thread: JoinHandle<()>,
}

/// The buffers between the two threads. Each side holds the lock only to move a buffer in or out.
#[derive(Default)]
struct Mailbox(Mutex<Slots>);

#[derive(Default)]
struct Slots {
    /// Buffers to write, oldest first.
    full: VecDeque<Vec<u8>>,
    /// Written buffers, cleared, for the loop to fill again.
    empty: Vec<Vec<u8>>,
    /// The loop has handed over its last buffer: write what is queued, then stop.
    closing: bool,
    /// SIGHUP: reopen the file by name before the next write.
    reopen: bool,
}

impl Mailbox {
    fn slots(&self) -> MutexGuard<'_, Slots> {
        // A panic while holding the lock leaves only buffers behind: they are still good to use.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The writer thread's end: the open file, its size, and the rotation policy.
struct Sink {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
    /// A write or rotation failure is said once per failing stretch, not once per buffer.
    failed: bool,
}

impl Sink {
    fn new(file: File, path: &Path, options: &Options) -> Sink {
        let size = file.metadata().map_or(0, |m| m.len());
        Sink {
            path: path.to_path_buf(),
            file: Some(file),
            size,
            max_bytes: options.max_bytes,
            keep: options.keep,
            failed: false,
        }
    }

    /// Appends `buf` (whole lines), rotating at line boundaries so that no file passes `max_bytes`, except
    /// a file holding a single line longer than that.
    fn write(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let room = usize::try_from(self.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
            if buf.len() <= room {
                self.append(buf);
                return;
            }
            let mut cut = memchr::memrchr(b'\n', &buf[..room]).map_or(0, |i| i + 1);
            if cut == 0 && self.size == 0 {
                // One line longer than a whole file: it goes alone into a fresh file.
                cut = memchr::memchr(b'\n', buf).map_or(buf.len(), |i| i + 1);
            }
            self.append(&buf[..cut]);
            buf = &buf[cut..];
            self.rotate();
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else { return };
        match file.write_all(bytes) {
            Ok(()) => {
                self.size += bytes.len() as u64;
                self.failed = false;
            }
            Err(e) => self.failure(format!("log write to {} failed: {e}", self.path.display())),
        }
    }

    /// `NAME.log.{keep-1}` → `NAME.log.{keep}`, …, `NAME.log` → `NAME.log.1`, then a fresh `NAME.log`.
    fn rotate(&mut self) {
        let numbered = |k: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{k}"));
            PathBuf::from(p)
        };
        self.file = None;
        let moved = if self.keep == 0 {
            std::fs::remove_file(&self.path)
        } else {
            for k in (1..self.keep).rev() {
                // A missing older file is normal (the first rotations).
                let _ = std::fs::rename(numbered(k), numbered(k + 1));
            }
            std::fs::rename(&self.path, numbered(1))
        };
        if let Err(e) = moved {
            self.failure(format!("log rotation of {} failed: {e}", self.path.display()));
        }
        self.reopen();
    }

    /// Opens the file by name again (after rotation, or on SIGHUP after an external rotation).
    fn reopen(&mut self) {
        match open_private(&self.path) {
            Ok(file) => {
                self.size = file.metadata().map_or(0, |m| m.len());
                self.file = Some(file);
            }
            // Keep writing to the old file rather than losing lines.
            Err(e) => self.failure(format!("cannot reopen log file {}: {e}", self.path.display())),
        }
        if self.file.is_none() {
            self.failure(format!("log file {} is closed: lines are lost", self.path.display()));
        }
    }

    fn failure(&mut self, what: String) {
        if !self.failed {
            self.failed = true;
            log::warn!("{what}");
        }
    }
}

/// Opens `path` for appending, created `0600`; an existing file is tightened to `0600`.
fn open_private(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let mut perms = file.metadata()?.permissions();
    if perms.mode() & 0o077 != 0 {
        perms.set_mode(perms.mode() & 0o700);
        file.set_permissions(perms)?;
    }
    Ok(file)
}

impl Writer {
    fn spawn(file: File, path: &Path, options: &Options) -> Result<Writer, ServerError> {
        let mailbox = Arc::new(Mailbox::default());
        mailbox.slots().empty = (1..BUFFERS).map(|_| Vec::with_capacity(FLUSH_AT * 2)).collect();
        let mut sink = Sink::new(file, path, options);
        let theirs = Arc::clone(&mailbox);
        let thread = std::thread::Builder::new()
            .name("herd-log".into())
            .spawn(move || loop {
                let (next, reopen) = {
                    let mut slots = theirs.slots();
                    let reopen = std::mem::take(&mut slots.reopen);
                    match slots.full.pop_front() {
                        Some(buf) => (Some(buf), reopen),
                        None if slots.closing => return,
                        None => (None, reopen),
                    }
                };
                if reopen {
                    sink.file = None;
                    sink.reopen();
                }
                // Nothing to write: sleep until the loop unparks us. A spurious wake-up only loops.
                let Some(mut buf) = next else {
                    std::thread::park();
                    continue;
                };
                sink.write(&buf);
                buf.clear();
                // A backlog grew this buffer far past its usual size while the disk was behind: give that
                // memory back instead of keeping it for the life of the process.
                if buf.capacity() > FLUSH_AT * 4 {
                    buf = Vec::with_capacity(FLUSH_AT * 2);
                }
                theirs.slots().empty.push(buf);
            })
            .map_err(|source| ServerError::Thread { what: "log writer", source })?;
        Ok(Writer { mailbox, thread })
    }

    /// Queues `full` for writing and takes an empty buffer in exchange, if one is back: `false` leaves
    /// `full` with the caller (the writer is behind). Wakes the writer after the lock is released.
    fn exchange(&self, full: &mut Vec<u8>) -> bool {
        {
            let mut slots = self.mailbox.slots();
            let Some(empty) = slots.empty.pop() else { return false };
            slots.full.push_back(std::mem::replace(full, empty));
        }
        self.thread.thread().unpark();
        true
    }
}

impl ServerLog {
    /// Opens (appending) `path`, `0600`, creating its directory (`0700`) if missing.
    pub fn open(path: &Path, options: &Options) -> Result<ServerLog, ServerError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| ServerError::LogDir { dir: dir.to_path_buf(), source })?;
        }
        let file = open_private(path).map_err(|source| ServerError::LogFile { path: path.to_path_buf(), source })?;
        Self::to_file(file, path, options)
    }

    /// A log written to `file` (already open for appending) by a new writer thread.
    fn to_file(file: File, path: &Path, options: &Options) -> Result<ServerLog, ServerError> {
        let writer = Writer::spawn(file, path, options)?;
        Ok(ServerLog {
            writer: Some(writer),
            detail: options.detail,
            buf: Vec::with_capacity(FLUSH_AT * 2),
            stamp: [b'0'; 27],
            dropped: 0,
            dropped_total: 0,
        })
    }

    /// SIGHUP: the writer reopens the file by name before its next write (for external rotation).
    pub fn reopen(&mut self) {
        let Some(writer) = &self.writer else { return };
        writer.mailbox.slots().reopen = true;
        writer.thread.thread().unpark();
    }

    /// A log that keeps nothing (benchmarks of the loop without disk).
    pub fn disabled() -> ServerLog {
        ServerLog { writer: None, detail: Detail::Io, buf: Vec::new(), stamp: [b'0'; 27], dropped: 0, dropped_total: 0 }
    }

    /// Lines dropped because the disk fell behind, since start-up (a metric).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Sets the timestamp used by every line until the next call: once per loop turn.
    pub fn set_time(&mut self, now: Timestamp) {
        format_rfc3339_micros(now, &mut self.stamp);
    }

    /// Whether a line per record sent to or received from a peer is written (`peer`): a log file, at
    /// `log_detail` `records`.
    pub fn logs_records(&self) -> bool {
        self.writer.is_some() && self.detail == Detail::Records
    }

    /// Whether a line per read from a peer and per hand-off to it, with its record counts, is written
    /// (`peer_counts`): a log file, at `log_detail` `io` (the default). At `records` every record has a
    /// line of its own instead.
    pub fn logs_peer_counts(&self) -> bool {
        self.writer.is_some() && self.detail == Detail::Io
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Starts a line, or says why not: no log file, or the disk is so far behind that the buffer has reached
    /// `limit` and lines are dropped.
    fn start(&mut self, what: &str, limit: usize) -> Option<&mut Vec<u8>> {
        self.writer.as_ref()?;
        if self.buf.len() >= limit {
            self.dropped += 1;
            self.dropped_total += 1;
            return None;
        }
        self.buf.extend_from_slice(&self.stamp);
        self.buf.push(b' ');
        self.buf.extend_from_slice(what.as_bytes());
        Some(&mut self.buf)
    }

    fn end(&mut self) {
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    /// A free-form event. Whatever the arguments hold (a name from a HELLO, a status from Places) is
    /// escaped if it holds a byte that is not printable ASCII; plain text (nearly every event) is left as is.
    pub fn event(&mut self, text: std::fmt::Arguments<'_>) {
        let Some(buf) = self.start("", BACKLOG_MAX + EVENT_RESERVE) else { return };
        let from = buf.len();
        let _ = buf.write_fmt(text);
        if buf[from..].iter().any(|&b| !(0x20..=0x7e).contains(&b)) {
            let raw = buf.split_off(from);
            escape_into(buf, &raw);
        }
        self.end();
    }

    /// A command received from a client (bytes escaped).
    pub fn command(&mut self, addr: &AddrText, line: &[u8]) {
        if self.detail == Detail::Events {
            return;
        }
        self.bytes("recv", addr, line, line.len());
    }

    /// A reply sent to a client. Long replies (WHATSAT's JSON) are cut after a preview and counted.
    pub fn reply(&mut self, addr: &AddrText, reply: &[u8]) {
        if self.detail == Detail::Events {
            return;
        }
        let reply = reply.strip_suffix(b"\n").unwrap_or(reply);
        self.bytes("send", addr, reply, BODY_PREVIEW);
    }

    /// A record received from or sent to a peer (`log_detail` `records`).
    pub fn peer(&mut self, what: &str, peer: &str, line: &[u8]) {
        if self.detail != Detail::Records {
            return;
        }
        let Some(buf) = self.start(what, BACKLOG_MAX) else { return };
        buf.push(b' ');
        buf.extend_from_slice(peer.as_bytes());
        buf.push(b' ');
        escape_into(buf, line.strip_suffix(b"\n").unwrap_or(line));
        self.end();
    }

    /// What one read from a peer, or one hand-off to it, carried: `counts` as `name=value` pairs
    /// (`log_detail` `io`). A line per record costs more than the record's own handling at a receiving
    /// server (BENCHMARKS.md, issue 19), so the default counts them.
    pub fn peer_counts(&mut self, what: &str, peer: &str, counts: &[(&str, u64)]) {
        if self.detail != Detail::Io {
            return;
        }
        let Some(buf) = self.start(what, BACKLOG_MAX) else { return };
        buf.push(b' ');
        buf.extend_from_slice(peer.as_bytes());
        for (name, value) in counts {
            // By hand: `write!` costs a few hundred instructions a number, several lines a loop turn.
            buf.push(b' ');
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'=');
            crate::protocol::write_digits(buf, *value, 1);
        }
        self.end();
    }

    fn bytes(&mut self, what: &str, addr: &AddrText, bytes: &[u8], limit: usize) {
        let Some(buf) = self.start(what, BACKLOG_MAX) else { return };
        buf.push(b' ');
        buf.extend_from_slice(addr.as_bytes());
        buf.push(b' ');
        let shown = &bytes[..bytes.len().min(limit)];
        escape_into(buf, shown);
        if shown.len() < bytes.len() {
            let _ = write!(buf, " …(+{} bytes)", bytes.len() - shown.len());
        }
        self.end();
    }

    /// Hands everything logged since the last flush to the writer thread, without waiting for the disk.
    /// If no empty buffer is back yet, the lines stay here and go with the next flush.
    pub fn flush(&mut self) {
        let Some(writer) = &self.writer else { return };
        if !self.buf.is_empty() && writer.exchange(&mut self.buf) {
            self.note_dropped();
        }
    }

    /// Writes everything to the file and waits until it is there: shut-down. The log keeps nothing after.
    pub fn close(&mut self) {
        if self.writer.is_none() {
            return;
        }
        self.note_dropped();
        let writer = self.writer.take().expect("checked above");
        {
            let mut slots = writer.mailbox.slots();
            if !self.buf.is_empty() {
                slots.full.push_back(std::mem::take(&mut self.buf));
            }
            slots.closing = true;
        }
        writer.thread.thread().unpark();
        let _ = writer.thread.join();
    }

    /// Says in the file how many lines were dropped since the last such notice (past the backlog bound).
    fn note_dropped(&mut self) {
        let dropped = std::mem::take(&mut self.dropped);
        if dropped > 0 {
            self.buf.extend_from_slice(&self.stamp);
            let _ = writeln!(self.buf, " log: {dropped} lines dropped while the disk was behind");
        }
    }
}

impl Drop for ServerLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// A client's address as text, formatted once when it connects (at most 47 bytes for IPv6 with a port),
/// so logging a command costs a copy rather than a trip through `fmt`.
#[derive(Clone, Copy)]
pub struct AddrText {
    buf: [u8; 48],
    len: u8,
}

impl AddrText {
    pub fn new(addr: SocketAddr) -> AddrText {
        let mut text = AddrText { buf: [0; 48], len: 0 };
        let mut w = std::io::Cursor::new(&mut text.buf[..]);
        let _ = write!(w, "{addr}");
        text.len = w.position() as u8;
        text
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl std::fmt::Display for AddrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

/// Printable ASCII is copied as is; everything else as `\n`, `\t`, `\r`, `\\` or `\xNN`, so one log line
/// is one line whatever the client sent, and bytes that are not UTF-8 stay visible. Runs of plain bytes
/// (nearly every command) are copied whole.
pub fn escape_into(out: &mut Vec<u8>, mut bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    while !bytes.is_empty() {
        let run = plain_prefix(bytes);
        out.extend_from_slice(&bytes[..run]);
        let Some((&b, rest)) = bytes[run..].split_first() else { return };
        bytes = rest;
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]),
        }
    }
}

/// How many leading bytes need no escaping: printable ASCII other than `\\`. Eight bytes are checked
/// at once with the classic "has a byte less than / more than / equal to" bit tricks.
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    let plain = |b: &u8| (0x20..=0x7e).contains(b) && *b != b'\\';
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let x = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("eight bytes"));
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        // 0x7f - 0x7e = 1: adding one per byte carries into the high bit exactly for 0x7f and up.
        let above_tilde = (x.wrapping_add(ONES) | x) & HIGH;
        let y = x ^ (ONES * u64::from(b'\\'));
        let backslash = y.wrapping_sub(ONES) & !y & HIGH;
        if below_space | above_tilde | backslash != 0 {
            break;
        }
        i += 8;
    }
    i + bytes[i..].iter().position(|b| !plain(b)).unwrap_or(bytes.len() - i)
}

/// `2026-11-22T04:16:11.123456Z`, 27 bytes, from days-since-epoch arithmetic (Howard Hinnant's
/// civil_from_days), so the loop never calls into libc's time zone machinery.
pub fn format_rfc3339_micros(t: Timestamp, out: &mut [u8; 27]) {
    let days = (t.secs / 86_400) as i64;
    let rem = t.secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Digits written by hand: `write!` with padding costs over a thousand instructions, once per turn.
    let put = |out: &mut [u8; 27], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(out, 0, 4, year as u64);
    put(out, 5, 2, month as u64);
    put(out, 8, 2, day as u64);
    put(out, 11, 2, rem / 3600);
    put(out, 14, 2, rem / 60 % 60);
    put(out, 17, 2, rem % 60);
    put(out, 20, 6, u64::from(t.nanos / 1000));
    for (i, c) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')] {
        out[i] = c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe is no file to rotate: rotating would rename and reopen `pipe` in the working directory.
    const NEVER_ROTATE: Options = Options { max_bytes: u64::MAX, keep: 0, detail: Detail::Io };

    #[test]
    fn timestamps_format_as_rfc3339() {
        let mut out = [0u8; 27];
        format_rfc3339_micros(Timestamp { secs: 1_520_023_934, nanos: 918_963_997 }, &mut out);
        assert_eq!(&out, b"2018-03-02T20:52:14.918963Z");
        format_rfc3339_micros(Timestamp { secs: 951_782_400, nanos: 0 }, &mut out);
        assert_eq!(&out, b"2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn the_plain_prefix_agrees_with_a_byte_by_byte_scan() {
        let plain = |b: &u8| (0x20..=0x7e).contains(b) && *b != b'\\';
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..200 {
            let mut bytes: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if len > 0 {
                    bytes[(x as usize) % len] = (x >> 32) as u8;
                }
                let want = bytes.iter().position(|b| !plain(b)).unwrap_or(len);
                assert_eq!(plain_prefix(&bytes), want, "{bytes:?}");
            }
        }
    }

    /// A writer blocked on a pipe nobody reads stands for a disk that has stopped: logging must never
    /// block the loop, drops must be counted, and every line not dropped must arrive, in order, with a
    /// notice of how many were dropped.
    #[test]
    fn a_stalled_disk_never_blocks_the_loop_and_drops_are_counted() {
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut log = ServerLog::to_file(file, Path::new("pipe"), &NEVER_ROTATE).unwrap();
        log.set_time(Timestamp { secs: 1_520_023_934, nanos: 0 });
        let addr = AddrText::new("127.0.0.1:4000".parse().unwrap());
        let n = 200_000u64; // about 29 MB of lines: far more than the pipe, the buffers and BACKLOG_MAX
        for i in 0..n {
            log.command(&addr, format!("IAMAT {i:>90}").as_bytes());
            if i % 1000 == 0 {
                log.flush(); // as the loop's timer would
            }
        }
        let dropped = log.dropped_total();
        assert!(dropped > 0 && dropped < n, "dropped {dropped} of {n}");
        // Past the backlog bound, lines about the server's own life still get in (shut-down, for one).
        log.event(format_args!("signal 15: shutting down"));
        let reading = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
            all
        });
        log.close();
        let all = reading.join().unwrap();
        let lines: Vec<&[u8]> = all.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len() as u64, n - dropped + 2);
        let notice = String::from_utf8_lossy(lines[lines.len() - 1]);
        assert!(notice.ends_with(&format!("log: {dropped} lines dropped while the disk was behind")), "{notice}");
        assert_eq!(
            String::from_utf8_lossy(lines[lines.len() - 2]),
            "2018-03-02T20:52:14.000000Z signal 15: shutting down"
        );
        // The lines kept are the first ones, in order: dropping starts only when the backlog is full.
        for (i, line) in lines[..lines.len() - 2].iter().enumerate() {
            let want = format!("2018-03-02T20:52:14.000000Z recv 127.0.0.1:4000 IAMAT {i:>90}");
            assert_eq!(String::from_utf8_lossy(line), want);
        }
    }

    /// After a burst that the disk could not keep up with, the buffers that held the backlog are given
    /// back: the log's memory does not stay at its high-water mark.
    #[test]
    fn a_backlog_does_not_keep_its_memory() {
        use std::io::Read;
        let (mut reader, writer) = std::io::pipe().unwrap();
        let file = File::from(std::os::fd::OwnedFd::from(writer));
        let mut log = ServerLog::to_file(file, Path::new("pipe"), &NEVER_ROTATE).unwrap();
        log.set_time(Timestamp { secs: 1_520_023_934, nanos: 0 });
        let addr = AddrText::new("127.0.0.1:4000".parse().unwrap());
        for i in 0..60_000u64 {
            log.command(&addr, format!("IAMAT {i:>90}").as_bytes());
            if i % 1000 == 0 {
                log.flush();
            }
        }
        assert!(log.buf.capacity() > FLUSH_AT * 4, "the backlog is in the loop's buffer");
        let reading = std::thread::spawn(move || {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).unwrap();
        });
        // The disk is back: keep handing buffers over until the big one has been through the writer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // All four buffers accounted for: the loop's, and every other one back from the writer. The writer
        // replaces a buffer past FLUSH_AT * 4 and keeps smaller ones (a buffer that grew a little while the
        // writer was busy is kept): what matters is that none stays at the backlog's megabytes.
        let small = |log: &ServerLog| {
            let slots = log.writer.as_ref().unwrap().mailbox.slots();
            log.buf.capacity() <= FLUSH_AT * 4
                && slots.empty.len() == BUFFERS - 1
                && slots.empty.iter().all(|b| b.capacity() <= FLUSH_AT * 4)
        };
        while !small(&log) {
            assert!(std::time::Instant::now() < deadline, "buffers still large: {}", log.buf.capacity());
            log.event(format_args!("tick"));
            log.flush();
            std::thread::yield_now();
        }
        log.close();
        reading.join().unwrap();
    }

    #[test]
    fn escaping_keeps_one_line() {
        let mut out = Vec::new();
        escape_into(&mut out, b"a\\b\n\xff ok");
        assert_eq!(out, b"a\\\\b\\n\\xff ok");
    }
}
