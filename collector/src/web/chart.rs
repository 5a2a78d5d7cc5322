//! Server-rendered SVG charts: latency lines per location, stacked phase
//! areas, sparklines and uptime bars. No script and no CDN: the markup is
//! part of the page, so it works offline, without JavaScript and under a
//! strict Content-Security-Policy (presentation attributes, no inline CSS).
//! Every text that reaches a chart goes through maud's escaping.

use maud::{Markup, html};

/// Colours for series, in order (readable on white, distinct for the
/// common colour-vision deficiencies first).
pub const PALETTE: [&str; 8] = [
    "#2563eb", "#d97706", "#059669", "#db2777", "#7c3aed", "#0891b2", "#65a30d", "#dc2626",
];

/// One series: `(time ms, value)`, None where there is no data (drawn as a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub label: String,
    pub points: Vec<(i64, Option<f64>)>,
}

/// A shaded span on the time axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub from_ms: i64,
    pub to_ms: i64,
    pub kind: SpanKind,
    /// Shown on hover.
    pub title: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    /// Checks failed in this span.
    Failure,
    Incident,
    Maintenance,
}

impl SpanKind {
    fn fill(self) -> (&'static str, &'static str) {
        match self {
            SpanKind::Failure => ("#dc2626", "0.55"),
            SpanKind::Incident => ("#dc2626", "0.12"),
            SpanKind::Maintenance => (MAINTENANCE_COLOUR, "0.12"),
        }
    }
}

const W: f64 = 820.0;
const H: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// A "nice" axis maximum and step (1, 2 or 5 x 10^k) for values up to `max`.
pub fn nice_scale(max: f64, ticks: usize) -> (f64, f64) {
    if !(max.is_finite() && max > 0.0) {
        return (1.0, 0.25);
    }
    let raw = max / ticks.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

/// Time-axis tick spacing for a range: at most ~8 ticks.
pub fn time_step(range_ms: i64) -> i64 {
    const STEPS: [i64; 12] = [
        60_000,
        300_000,
        900_000,
        1_800_000,
        3_600_000,
        3 * 3_600_000,
        6 * 3_600_000,
        12 * 3_600_000,
        86_400_000,
        2 * 86_400_000,
        7 * 86_400_000,
        30 * 86_400_000,
    ];
    STEPS
        .into_iter()
        .find(|s| range_ms / s <= 8)
        .unwrap_or(STEPS[STEPS.len() - 1])
}

/// A tick label in UTC: the time of day, or the date for day steps.
fn tick_label(ts_ms: i64, step_ms: i64) -> String {
    let Ok(t) = jiff::Timestamp::from_millisecond(ts_ms) else {
        return String::new();
    };
    if step_ms >= 86_400_000 {
        t.strftime("%b %d").to_string()
    } else {
        t.strftime("%H:%M").to_string()
    }
}

/// Milliseconds, shown with a sensible precision.
pub fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

struct Frame {
    from_ms: i64,
    to_ms: i64,
    y_max: f64,
}

impl Frame {
    fn x(&self, ts: i64) -> f64 {
        let span = (self.to_ms - self.from_ms).max(1) as f64;
        LEFT + (ts - self.from_ms) as f64 / span * (W - LEFT - RIGHT)
    }

    fn y(&self, v: f64) -> f64 {
        H - BOTTOM - (v / self.y_max).clamp(0.0, 1.0) * (H - TOP - BOTTOM)
    }

    fn axes(&self, step: f64, unit: &str) -> Markup {
        let t_step = time_step(self.to_ms - self.from_ms);
        let first = self.from_ms + (t_step - self.from_ms.rem_euclid(t_step)) % t_step;
        let ticks: Vec<i64> = (0..64)
            .map(|i| first + i * t_step)
            .take_while(|t| *t <= self.to_ms)
            .collect();
        let levels: Vec<f64> = (0..=((self.y_max / step).round() as usize).min(20))
            .map(|i| i as f64 * step)
            .collect();
        html! {
            @for v in &levels {
                @let y = self.y(*v);
                line x1=(LEFT) x2=(W - RIGHT) y1=(y) y2=(y) stroke="#e5e7eb" {}
                text x=(LEFT - 6.0) y=(y + 4.0) text-anchor="end" font-size="11" fill="#6b7280" {
                    (fmt_tick(*v, step, unit))
                }
            }
            @for t in &ticks {
                @let x = self.x(*t);
                line x1=(x) x2=(x) y1=(TOP) y2=(H - BOTTOM) stroke="#f3f4f6" {}
                text x=(x) y=(H - BOTTOM + 16.0) text-anchor="middle" font-size="11" fill="#6b7280" {
                    (tick_label(*t, t_step))
                }
            }
            line x1=(LEFT) x2=(W - RIGHT) y1=(H - BOTTOM) y2=(H - BOTTOM) stroke="#9ca3af" {}
        }
    }

    fn spans(&self, spans: &[Span]) -> Markup {
        html! {
            @for s in spans {
                @let x0 = self.x(s.from_ms.max(self.from_ms));
                @let x1 = self.x(s.to_ms.min(self.to_ms)).max(x0 + 1.5);
                @let (fill, opacity) = s.kind.fill();
                @let (y, h) = match s.kind {
                    SpanKind::Failure => (H - BOTTOM - 5.0, 5.0),
                    _ => (TOP, H - TOP - BOTTOM),
                };
                @if x0 < W - RIGHT {
                    rect class={"span " (s.kind_name())} x=(x0) y=(y) width=(x1 - x0) height=(h) fill=(fill) fill-opacity=(opacity) {
                        title { (s.title) }
                    }
                }
            }
        }
    }
}

impl Span {
    fn kind_name(&self) -> &'static str {
        match self.kind {
            SpanKind::Failure => "failure",
            SpanKind::Incident => "incident",
            SpanKind::Maintenance => "maintenance",
        }
    }
}

