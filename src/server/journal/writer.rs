//! The journal's writer thread: the only thread that calls write(2) and fsync on the journal's files.
//! It takes batches from the loop's mailbox, appends them, commits them by the fsync mode (one fsync for
//! many entries under `always`: group commit), tells the loop how far entries are durable (an atomic and
//! the loop's `mio::Waker`), keeps the meta file, retries after a failing disk, and carries out rewrites.

use super::*;

/// The writer thread's state.
pub(super) struct Writer {
    disk: Disk,
    shared: Arc<Shared>,
    waker: Arc<mio::Waker>,
    mode: FsyncMode,
    /// The seq of the last entry taken from the mailbox. The entries themselves are kept by `disk` until
    /// their commit, because a failed fsync writes them again; under `everysec` that is up to a second's
    /// worth, or `EVERYSEC_UNSYNCED_MAX` bytes.
    tail_last: u64,
    commands: VecDeque<Command>,
    last_sync: Instant,
    retry: Option<Duration>,
    /// Rewrite: whether every step so far succeeded.
    rewrite_ok: bool,
    peers: Option<BTreeMap<String, (String, u64)>>,
    last_meta: Instant,
    last_seq: u64,
}

impl Writer {
    pub(super) fn new(disk: Disk, shared: Arc<Shared>, waker: Arc<mio::Waker>, mode: FsyncMode) -> Writer {
        Writer {
            disk,
            shared,
            waker,
            mode,
            tail_last: 0,
            commands: VecDeque::new(),
            last_sync: Instant::now(),
            retry: None,
            rewrite_ok: true,
            peers: None,
            // The first offsets are written at once.
            last_meta: Instant::now() - META_EVERY,
            last_seq: 0,
        }
    }

    pub(super) fn run(mut self) {
        let mut close_attempts = 0;
        loop {
            let (closing, crash) = self.take();
            if crash {
                return;
            }
            let wrote = self.write_and_commit(closing);
            if self.retry.is_none() {
                self.run_commands(closing);
            }
            self.write_peers(closing);
            // Only what is not yet written is the disk falling behind (what waits for its fsync is bounded
            // by `EVERYSEC_UNSYNCED_MAX`).
            self.shared.writer_backlog.store(self.disk.unwritten() as u64, Ordering::Relaxed);
            if closing {
                let idle =
                    self.disk.pending() == 0 && self.commands.is_empty() && self.shared.slots().queued.is_empty();
                if idle && self.retry.is_none() && self.disk.trim().is_ok() {
                    self.disk.meta.clean = true;
                    self.disk.meta.last_seq = self.last_seq;
                    if self.disk.write_meta().is_ok() {
                        return;
                    }
                }
                // Only failures count: a close still writing capped pieces (`Disk::write`) is progress.
                if idle || self.retry.is_some() {
                    close_attempts += 1;
                }
                if close_attempts >= 5 {
                    log::error!(
                        "journal {}: giving up at shut-down, the disk keeps failing",
                        self.disk.dir().display()
                    );
                    return;
                }
            }
            // Under `always` a write is capped (`Disk::write`): what is left goes at once, in the next piece.
            if self.disk.unwritten() > 0 && self.mode == FsyncMode::Always && self.retry.is_none() {
                continue;
            }
            // Under `everysec` and `no` nothing waits for the disk: after a write, let the loop gather a few
            // milliseconds of records for the next one, so that writes are big (a few hundred a second, not
            // one per loop turn) and the loop's hand-offs find this thread awake (unparking a thread that
            // is not parked is an atomic swap, not a futex wake and a context switch).
            if wrote && self.mode != FsyncMode::Always && !closing && self.retry.is_none() {
                std::thread::sleep(WRITE_PACE);
            }
            // Sleep until the loop hands over more, or until a retry, a once-a-second fsync or a meta write
            // is due. A wake-up that finds nothing to do only loops.
            let mut wait = self.retry;
            if self.mode == FsyncMode::EverySec && self.disk.pending() > 0 {
                let due = Duration::from_secs(1).saturating_sub(self.last_sync.elapsed());
                wait = Some(wait.map_or(due, |w| w.min(due)));
            }
            if self.peers.is_some() {
                let due = META_EVERY.saturating_sub(self.last_meta.elapsed());
                wait = Some(wait.map_or(due, |w| w.min(due)));
            }
            match wait {
                Some(d) if d.is_zero() => {}
                Some(d) => std::thread::park_timeout(d),
                None if closing => std::thread::park_timeout(RETRY_FIRST),
                None => std::thread::park(),
            }
        }
    }

