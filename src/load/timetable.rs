//! The open-loop timetable: request `i` is due at `start + i / rate`, whatever happened to the requests
//! before it. Times are computed from the index, never accumulated, so a long run does not drift.

/// A fixed timetable of send times, in nanoseconds on the run's clock.
#[derive(Clone, Debug)]
pub struct Timetable {
    start_ns: u64,
    rate: f64,
    next: u64,
}

impl Timetable {
    /// `rate` is in requests per second and must be positive and finite.
    pub fn new(start_ns: u64, rate: f64) -> Timetable {
        assert!(rate > 0.0 && rate.is_finite());
        Timetable { start_ns, rate, next: 0 }
    }

    /// When request `i` is due.
    pub fn time_of(&self, i: u64) -> u64 {
        // From the index every time: rounding error stays far below a nanosecond, and never accumulates.
        self.start_ns + (i as f64 * 1e9 / self.rate) as u64
    }

    /// When the next request not yet taken is due.
    pub fn next_time(&self) -> u64 {
        self.time_of(self.next)
    }

    /// How many requests have been taken.
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// Takes the next request if it is due at or before `now`: its index and scheduled time.
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, u64)> {
        let t = self.next_time();
        if t <= now {
            let i = self.next;
            self.next += 1;
            Some((i, t))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_follow_the_rate() {
        let t = Timetable::new(5_000, 1000.0);
        assert_eq!(t.time_of(0), 5_000);
        assert_eq!(t.time_of(1), 5_000 + 1_000_000);
        assert_eq!(t.time_of(1000), 5_000 + 1_000_000_000);
        let t = Timetable::new(0, 3.0);
        assert_eq!(t.time_of(1), 333_333_333);
        assert_eq!(t.time_of(2), 666_666_666);
        assert_eq!(t.time_of(3), 1_000_000_000);
        let t = Timetable::new(0, 0.5);
        assert_eq!(t.time_of(3), 6_000_000_000);
    }

    #[test]
    fn no_drift_over_a_long_run() {
        // 10 minutes at 1M/s: the last request is still exactly on the second.
        let t = Timetable::new(0, 1_000_000.0);
        assert_eq!(t.time_of(600_000_000), 600_000_000_000);
        let t = Timetable::new(0, 7.0);
        assert_eq!(t.time_of(7 * 600), 600_000_000_000);
        // Monotone, and spacing never off by more than a nanosecond of rounding.
        let t = Timetable::new(0, 3.0);
        for i in 0..100_000u64 {
            let d = t.time_of(i + 1) - t.time_of(i);
            assert!((333_333_333..=333_333_334).contains(&d));
        }
    }

    #[test]
    fn pop_due_takes_what_is_late_and_nothing_early() {
        let mut t = Timetable::new(1_000, 1000.0);
        assert_eq!(t.pop_due(999), None);
        assert_eq!(t.pop_due(1_000), Some((0, 1_000)));
        assert_eq!(t.pop_due(1_000), None);
        assert_eq!(t.next_time(), 1_001_000);
        // A stall of 2.5 ms: the three requests due meanwhile come out at once, each with its own time,
        // so their latency counts the wait (no coordinated omission).
        let due: Vec<_> = std::iter::from_fn(|| t.pop_due(3_501_000)).collect();
        assert_eq!(due, vec![(1, 1_001_000), (2, 2_001_000), (3, 3_001_000)]);
        assert_eq!(t.taken(), 4);
        assert_eq!(t.next_time(), 4_001_000);
    }
}