/// A tick label with as many decimals as the step needs (no 0.6000000001).
fn fmt_tick(v: f64, step: f64, unit: &str) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil().clamp(0.0, 6.0) as usize
    };
    format!("{v:.decimals$} {unit}")
}

/// The SVG path of a series, a new subpath after each gap.
fn path(frame: &Frame, points: &[(i64, Option<f64>)]) -> String {
    let mut d = String::new();
    let mut pen_up = true;
    for (t, v) in points {
        match v {
            Some(v) => {
                let cmd = if pen_up { 'M' } else { 'L' };
                d.push_str(&format!("{cmd}{:.1} {:.1} ", frame.x(*t), frame.y(*v)));
                pen_up = false;
            }
            None => pen_up = true,
        }
    }
    d.trim_end().to_owned()
}

fn max_of<'a>(values: impl Iterator<Item = &'a Option<f64>>) -> f64 {
    values.flatten().fold(0.0f64, |m, v| m.max(*v))
}

/// A line chart of `lines` (values in ms) over `[from_ms, to_ms)`, with
/// shaded spans. A single point in a series is drawn as a dot.
pub fn lines(label: &str, from_ms: i64, to_ms: i64, lines: &[Line], spans: &[Span]) -> Markup {
    let (y_max, step) = nice_scale(
        max_of(lines.iter().flat_map(|l| l.points.iter().map(|p| &p.1))),
        4,
    );
    let frame = Frame {
        from_ms,
        to_ms,
        y_max,
    };
    html! {
        figure.chart {
            svg.chart-svg viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(label)  {
                title { (label) }
                (frame.axes(step, "ms"))
                (frame.spans(spans))
                @for (i, l) in lines.iter().enumerate() {
                    @let colour = PALETTE[i % PALETTE.len()];
                    @let present: Vec<&(i64, Option<f64>)> = l.points.iter().filter(|p| p.1.is_some()).collect();
                    @if present.len() == 1 {
                        circle.series cx=(frame.x(present[0].0)) cy=(frame.y(present[0].1.unwrap_or(0.0))) r="3" fill=(colour) {
                            title { (l.label) }
                        }
                    } @else if !present.is_empty() {
                        path.series d=(path(&frame, &l.points)) fill="none" stroke=(colour) stroke-width="1.6" stroke-linejoin="round" {
                            title { (l.label) }
                        }
                    }
                }
                @if lines.iter().all(|l| l.points.iter().all(|p| p.1.is_none())) {
                    text x=(W / 2.0) y=(H / 2.0) text-anchor="middle" font-size="13" fill="#9ca3af" { "no data in this range" }
                }
            }
            (legend(lines.iter().map(|l| l.label.as_str())))
        }
    }
}

fn legend<'a>(labels: impl Iterator<Item = &'a str>) -> Markup {
    html! {
        figcaption.legend {
            @for (i, l) in labels.enumerate() {
                span.key {
                    svg width="12" height="12" viewBox="0 0 12 12" { rect width="12" height="12" rx="2" fill=(PALETTE[i % PALETTE.len()]) {} }
                    " " (l)
                }
            }
        }
    }
}

