//! The run's shared state: the clock, the phases (seeding, warm-up, measuring, done) and every count the
//! report is made of. Connections touch it through [`Ctx::complete`] and
//! [`Ctx::error_outside_request`], which alone decide what a finished request counts for; the loop in
//! [`super`] moves the phases. Nothing here does I/O.

use std::time::Instant;

use hdrhistogram::Histogram;

use crate::load::args::{Options, MAX_DURATION, MAX_WARMUP};
use crate::load::report::{new_histogram, ErrorCounts};
use crate::load::timetable::Timetable;
use crate::load::workload::{ErrorKind, Expect, Generator};

/// Seeding WHATSAT workloads gives up after this long and measures anyway (the report says how many
/// ids were seeded).
const SEED_LIMIT_NS: u64 = 30_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// WHATSAT workloads: one unrecorded IAMAT per client id, closed loop.
    Seed,
    /// Unrecorded traffic until `measure_start`.
    Warmup,
    Measure,
    Done,
}

/// Which part of the run a request belongs to; only `Measured` ones reach the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tag {
    Seed,
    Warmup,
    Measured,
}

/// One request sent (or queued) and not yet finished.
#[derive(Clone, Copy, Debug)]
pub(super) struct InFlight {
    /// Send time (closed loop) or scheduled send time (open loop), ns on the run clock.
    pub(super) start: u64,
    pub(super) expect: Expect,
    pub(super) tag: Tag,
}

/// Measured counts of one target.
pub(super) struct TargetStats {
    pub(super) replies: u64,
    pub(super) errors: ErrorCounts,
    pub(super) hist: Histogram<u64>,
}

/// Run-wide state the connections share.
pub(super) struct Ctx {
    base: Instant,
    pub(super) depth: usize,
    pub(super) timeout_ns: u64,
    pub(super) raw_prefix: Vec<u8>,
    pub(super) gen: Generator,
    pub(super) phase: Phase,
    pub(super) rate: Option<f64>,
    pub(super) timetable: Option<Timetable>,
    pub(super) warmup_ns: u64,
    duration_ns: u64,
    pub(super) seed_next: u32,
    pub(super) seed_done: u32,
    pub(super) seeded_ok: u64,
    pub(super) seed_deadline: u64,
    pub(super) measure_start: u64,
    pub(super) measure_end: u64,
    pub(super) limit: Option<u64>,
    /// Measured requests issued (closed loop) or scheduled (open loop).
    pub(super) measured_issued: u64,
    /// Measured requests written.
    pub(super) measured_sent: u64,
    /// Measured requests finished: replied to or failed.
    pub(super) measured_done: u64,
    pub(super) last_done_at: u64,
    /// Last housekeeping tick that found a connection open.
    pub(super) last_open_at: u64,
    pub(super) replies: u64,
    pub(super) errors: ErrorCounts,
    pub(super) hist: Histogram<u64>,
    pub(super) lag: Histogram<u64>,
    pub(super) per_target: Vec<TargetStats>,
    pub(super) connects: u64,
    /// Good replies since the last progress line, and their latencies (seeding and warm-up included).
    pub(super) iv_hist: Histogram<u64>,
    pub(super) iv_replies: u64,
}

impl Ctx {
    /// The state at the start of a run: the clock starts now, in the seeding phase.
    pub(super) fn new(opts: &Options, depth: usize) -> Ctx {
        Ctx {
            base: Instant::now(),
            depth,
            timeout_ns: opts.timeout.as_nanos().max(1) as u64,
            raw_prefix: opts.expect.clone().unwrap_or_default().into_bytes(),
            gen: Generator::new(&opts.workload, opts.clients, &opts.radius, opts.bound),
            phase: Phase::Seed,
            rate: opts.rate,
            timetable: None,
            warmup_ns: opts.warmup.min(MAX_WARMUP).as_nanos() as u64,
            duration_ns: opts.duration.min(MAX_DURATION).as_nanos().max(1) as u64,
            seed_next: 0,
            seed_done: 0,
            seeded_ok: 0,
            seed_deadline: SEED_LIMIT_NS,
            measure_start: u64::MAX,
            measure_end: u64::MAX,
            limit: opts.requests,
            measured_issued: 0,
            measured_sent: 0,
            measured_done: 0,
            last_done_at: 0,
            last_open_at: 0,
            replies: 0,
            errors: ErrorCounts::default(),
            hist: new_histogram(),
            lag: new_histogram(),
            per_target: (0..opts.targets.len())
                .map(|_| TargetStats { replies: 0, errors: ErrorCounts::default(), hist: new_histogram() })
                .collect(),
            connects: 0,
            iv_hist: new_histogram(),
            iv_replies: 0,
        }
    }

    /// Nanoseconds since the run started.
    pub(super) fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Seeding is over (or there is none): warm-up starts now, then measuring.
    pub(super) fn enter_warmup(&mut self, now: u64) {
        self.measure_start = now + self.warmup_ns;
        self.measure_end = self.measure_start + self.duration_ns;
        if let Some(rate) = self.rate {
            self.timetable = Some(Timetable::new(now, rate));
        }
        self.phase = if self.warmup_ns == 0 { Phase::Measure } else { Phase::Warmup };
    }

    pub(super) fn may_schedule(&self) -> bool {
        self.phase != Phase::Done && self.limit.is_none_or(|l| self.measured_issued < l)
    }

    /// When the current phase ends by the clock.
    pub(super) fn phase_deadline(&self) -> u64 {
        match self.phase {
            Phase::Seed => self.seed_deadline,
            Phase::Warmup => self.measure_start,
            Phase::Measure => self.measure_end,
            Phase::Done => 0,
        }
    }

    pub(super) fn tag_at(&self, t: u64) -> Tag {
        if t >= self.measure_start {
            Tag::Measured
        } else {
            Tag::Warmup
        }
    }

    /// A request is finished: replied to (`Ok`, or an error reply) or abandoned.
    pub(super) fn complete(&mut self, tix: usize, f: InFlight, now: u64, res: Result<(), ErrorKind>) {
        let latency = now.saturating_sub(f.start).max(1);
        if res.is_ok() {
            // The progress line shows seeding and warm-up too.
            self.iv_hist.saturating_record(latency);
            self.iv_replies += 1;
        }
        match f.tag {
            Tag::Seed => {
                self.seed_done += 1;
                self.seeded_ok += res.is_ok() as u64;
            }
            Tag::Warmup => {}
            Tag::Measured => {
                // Past the end of the duration, nothing more is counted (it is 'unfinished').
                if self.phase == Phase::Done || now >= self.measure_end {
                    return;
                }
                self.measured_done += 1;
                self.last_done_at = now;
                let t = &mut self.per_target[tix];
                match res {
                    Ok(()) => {
                        self.replies += 1;
                        self.hist.saturating_record(latency);
                        t.replies += 1;
                        t.hist.saturating_record(latency);
                    }
                    Err(k) => {
                        self.errors.add(k);
                        t.errors.add(k);
                    }
                }
            }
        }
    }

    /// An error that belongs to no request (a failed connect, bytes nobody asked for).
    pub(super) fn error_outside_request(&mut self, tix: usize, kind: ErrorKind, now: u64) {
        if self.phase == Phase::Measure && now < self.measure_end {
            self.errors.add(kind);
            self.per_target[tix].errors.add(kind);
        }
    }
}
