//! Bar charts as inline SVG, drawn on the server: no script, no library.
//! Numbers only go into the markup (and series names this module chose), so
//! nothing needs escaping.

use std::fmt::Write;

/// One stacked series: a CSS colour and a value per minute.
pub struct Series {
    /// Shown in tooltips and the legend.
    pub name: &'static str,
    /// Fill colour.
    pub colour: &'static str,
    /// Values, oldest first; all series have the same length.
    pub values: Vec<i64>,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 140.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 18.0;

/// A stacked bar chart of per-minute counts over the last `series[*].values.len()`
/// minutes, labelled for screen readers with `label`.
pub fn stacked_minutes(label: &str, series: &[Series]) -> String {
    let minutes = series.first().map_or(0, |s| s.values.len());
    let totals: Vec<i64> = (0..minutes)
        .map(|i| series.iter().map(|s| s.values[i]).sum())
        .collect();
    let max = totals.iter().copied().max().unwrap_or(0).max(1);
    let plot_h = HEIGHT - BOTTOM - 6.0;
    let slot = (WIDTH - LEFT) / minutes.max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        ammonia::clean_text(label)
    );
    // Axis: the maximum and zero, and the time span.
    let _ = write!(
        svg,
        r##"<g font-size="10" fill="#5f6b7a"><text x="2" y="14">{max}</text><text x="2" y="{}">0</text><text x="{LEFT}" y="{}">−{minutes} min</text><text x="{}" y="{}" text-anchor="end">now</text></g>"##,
        HEIGHT - BOTTOM,
        HEIGHT - 4.0,
        WIDTH - 2.0,
        HEIGHT - 4.0
    );
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{}" x2="{WIDTH}" y2="{}" stroke="#d9dee5"/>"##,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
    for i in 0..minutes {
        let x = LEFT + i as f64 * slot + 0.5;
        let mut y = HEIGHT - BOTTOM;
        let ago = minutes - 1 - i;
        for s in series {
            let v = s.values[i];
            if v == 0 {
                continue;
            }
            let h = v as f64 / max as f64 * plot_h;
            y -= h;
            let _ = write!(
                svg,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{v} {} ({ago} min ago)</title></rect>"#,
                (slot - 1.0).max(0.5),
                s.colour,
                s.name
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A horizontal bar split into parts (`(name, colour, count)`) of `total`.
/// SVG rather than styled boxes, so the page needs no inline style (the
/// Content-Security-Policy allows none).
pub fn progress_bar(
    label: &str,
    total: i64,
    parts: &[(&'static str, &'static str, i64)],
) -> String {
    let mut svg = format!(
        r##"<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg"><rect width="100" height="6" fill="#e8ebf0"/>"##,
        ammonia::clean_text(label)
    );
    let mut x = 0.0;
    for (name, colour, n) in parts {
        if *n <= 0 || total <= 0 {
            continue;
        }
        let w = *n as f64 * 100.0 / total as f64;
        let _ = write!(
            svg,
            r#"<rect x="{x:.3}" width="{w:.3}" height="6" fill="{colour}"><title>{n} {name}</title></rect>"#
        );
        x += w;
    }
    svg.push_str("</svg>");
    svg
}

/// Values per minute, oldest first, from `(minutes ago, value)` pairs.
pub fn by_minute(minutes: usize, points: impl IntoIterator<Item = (i32, i64)>) -> Vec<i64> {
    let mut values = vec![0; minutes];
    for (ago, v) in points {
        if let Ok(ago) = usize::try_from(ago)
            && ago < minutes
        {
            values[minutes - 1 - ago] += v;
        }
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_land_in_their_slot_oldest_first() {
        assert_eq!(
            by_minute(4, [(0, 5), (3, 1), (9, 7), (-1, 2)]),
            vec![1, 0, 0, 5]
        );
    }

    #[test]
    fn bars_are_stacked_and_scaled_to_the_tallest_minute() {
        let svg = stacked_minutes(
            "jobs <per> minute",
            &[
                Series {
                    name: "done",
                    colour: "#2e7d32",
                    values: vec![0, 4],
                },
                Series {
                    name: "discarded",
                    colour: "#c62828",
                    values: vec![2, 0],
                },
            ],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(
            svg.contains("&lt;per&gt;") && !svg.contains("<per>"),
            "{svg}"
        );
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("<title>4 done (0 min ago)</title>"));
        assert!(svg.contains("<title>2 discarded (1 min ago)</title>"));
        // The tallest minute (4) fills the plot; 2 fills half of it.
        assert!(svg.contains(r#"height="116.0""#), "{svg}");
        assert!(svg.contains(r#"height="58.0""#), "{svg}");
        assert!(!svg.contains("<script"));
    }

    #[test]
    fn a_progress_bar_splits_its_width_by_part() {
        let svg = progress_bar(
            "3 of 4 sent",
            4,
            &[
                ("sent", "#0f0", 3),
                ("failed", "#f00", 1),
                ("skipped", "#00f", 0),
            ],
        );
        assert!(
            svg.contains(
                r##"<rect x="0.000" width="75.000" height="6" fill="#0f0"><title>3 sent</title>"##
            ),
            "{svg}"
        );
        assert!(svg.contains(r#"<rect x="75.000" width="25.000""#), "{svg}");
        assert!(!svg.contains("skipped"));
    }
}