    /// Takes queued bytes and commands from the mailbox. Bytes are not taken while a rotation is pending
    /// here: they were queued after it and belong in the new segment.
    fn take(&mut self) -> (bool, bool) {
        let mut slots = self.shared.slots();
        if !self.commands.iter().any(|c| matches!(c, Command::Rotate)) && !slots.queued.is_empty() {
            // The loop's batches, in order, sealed (the loop left the CRCs to this thread) and copied into
            // the disk's block-aligned buffer here, off the loop's thread (the one copy: with `O_DIRECT` the
            // kernel writes from that buffer); their buffers go back to the loop as spares. The aligned
            // buffer is kept and grows once, to what `everysec` holds between fsyncs, instead of being
            // faulted in anew after every commit. Each entry is sealed once, however many writes (`always`
            // caps each) or retries it takes.
            for mut batch in std::mem::take(&mut slots.queued) {
                format::seal(&mut batch);
                self.disk.stage(&batch);
                batch.clear();
                if slots.spare.len() < SPARE_BATCHES {
                    slots.spare.push(batch);
                }
            }
            self.tail_last = slots.queued_last;
        }
        // The loop kept entries back while the queue was full: its next turn hands them over.
        let wake_loop = slots.held && slots.queued.is_empty();
        slots.held &= !wake_loop;
        self.commands.extend(slots.commands.drain(..));
        if let Some(p) = slots.peers.take() {
            self.peers = Some(p);
        }
        self.last_seq = slots.last_seq;
        self.disk.meta.last_seq = self.disk.meta.last_seq.max(self.last_seq);
        let state = (slots.closing, slots.crash);
        drop(slots);
        if wake_loop {
            let _ = self.waker.wake();
        }
        state
    }

    /// Writes what is not yet written of the tail, and commits it as the mode says. Returns whether it
    /// wrote anything.
    fn write_and_commit(&mut self, force_sync: bool) -> bool {
        let wrote = self.disk.unwritten() > 0;
        if wrote {
            if let Err(e) = self.disk.write() {
                self.failed("write", e);
                return false;
            }
            self.shared.bytes.store(self.disk.bytes(), Ordering::Relaxed);
        }
        if self.disk.pending() == 0 {
            return wrote;
        }
        let sync = match self.mode {
            FsyncMode::Always => true,
            FsyncMode::EverySec => {
                force_sync
                    || self.last_sync.elapsed() >= Duration::from_secs(1)
                    || self.disk.pending() >= EVERYSEC_UNSYNCED_MAX
            }
            FsyncMode::No => force_sync,
        };
        if sync {
            if let Err(e) = self.sync() {
                self.failed("fsync", e);
                return wrote;
            }
        } else if self.mode == FsyncMode::No {
            self.disk.commit_unsynced();
        } else {
            return wrote; // everysec: not yet
        }
        self.committed();
        wrote
    }

