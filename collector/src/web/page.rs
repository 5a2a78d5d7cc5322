//! The pages' frame (head, navigation, assets) and the small pieces every
//! page shows: states, times, durations.

use maud::{DOCTYPE, Markup, PreEscaped, html};

/// The stylesheet and the optional refresh script, served from the binary.
pub const CSS: &str = include_str!("assets/portwatch.css");
pub const JS: &str = include_str!("assets/portwatch.js");

/// The signed-in navigation: which entry is current, and the token the
/// logout form carries.
pub struct Nav<'a> {
    pub active: &'static str,
    pub csrf: &'a str,
}

const ENTRIES: [(&str, &str); 5] = [
    ("overview", "/"),
    ("incidents", "/incidents"),
    ("agents", "/agents"),
    ("maintenance", "/maintenance"),
    ("status page", "/status"),
];

/// A whole page. `nav` is None on the login and public status pages.
pub fn layout(title: &str, nav: Option<&Nav<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · portwatch" }
                link rel="stylesheet" href="/assets/portwatch.css";
                script src="/assets/portwatch.js" defer {}
            }
            body {
                header.top {
                    a.brand href=(if nav.is_some() { "/" } else { "/status" }) { "portwatch" }
                    @if let Some(nav) = nav {
                        nav {
                            @for (label, href) in ENTRIES {
                                a class=[(nav.active == label).then_some("active")] href=(href) { (label) }
                            }
                        }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(nav.csrf);
                            button type="submit" { "sign out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The CSS class suffix and label of a state (`up`, `degraded`, ...).
pub fn state_class(state: &str) -> &'static str {
    match state {
        "up" => "up",
        "degraded" => "degraded",
        "down" => "down",
        "maintenance" => "maintenance",
        _ => "unknown",
    }
}

pub fn badge(state: &str) -> Markup {
    let class = state_class(state);
    html! { span class={"st st-" (class)} { (class) } }
}

/// A time in UTC, to the second.
pub fn utc(ts_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ts_ms)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| "-".into())
}

/// A duration in words, two units at most: `3 h 12 min`, `45 s`.
pub fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 && h == 0 {
        format!("{d} d")
    } else if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 && m == 0 {
        format!("{h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 && sec == 0 {
        format!("{m} min")
    } else if m > 0 {
        format!("{m} min {sec} s")
    } else if ms < 1000 && ms > 0 {
        format!("{ms} ms")
    } else {
        format!("{sec} s")
    }
}

/// `12 min ago` with the exact time on hover; in the future: `in 3 h`.
pub fn ago(now_ms: i64, ts_ms: i64) -> Markup {
    let text = if ts_ms <= now_ms {
        format!("{} ago", span(now_ms - ts_ms))
    } else {
        format!("in {}", span(ts_ms - now_ms))
    };
    html! { time datetime=(rfc3339(ts_ms)) title=(utc(ts_ms)) { (text) } }
}

pub fn rfc3339(ts_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ts_ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// An availability figure: `99.95 %`, or `-` without checks.
pub fn percent(a: Option<f64>) -> String {
    match a {
        None => "-".into(),
        Some(a) if a >= 1.0 => "100 %".into(),
        Some(a) => format!("{:.2} %", (a * 100.0).min(99.99)),
    }
}

/// Microseconds as milliseconds.
pub fn ms_of_us(us: Option<u64>) -> String {
    us.map(|us| super::chart::fmt_ms(us as f64 / 1000.0))
        .unwrap_or_else(|| "-".into())
}

/// Text from an untrusted source (a banner, a reason) for a table cell:
/// control characters shown as escapes, long text cut. maud escapes HTML.
pub fn untrusted(s: &str, max_chars: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A page saying why something could not be shown.
pub fn problem(title: &str, nav: Option<&Nav<'_>>, message: &str) -> Markup {
    layout(
        title,
        nav,
        html! {
            h1 { (title) }
            p.notice.error { (message) }
            p { a href="/" { "back to the overview" } }
        },
    )
}

/// The no-script fallback for refreshing pages.
pub fn refresh_hint() -> Markup {
    html! { noscript { p.muted { "Reload the page for fresh figures (live refresh needs JavaScript)." } } }
}

/// Nothing; for `@if` arms that must produce markup.
pub fn none() -> Markup {
    PreEscaped(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(span(0), "0 s");
        assert_eq!(span(250), "250 ms");
        assert_eq!(span(45_000), "45 s");
        assert_eq!(span(125_000), "2 min 5 s");
        assert_eq!(span(300_000), "5 min");
        assert_eq!(span(3_600_000), "1 h");
        assert_eq!(span(86_400_000), "1 d");
        assert_eq!(span(3 * 3_600_000 + 12 * 60_000), "3 h 12 min");
        assert_eq!(span(2 * 86_400_000 + 3_600_000), "2 d 1 h");
    }

    #[test]
    fn untrusted_text_is_tamed() {
        assert_eq!(untrusted("ok\r\n\u{1b}[2J", 100), "ok\\r\\n\\u{1b}[2J");
        assert_eq!(untrusted("abcdef", 3), "abc…");
        assert_eq!(percent(Some(0.99999)), "99.99 %");
        assert_eq!(percent(Some(1.0)), "100 %");
        assert_eq!(percent(None), "-");
    }
}
