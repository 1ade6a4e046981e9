//! What a run measured, as numbers, text and JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::workload::ErrorKind;

/// Latencies are recorded in nanoseconds; anything above an hour is clamped to an hour.
pub const HIST_MAX_NS: u64 = 3_600_000_000_000;

/// A new latency histogram: 1 ns to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl LatencySummary {
    pub fn from_histogram(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min: us(h.min()),
            mean: h.mean() / 1000.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        }
    }

    pub fn to_json(&self) -> Value {
        // One decimal of a microsecond: the histogram keeps 3 significant digits anyway.
        let r = |v: f64| (v * 10.0).round() / 10.0;
        json!({
            "count": self.count,
            "min": r(self.min),
            "mean": r(self.mean),
            "p50": r(self.p50),
            "p90": r(self.p90),
            "p99": r(self.p99),
            "p99.9": r(self.p999),
            "max": r(self.max),
        })
    }

    fn line(&self) -> String {
        format!(
            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            fmt_us(self.p50),
            fmt_us(self.p90),
            fmt_us(self.p99),
            fmt_us(self.p999),
            fmt_us(self.max)
        )
    }
}

/// Microseconds for people: `87.3µs`, `1.25ms`, `3.10s`.
pub fn fmt_us(v: f64) -> String {
    if v < 1000.0 {
        format!("{v:.1}µs")
    } else if v < 1_000_000.0 {
        format!("{:.2}ms", v / 1000.0)
    } else {
        format!("{:.2}s", v / 1_000_000.0)
    }
}

/// Error counts by kind, indexed by [`ErrorKind::index`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts(pub [u64; 5]);

impl ErrorCounts {
    pub fn add(&mut self, kind: ErrorKind) {
        self.0[kind.index()] += 1;
    }

    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        for k in ErrorKind::ALL {
            m.insert(k.name().into(), json!(self.get(k)));
        }
        Value::Object(m)
    }

    fn line(&self) -> String {
        let parts: Vec<String> = ErrorKind::ALL
            .iter()
            .filter(|&&k| self.get(k) > 0)
            .map(|&k| format!("{} {}", k.name(), self.get(k)))
            .collect();
        if parts.is_empty() {
            "0".into()
        } else {
            format!("{} ({})", self.total(), parts.join(", "))
        }
    }
}

/// What one target of the run saw (measured period only).
#[derive(Clone, Debug)]
pub struct TargetReport {
    pub target: String,
    pub replies: u64,
    pub errors: ErrorCounts,
    pub latency: LatencySummary,
}

/// The outcome of a run. Counts and latencies cover the measured period only (after warm-up and, for
/// WHATSAT workloads, seeding).
#[derive(Clone, Debug)]
pub struct Report {
    pub workload: String,
    pub targets: Vec<String>,
    pub connections: usize,
    pub depth: usize,
    /// Open loop rate, requests/s; `None` for closed loop.
    pub rate: Option<f64>,
    pub warmup_s: f64,
    /// The measured period, from its start to the last counted reply or the end of the duration.
    pub duration_s: f64,
    /// `"duration"`, `"requests"`, or `"unreachable"` (with a request count, no connection could be
    /// opened for a whole time-out).
    pub stopped_by: String,
    /// Measured requests sent.
    pub requests: u64,
    /// Good replies to measured requests.
    pub replies: u64,
    /// Good replies per second of the measured period.
    pub throughput: f64,
    /// Latency of good replies: from the send (closed loop) or the scheduled send (open loop).
    pub latency: LatencySummary,
    /// Open loop: how late the tool actually wrote each request after its scheduled time.
    pub send_lag: Option<LatencySummary>,
    pub errors: ErrorCounts,
    /// The same counts per target, in `--target` order (connections go round-robin over them).
    pub per_target: Vec<TargetReport>,
    /// Measured requests still outstanding when the duration ran out (neither replies nor errors).
    pub unfinished: u64,
    /// TCP connections established during the whole run.
    pub connects: u64,
    /// WHATSAT workloads: client ids seeded with a good IAMAT reply, out of `--clients`.
    pub seeded: Option<u64>,
    /// The full latency histogram (ns), for plots and further analysis.
    pub histogram: Histogram<u64>,
}

impl Report {
    pub fn errors_total(&self) -> u64 {
        self.errors.total()
    }