    fn sync(&mut self) -> std::io::Result<()> {
        let delay = self.disk_faults_delay();
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let started = Instant::now();
        let result = self.disk.sync();
        let took = started.elapsed().as_micros() as u64;
        self.last_sync = Instant::now();
        if result.is_ok() {
            let s = &self.shared;
            s.fsyncs.fetch_add(1, Ordering::Relaxed);
            s.fsync_micros.fetch_add(took, Ordering::Relaxed);
            let bucket = FSYNC_BUCKETS_US.iter().position(|&b| took <= b).unwrap_or(FSYNC_BUCKETS_US.len());
            s.fsync_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn disk_faults_delay(&self) -> u64 {
        self.disk.faults.sync_delay_ms.load(Ordering::Relaxed)
    }

    /// The tail is committed: publish it and wake the loop if it waits.
    fn committed(&mut self) {
        // Under `always` a commit may cover only the first pieces of what was taken (`Disk::write` caps
        // each write): the seqs taken are durable once none of their bytes is left to commit.
        let all = self.disk.pending() == 0;
        if all {
            self.shared.durable.store(self.tail_last, Ordering::SeqCst);
        }
        let recovered = self.retry.take().is_some();
        if recovered {
            self.shared.failing.store(false, Ordering::Relaxed);
            log::info!("journal {}: writes succeed again", self.disk.dir().display());
        }
        if recovered || (all && self.shared.want_wake.swap(false, Ordering::SeqCst)) {
            let _ = self.waker.wake();
        }
    }

    fn failed(&mut self, what: &str, e: std::io::Error) {
        self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
        self.shared.failed.store(self.tail_last, Ordering::Release);
        self.disk.rollback();
        if self.retry.is_none() {
            self.shared.failing.store(true, Ordering::Relaxed);
            log::warn!(
                "journal {}: {what} failed: {e}; not acknowledging until it succeeds",
                self.disk.dir().display()
            );
        }
        self.retry = Some(self.retry.map_or(RETRY_FIRST, |r| (r * 2).min(RETRY_MAX)));
        self.shared.bytes.store(self.disk.bytes(), Ordering::Relaxed);
        let _ = self.waker.wake();
    }

    /// Runs rewrite commands in order; a rotation first commits what precedes it.
    fn run_commands(&mut self, closing: bool) {
        while let Some(cmd) = self.commands.pop_front() {
            match cmd {
                Command::Rotate => {
                    if self.disk.pending() > 0 {
                        self.write_and_commit(true);
                        if self.retry.is_some() {
                            self.commands.push_front(Command::Rotate);
                            return;
                        }
                    }
                    if let Err(e) = self.disk.rotate() {
                        log::warn!("journal {}: rewrite not started: {e}", self.disk.dir().display());
                        self.rewrite_ok = false;
                    }
                    self.shared.bytes.store(self.disk.bytes(), Ordering::Relaxed);
                }
                Command::Chunk(mut chunk) => {
                    if self.rewrite_ok && !closing {
                        format::seal(&mut chunk);
                        if let Err(e) = self.disk.snapshot_write(&chunk) {
                            log::warn!("journal {}: rewrite failed: {e}", self.disk.dir().display());
                            self.rewrite_ok = false;
                        }
                    }
                }
                Command::Finish => {
                    let ok = self.rewrite_ok && !closing && self.install();
                    if !ok {
                        self.disk.abandon_rewrite();
                        self.shared.rewrite_failures.fetch_add(1, Ordering::Relaxed);
                    } else {
                        self.shared.rewrites.fetch_add(1, Ordering::Relaxed);
                    }
                    self.rewrite_ok = true;
                    self.shared.bytes.store(self.disk.bytes(), Ordering::Relaxed);
                    self.shared.rewrite_outcome.store(if ok { 1 } else { 2 }, Ordering::Release);
                    let _ = self.waker.wake();
                }
            }
        }
        if closing && self.disk.rewriting() {
            self.disk.abandon_rewrite();
        }
    }

    fn install(&mut self) -> bool {
        let dir = self.disk.dir().display().to_string();
        let old = match self.disk.snapshot_seal().and_then(|name| self.disk.snapshot_install(&name)) {
            Ok(old) => old,
            Err(e) => {
                log::warn!("journal {dir}: rewrite failed: {e}");
                return false;
            }
        };
        if let Err(e) = self.disk.remove_old(&old) {
            // The meta file no longer lists them: the next open removes them.
            log::warn!("journal {dir}: cannot remove replaced files: {e}");
        }
        log::info!("journal {dir}: rewritten, {} bytes", self.disk.bytes());
        true
    }

    /// Neighbour offsets go to the meta file at most once a second (and at shut-down).
    fn write_peers(&mut self, closing: bool) {
        if self.retry.is_some() || (!closing && self.last_meta.elapsed() < META_EVERY) {
            return;
        }
        let Some(peers) = self.peers.take() else { return };
        self.disk.meta.peers = peers.clone();
        self.last_meta = Instant::now();
        if self.disk.write_meta().is_err() {
            self.peers = Some(peers); // again later
        }
    }
}
