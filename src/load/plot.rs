//! A hand-made SVG of the latency percentile curve, drawn the way HdrHistogram's plotter draws it: x is
//! the percentile on a log scale of 1/(1-p) (0%, 90%, 99%, 99.9%, ...), y is the latency.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 900.0;
const H: f64 = 520.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The percentile label of the decade `k`: 0 → "0%", 1 → "90%", 3 → "99.9%".
pub fn decade_label(k: u32) -> String {
    match k {
        0 => "0%".into(),
        1 => "90%".into(),
        _ => format!("99.{}%", "9".repeat(k as usize - 2)).replace("99.%", "99%"),
    }
}

/// A "nice" axis step (1, 2 or 5 times a power of ten) giving about `ticks` ticks up to `max`.
pub fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let m = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// The points of the curve: (1/(1-q), latency in µs), for q < 1, plus the maximum at the right edge.
pub fn curve(h: &Histogram<u64>, x_max: f64) -> Vec<(f64, f64)> {
    let mut pts = Vec::new();
    if h.is_empty() {
        return pts;
    }
    for v in h.iter_quantiles(5) {
        let q = v.quantile_iterated_to();
        let x = if q >= 1.0 { x_max } else { (1.0 / (1.0 - q)).min(x_max) };
        pts.push((x, h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0));
        if x >= x_max {
            break;
        }
    }
    pts
}

/// Renders the curve as a standalone SVG document.
pub fn percentile_svg(h: &Histogram<u64>, title: &str) -> String {
    // The x axis reaches the decade the sample count resolves (at least 99.9%, at most 99.9999%).
    let decades = ((h.len().max(1) as f64).log10().ceil() as u32).clamp(3, 6);
    let x_max = 10f64.powi(decades as i32);
    let pts = curve(h, x_max);
    let y_top = pts.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let step = nice_step(y_top, 6.0);
    let y_max = (y_top / step).ceil() * step;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + x.max(1.0).log10() / x_max.log10() * pw;
    let py = |y: f64| TOP + ph - y / y_max * ph;
    let (unit, div) = if y_max >= 10_000.0 { ("ms", 1000.0) } else { ("µs", 1.0) };

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="28" text-anchor="middle" font-size="15">{}</text>"#, W / 2.0, esc(title));
    // Grid and ticks.
    for k in 0..=decades {
        let x = px(10f64.powi(k as i32));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            decade_label(k)
        );
    }
    let mut y = 0.0;
    while y <= y_max + step / 2.0 {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 8.0,
            yy + 4.0,
            trim(y / div)
        );
        y += step;
    }
    let _ = writeln!(s, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    let _ =
        writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#, LEFT + pw / 2.0, H - 15.0);
    let _ = writeln!(
        s,
        r#"<text transform="translate(22 {:.1}) rotate(-90)" text-anchor="middle">latency ({unit})</text>"#,
        TOP + ph / 2.0
    );
    // The curve, as steps: each latency holds until the next percentile.
    let mut path = String::new();
    let mut prev_y: Option<f64> = None;
    for &(x, v) in &pts {
        let (cx, cy) = (px(x), py(v));
        match prev_y {
            None => {
                let _ = write!(path, "{cx:.1},{cy:.1}");
            }
            Some(p) => {
                let _ = write!(path, " {cx:.1},{p:.1} {cx:.1},{cy:.1}");
            }
        }
        prev_y = Some(cy);
    }
    if !path.is_empty() {
        let _ = writeln!(s, r##"<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{path}"/>"##);
    }
    let _ =
        writeln!(s, r##"<text x="{:.1}" y="{:.1}" fill="#555">{} samples</text>"##, LEFT + 8.0, TOP + 16.0, h.len());
    s.push_str("</svg>\n");
    s
}

fn trim(v: f64) -> String {
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    t.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::report::new_histogram;

    #[test]
    fn labels_and_steps() {
        let l: Vec<String> = (0..=5).map(decade_label).collect();
        assert_eq!(l, ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]);
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 6.0), 2.0);
        assert_eq!(nice_step(1234.0, 6.0), 500.0);
        assert_eq!(trim(2.5), "2.5");
        assert_eq!(trim(20.0), "20");
    }

    #[test]
    fn curve_is_monotone_and_reaches_the_max() {
        let mut h = new_histogram();
        for v in 1..=100_000u64 {
            h.record(1000 + v * 10).unwrap();
        }
        let pts = curve(&h, 1e5);
        assert!(pts.len() > 20);
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(pts[0].0, 1.0);
        let last = pts.last().unwrap();
        assert_eq!(last.0, 1e5);
        assert!((last.1 - 1001.0).abs() < 2.0, "{last:?}");
        let svg = percentile_svg(&h, "raw <test> & co");
        assert!(svg.starts_with("<svg ") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("<polyline") && svg.contains("99.999%"));
        assert!(svg.contains("raw &lt;test&gt; &amp; co"));
        assert!(!percentile_svg(&new_histogram(), "empty").contains("<polyline"));
    }
}