    pub fn to_json(&self) -> Value {
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({
            "workload": self.workload,
            "targets": self.targets,
            "connections": self.connections,
            "depth": self.depth,
            "mode": if self.rate.is_some() { "open" } else { "closed" },
            "rate": self.rate,
            "warmup_s": r3(self.warmup_s),
            "duration_s": r3(self.duration_s),
            "stopped_by": self.stopped_by,
            "requests": self.requests,
            "replies": self.replies,
            "throughput_rps": (self.throughput * 10.0).round() / 10.0,
            "latency_us": self.latency.to_json(),
            "send_lag_us": self.send_lag.as_ref().map(|l| l.to_json()),
            "errors": self.errors.to_json(),
            "errors_total": self.errors.total(),
            "unfinished": self.unfinished,
            "connects": self.connects,
            "seeded": self.seeded,
            "per_target": self.per_target.iter().map(|t| json!({
                "target": t.target,
                "replies": t.replies,
                "errors": t.errors.to_json(),
                "latency_us": t.latency.to_json(),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".into(),
        };
        let _ = writeln!(
            s,
            "herd load: {} against {}: {} connections, depth {}, {}",
            self.workload,
            self.targets.join(", "),
            self.connections,
            self.depth,
            mode
        );
        let _ = writeln!(
            s,
            "  measured   {:.2} s after {:.1} s warm-up, stopped by {}",
            self.duration_s, self.warmup_s, self.stopped_by
        );
        if let Some(n) = self.seeded {
            let _ = writeln!(s, "  seeded     {n} client ids");
        }
        let _ = writeln!(
            s,
            "  replies    {}  ({:.0} replies/s), {} requests sent, {} unfinished",
            self.replies, self.throughput, self.requests, self.unfinished
        );
        let _ = writeln!(s, "  latency    {}", self.latency.line());
        if let Some(l) = &self.send_lag {
            let _ = writeln!(s, "  send lag   {}", l.line());
        }
        let _ = writeln!(s, "  errors     {}", self.errors.line());
        let _ = writeln!(s, "  connects   {}", self.connects);
        if self.per_target.len() > 1 {
            for t in &self.per_target {
                let _ = writeln!(
                    s,
                    "  {:<21} {} replies, p50 {}  p99 {}  max {}, errors {}",
                    t.target,
                    t.replies,
                    fmt_us(t.latency.p50),
                    fmt_us(t.latency.p99),
                    fmt_us(t.latency.max),
                    t.errors.line()
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=10000 µs, once each.
        for v in 1..=10_000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = LatencySummary::from_histogram(&h);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert_eq!(l.count, 10_000);
        assert!(close(l.min, 1.0), "{l:?}");
        assert!(close(l.mean, 5000.5), "{l:?}");
        assert!(close(l.p50, 5000.0), "{l:?}");
        assert!(close(l.p90, 9000.0), "{l:?}");
        assert!(close(l.p99, 9900.0), "{l:?}");
        assert!(close(l.p999, 9990.0), "{l:?}");
        assert!(close(l.max, 10_000.0), "{l:?}");

        // A stall shows in the tail, not in the median.
        let mut h = new_histogram();
        h.record_n(50_000, 9_980).unwrap();
        h.record_n(2_000_000_000, 20).unwrap();
        let l = LatencySummary::from_histogram(&h);
        assert!(close(l.p50, 50.0) && close(l.p99, 50.0), "{l:?}");
        assert!(close(l.p999, 2_000_000.0) && close(l.max, 2_000_000.0), "{l:?}");

        assert_eq!(LatencySummary::from_histogram(&new_histogram()), LatencySummary::default());
        // Clamped, never an error.
        let mut h = new_histogram();
        h.saturating_record(u64::MAX);
        assert!(LatencySummary::from_histogram(&h).max >= 3.5e9);
    }

    #[test]
    fn json_and_text() {
        let mut h = new_histogram();
        for v in [40_000u64, 45_000, 50_000, 1_000_000] {
            h.record(v).unwrap();
        }
        let mut errors = ErrorCounts::default();
        errors.add(ErrorKind::Closed);
        errors.add(ErrorKind::Closed);
        errors.add(ErrorKind::Timeout);
        let r = Report {
            workload: "raw".into(),
            targets: vec!["127.0.0.1:6379".into()],
            connections: 2,
            depth: 16,
            rate: None,
            warmup_s: 1.0,
            duration_s: 2.0,
            stopped_by: "duration".into(),
            requests: 7,
            replies: 4,
            throughput: 2.0,
            latency: LatencySummary::from_histogram(&h),
            send_lag: None,
            errors: errors.clone(),
            per_target: vec![TargetReport {
                target: "127.0.0.1:6379".into(),
                replies: 4,
                errors,
                latency: LatencySummary::from_histogram(&h),
            }],
            unfinished: 0,
            connects: 3,
            seeded: None,
            histogram: h,
        };
        let j = r.to_json();
        assert_eq!(j["replies"], 4);
        assert_eq!(j["mode"], "closed");
        assert_eq!(j["errors"]["closed"], 2);
        assert_eq!(j["errors"]["timeout"], 1);
        assert_eq!(j["errors"]["invalid"], 0);
        assert_eq!(j["errors_total"], 3);
        assert_eq!(j["latency_us"]["count"], 4);
        assert_eq!(j["latency_us"]["p50"].as_f64(), Some(45.0));
        assert_eq!(j["latency_us"]["max"].as_f64(), Some(1000.4));
        assert!(j["send_lag_us"].is_null() && j["seeded"].is_null());
        assert_eq!(j["per_target"][0]["target"], "127.0.0.1:6379");
        assert_eq!(j["per_target"][0]["errors"]["closed"], 2);
        assert_eq!(j["per_target"][0]["latency_us"]["count"], 4);
        // One line, parseable back.
        let text = j.to_string();
        assert!(!text.contains('\n'));
        let back: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back["latency_us"]["p99.9"], j["latency_us"]["p99.9"]);
        let t = r.to_text();
        assert!(t.contains("errors     3 (closed 2, timeout 1)"), "{t}");
        assert!(t.contains("p50 45.0µs") && t.contains("max 1.00ms"), "{t}");
    }
}