/// Stacked areas: each layer sits on the ones before it (phase breakdown:
/// dns, connect, tls, first byte). Points must share their times.
pub fn stacked(label: &str, from_ms: i64, to_ms: i64, layers: &[Line], spans: &[Span]) -> Markup {
    let n = layers.first().map_or(0, |l| l.points.len());
    // Cumulative tops per point; a point where every layer is None is a gap.
    let mut tops: Vec<Vec<Option<f64>>> = Vec::with_capacity(layers.len());
    let mut acc = vec![0.0f64; n];
    let present: Vec<bool> = (0..n)
        .map(|i| {
            layers
                .iter()
                .any(|l| l.points.get(i).and_then(|p| p.1).is_some())
        })
        .collect();
    for l in layers {
        let mut top = Vec::with_capacity(n);
        for i in 0..n {
            acc[i] += l.points.get(i).and_then(|p| p.1).unwrap_or(0.0);
            top.push(present[i].then_some(acc[i]));
        }
        tops.push(top);
    }
    let (y_max, step) = nice_scale(acc.iter().copied().fold(0.0, f64::max), 4);
    let frame = Frame {
        from_ms,
        to_ms,
        y_max,
    };
    let times: Vec<i64> = layers
        .first()
        .map(|l| l.points.iter().map(|p| p.0).collect())
        .unwrap_or_default();
    // Each layer is drawn as polygons between its top and the previous top,
    // one per run of present points.
    let mut areas: Vec<(usize, String)> = Vec::new();
    for (li, top) in tops.iter().enumerate() {
        let mut i = 0;
        while i < n {
            if !present[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && present[i] {
                i += 1;
            }
            let mut d = String::new();
            for j in start..i {
                let cmd = if j == start { 'M' } else { 'L' };
                d.push_str(&format!(
                    "{cmd}{:.1} {:.1} ",
                    frame.x(times[j]),
                    frame.y(top[j].unwrap_or(0.0))
                ));
            }
            for j in (start..i).rev() {
                let below = if li == 0 {
                    0.0
                } else {
                    tops[li - 1][j].unwrap_or(0.0)
                };
                d.push_str(&format!("L{:.1} {:.1} ", frame.x(times[j]), frame.y(below)));
            }
            d.push('Z');
            areas.push((li, d));
        }
    }
    html! {
        figure.chart {
            svg.chart-svg viewBox={"0 0 " (W) " " (H)} role="img" aria-label=(label)  {
                title { (label) }
                (frame.axes(step, "ms"))
                (frame.spans(spans))
                @for (li, d) in &areas {
                    path.area d=(d) fill=(PALETTE[li % PALETTE.len()]) fill-opacity="0.55" stroke=(PALETTE[li % PALETTE.len()]) stroke-width="0.8" {
                        title { (layers[*li].label) }
                    }
                }
                @if areas.is_empty() {
                    text x=(W / 2.0) y=(H / 2.0) text-anchor="middle" font-size="13" fill="#9ca3af" { "no data in this range" }
                }
            }
            (legend(layers.iter().map(|l| l.label.as_str())))
        }
    }
}

/// A small line without axes (the overview's latency column).
pub fn sparkline(values: &[Option<f64>], title: &str) -> Markup {
    const SW: f64 = 120.0;
    const SH: f64 = 24.0;
    let max = max_of(values.iter()).max(0.001);
    let n = values.len().max(2) as f64 - 1.0;
    let mut d = String::new();
    let mut pen_up = true;
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v {
            let x = i as f64 / n * (SW - 2.0) + 1.0;
            let y = SH - 2.0 - v / max * (SH - 4.0);
            d.push_str(&format!("{}{x:.1} {y:.1} ", if pen_up { 'M' } else { 'L' }));
            pen_up = false;
        } else {
            pen_up = true;
        }
    }
    html! {
        svg.spark width=(SW) height=(SH) viewBox={"0 0 " (SW) " " (SH)} role="img" aria-label=(title) {
            title { (title) }
            @if !d.is_empty() {
                path d=(d.trim_end()) fill="none" stroke=(PALETTE[0]) stroke-width="1.3" {}
            }
        }
    }
}

/// One bar of an uptime strip (a day on the status page).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// Share of checks not down; None: no data that day.
    pub availability: Option<f64>,
    /// The day's checks all ran inside maintenance: shown as maintenance,
    /// neither up nor down.
    pub maintenance: bool,
    /// Hover text (the date, the figure, incidents).
    pub title: String,
}

/// A maintenance bar: the dashboard's maintenance colour.
pub const MAINTENANCE_COLOUR: &str = "#6366f1";

/// The colour of an availability figure.
pub fn availability_colour(a: Option<f64>) -> &'static str {
    match a {
        None => "#d1d5db",
        Some(a) if a >= 0.999 => "#16a34a",
        Some(a) if a >= 0.99 => "#84cc16",
        Some(a) if a >= 0.95 => "#f59e0b",
        Some(_) => "#dc2626",
    }
}

