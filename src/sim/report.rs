//! The simulation's report: a markdown table, and an SVG plot of messages per record against herd size
//! (hand-written SVG: two axes, log scales, one polyline per series).

use super::{Outcome, Scheme};
use std::fmt::Write;

/// The fault scenario of a run, as the table names it.
pub fn scenario(o: &Outcome) -> &'static str {
    match (o.params.failures, o.params.permanent) {
        (0, 0) => "all links up",
        (f, 0) if f * 10 < o.links => "few failures",
        (_, 0) => "failures",
        _ => "permanent",
    }
}

/// One markdown row per run.
pub fn table(rows: &[Outcome]) -> String {
    let mut t = String::from(
        "| N | E | links | scheme | msgs/record | max msgs: live, with catch-up (bound 2E-(N-1)) | bytes/record | \
         non-tree bytes | tree / flood / repair / catch-up sends | notices/record | msgs lost | convergence | \
         records lost |\n\
         |---:|---:|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for o in rows {
        let conv = o.convergence_ms.map_or("never".to_string(), |ms| format!("{ms:.0} ms"));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {:.2} | {}, {} ({}) | {:.0} | {:.1}% | {} / {} / {} / {} | {:.2} | {} | {} | {} |",
            o.params.servers,
            o.links,
            scenario(o),
            o.params.scheme.name(),
            o.sends_per_record(),
            o.max_live_sends,
            o.max_sends,
            o.bound,
            o.bytes_per_record(),
            100.0 * o.non_tree_fraction(),
            o.tree_sends,
            o.flood_sends,
            o.repair_sends,
            o.sync_sends,
            o.notice_sends as f64 / o.records as f64,
            o.messages_lost,
            conv,
            o.missing,
        );
    }
    t
}

/// Messages per record against herd size, log-log: one line per (scheme, scenario), with `N - 1` as a
/// dotted reference.
pub fn svg(rows: &[Outcome]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 440.0, 70.0, 200.0, 30.0, 50.0);
    let xs: Vec<f64> = rows.iter().map(|o| o.params.servers as f64).collect();
    let ys: Vec<f64> = rows.iter().map(|o| o.sends_per_record().max(1.0)).collect();
    let (x0, x1) = (floor10(min(&xs)), ceil10(max(&xs)));
    let (y0, y1) = (floor10(min(&ys).min(x0 - 1.0).max(1.0)), ceil10(max(&ys)));
    let px = |x: f64| left + (x.log10() - x0.log10()) / (x1.log10() - x0.log10()) * (w - left - right);
    let py = |y: f64| h - bottom - (y.log10() - y0.log10()) / (y1.log10() - y0.log10()) * (h - top - bottom);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="18" text-anchor="middle" font-size="14">Record messages per record against herd size (simulation)</text>"#,
        (left + w - right) / 2.0
    );
    // Decade grid lines and labels.
    let mut d = x0;
    while d <= x1 * 1.0001 {
        let x = px(d);
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##, h - bottom);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{d}</text>"#, h - bottom + 16.0);
        d *= 10.0;
    }
    let mut d = y0;
    while d <= y1 * 1.0001 {
        let y = py(d);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##, w - right);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{d}</text>"#, left - 6.0, y + 4.0);
        d *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">servers N (log)</text>"#,
        (left + w - right) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">messages per record (log)</text>"#,
        (top + h - bottom) / 2.0
    );
    // The reference N - 1, and one polyline per series.
    let reference: Vec<(f64, f64)> = {
        let mut ns: Vec<f64> = xs.clone();
        ns.sort_by(f64::total_cmp);
        ns.dedup();
        ns.into_iter().map(|n| (px(n), py((n - 1.0).max(1.0)))).collect()
    };
    let mut legend = Vec::new();
    legend.push(polyline(&mut s, &reference, "#888", "2,4", "N - 1"));
    let series = [
        (Scheme::Flood, "all links up", "#d62728", ""),
        (Scheme::Flood, "few failures", "#e377c2", "10,3"),
        (Scheme::Flood, "failures", "#ff9896", "6,3"),
        (Scheme::Tree, "all links up", "#1f77b4", ""),
        (Scheme::Tree, "few failures", "#17becf", "10,3"),
        (Scheme::Tree, "failures", "#9ecae1", "6,3"),
        (Scheme::Tree, "permanent", "#2ca02c", "2,2"),
        (Scheme::Flood, "permanent", "#98df8a", "2,2"),
    ];
    for (scheme, scen, colour, dash) in series {
        let points: Vec<(f64, f64)> = rows
            .iter()
            .filter(|o| o.params.scheme == scheme && scenario(o) == scen)
            .map(|o| (px(o.params.servers as f64), py(o.sends_per_record().max(1.0))))
            .collect();
        if !points.is_empty() {
            legend.push(polyline(&mut s, &points, colour, dash, &format!("{}, {scen}", scheme.name())));
        }
    }
    for (i, (colour, dash, label)) in legend.iter().enumerate() {
        let y = top + 14.0 + 18.0 * i as f64;
        let x = w - right + 12.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
            x + 24.0
        );
        let _ = writeln!(s, r#"<text x="{}" y="{}">{label}</text>"#, x + 30.0, y + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

fn polyline(s: &mut String, points: &[(f64, f64)], colour: &str, dash: &str, label: &str) -> (String, String, String) {
    let pts: Vec<String> = points.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
    let _ = writeln!(
        s,
        r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
        pts.join(" ")
    );
    for (x, y) in points {
        let _ = writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{colour}"/>"#);
    }
    (colour.to_string(), dash.to_string(), label.to_string())
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(1.0, f64::max)
}

fn floor10(x: f64) -> f64 {
    10f64.powf(x.max(1.0).log10().floor())
}

fn ceil10(x: f64) -> f64 {
    10f64.powf(x.max(1.0).log10().ceil())
}
