//! What a run tells its user: the one-line progress update while it runs, and the [`Report`] at its
//! end, both read from the counts in [`Ctx`]. Nothing here touches a socket.

use super::ctx::{Ctx, Phase};
use crate::load::args::Options;
use crate::load::report::{fmt_us, LatencySummary, Report, TargetReport};

/// The progress line for the interval since `since` (a `\r`-led line that overwrites the last one), and
/// a fresh interval.
pub(super) fn progress_line(ctx: &mut Ctx, now: u64, since: u64, in_flight: usize, queued: usize) -> String {
    let l = LatencySummary::from_histogram(&ctx.iv_hist);
    let (label, t) = match ctx.phase {
        Phase::Seed => ("seeding", now),
        Phase::Warmup => ("warm-up", now),
        _ => ("", now.saturating_sub(ctx.measure_start)),
    };
    let mut s = format!(
        "\r{label:>7} {:6.1}s  {:>8} replies/s  p50 {}  p99 {}  max {}  errors {}  in flight {in_flight}",
        t as f64 / 1e9,
        (ctx.iv_replies as f64 * 1e9 / now.saturating_sub(since).max(1) as f64).round(),
        fmt_us(l.p50),
        fmt_us(l.p99),
        fmt_us(l.max),
        ctx.errors.total()
    );
    if ctx.rate.is_some() {
        s.push_str(&format!("  queued {queued}"));
    }
    s.push_str("\x1b[K");
    ctx.iv_hist.reset();
    ctx.iv_replies = 0;
    s
}

/// The report of a finished run. `stopped_by` says what ended the measured period: `"duration"`,
/// `"requests"` (the last measured request finished) or `"unreachable"` (now).
pub(super) fn report(ctx: Ctx, opts: &Options, connections: usize, stopped_by: &str, seeding: bool) -> Report {
    let end = match stopped_by {
        "requests" => ctx.last_done_at,
        "unreachable" => ctx.now(),
        _ => ctx.measure_end,
    };
    let measured_ns = end.saturating_sub(ctx.measure_start);
    let duration_s = measured_ns as f64 / 1e9;
    Report {
        workload: opts.workload.name().into(),
        targets: opts.targets.iter().map(|t| t.to_string()).collect(),
        connections,
        depth: ctx.depth,
        rate: opts.rate,
        warmup_s: ctx.warmup_ns as f64 / 1e9,
        duration_s,
        stopped_by: stopped_by.into(),
        requests: ctx.measured_sent,
        replies: ctx.replies,
        throughput: if duration_s > 0.0 { ctx.replies as f64 / duration_s } else { 0.0 },
        latency: LatencySummary::from_histogram(&ctx.hist),
        send_lag: opts.rate.map(|_| LatencySummary::from_histogram(&ctx.lag)),
        errors: ctx.errors.clone(),
        per_target: opts
            .targets
            .iter()
            .zip(&ctx.per_target)
            .map(|(addr, t)| TargetReport {
                target: addr.to_string(),
                replies: t.replies,
                errors: t.errors.clone(),
                latency: LatencySummary::from_histogram(&t.hist),
            })
            .collect(),
        unfinished: ctx.measured_issued.saturating_sub(ctx.measured_done),
        connects: ctx.connects,
        seeded: seeding.then_some(ctx.seeded_ok),
        histogram: ctx.hist,
    }
}