/// A strip of bars, oldest left (the status page's 90 days).
pub fn bars(bars: &[Bar], label: &str) -> Markup {
    const BW: f64 = 6.0;
    const GAP: f64 = 2.0;
    const BH: f64 = 28.0;
    let width = bars.len() as f64 * (BW + GAP);
    html! {
        svg.bars viewBox={"0 0 " (width) " " (BH)} preserveAspectRatio="none" role="img" aria-label=(label) {
            @for (i, b) in bars.iter().enumerate() {
                @let fill = if b.maintenance { MAINTENANCE_COLOUR } else { availability_colour(b.availability) };
                rect x=(i as f64 * (BW + GAP)) y="0" width=(BW) height=(BH) rx="1.5" fill=(fill) {
                    title { (b.title) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_are_round_and_cover_the_maximum() {
        assert_eq!(nice_scale(0.0, 4), (1.0, 0.25));
        assert_eq!(nice_scale(f64::NAN, 4), (1.0, 0.25));
        assert_eq!(nice_scale(7.3, 4), (8.0, 2.0));
        assert_eq!(nice_scale(1030.0, 4), (1500.0, 500.0));
        let (top, step) = nice_scale(0.42, 4);
        assert!(
            (top - 0.6).abs() < 1e-9 && (step - 0.2).abs() < 1e-9,
            "{top} {step}"
        );
        for max in [0.013, 0.9, 3.0, 99.0, 101.0, 5_000.0] {
            let (top, step) = nice_scale(max, 4);
            assert!(top >= max && top / step <= 10.0, "{max}: {top} {step}");
        }
    }

    #[test]
    fn time_ticks_stay_few() {
        assert_eq!(time_step(3_600_000), 900_000);
        assert_eq!(time_step(86_400_000), 3 * 3_600_000);
        assert_eq!(time_step(7 * 86_400_000), 86_400_000);
        assert_eq!(time_step(30 * 86_400_000), 7 * 86_400_000);
    }

    #[test]
    fn a_gap_starts_a_new_subpath_and_labels_are_escaped() {
        let l = Line {
            label: "<script>alert(1)</script>".into(),
            points: vec![
                (0, Some(1.0)),
                (10, Some(2.0)),
                (20, None),
                (30, Some(4.0)),
                (40, Some(3.0)),
            ],
        };
        let svg = lines("latency", 0, 40, &[l], &[]).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"));
        let d = svg.split("class=\"series\" d=\"").nth(1).unwrap();
        let d = &d[..d.find('"').unwrap()];
        assert_eq!(d.matches('M').count(), 2, "{d}");
        assert_eq!(d.matches('L').count(), 2, "{d}");
    }

    #[test]
    fn stacked_layers_sit_on_each_other() {
        let layer = |label: &str, v: f64| Line {
            label: label.into(),
            points: vec![(0, Some(v)), (10, Some(v)), (20, None)],
        };
        let svg = stacked(
            "phases",
            0,
            20,
            &[layer("connect", 1.0), layer("tls", 2.0)],
            &[],
        )
        .into_string();
        assert_eq!(svg.matches("class=\"area\"").count(), 2);
        // The axis tops out at 3 ms (1 + 2), not 2.
        assert!(svg.contains(">3 ms<"), "{svg}");
    }

    #[test]
    fn empty_ranges_say_so() {
        let svg = lines("x", 0, 10, &[], &[]).into_string();
        assert!(svg.contains("no data in this range"));
        assert!(sparkline(&[None, None], "t").into_string().contains("<svg"));
        assert_eq!(fmt_tick(0.6000000001, 0.2, "ms"), "0.6 ms");
        assert_eq!(fmt_tick(0.05, 0.05, "ms"), "0.05 ms");
        assert_eq!(fmt_tick(1500.0, 500.0, "ms"), "1500 ms");
    }

    #[test]
    fn bars_are_coloured_by_availability() {
        let b = |a| Bar {
            availability: a,
            maintenance: false,
            title: "d".into(),
        };
        let svg = bars(&[b(Some(1.0)), b(Some(0.5)), b(None)], "90 days").into_string();
        assert!(svg.contains("#16a34a") && svg.contains("#dc2626") && svg.contains("#d1d5db"));
        assert!(!svg.contains(MAINTENANCE_COLOUR));
        let maintenance = Bar {
            maintenance: true,
            ..b(None)
        };
        assert!(
            bars(&[maintenance], "1 day")
                .into_string()
                .contains(MAINTENANCE_COLOUR)
        );
    }
}
