//! The one rendering of a duration for people, used by the CLI, the web UI and the
//! executor's messages.

use std::time::Duration;

/// A duration for people: `0s`, `250ms`, `1.23s`, `45s`, `2m 5s`, `1h 30m`, `24h`.
///
/// Under a second: milliseconds. Under a minute: seconds with up to two decimals
/// (truncated, trailing zeros dropped). From a minute on: whole hours, minutes and seconds,
/// largest first, zero parts left out.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let hundredths = ms % 1000 / 10;
        let fraction = format!("{hundredths:02}");
        let fraction = fraction.trim_end_matches('0');
        return if fraction.is_empty() {
            format!("{}s", ms / 1000)
        } else {
            format!("{}.{fraction}s", ms / 1000)
        };
    }
    let secs = u128::from(d.as_secs());
    join_units(&[(secs / 3600, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")])
}

/// A duration exactly, in the units a spec writes it with: `1m 30s 200ms`, `0s`. For
/// settings shown back to people (plans), where rounding would misstate them.
pub fn format_duration_exact(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    join_units(&[
        (ms / 3_600_000, "h"),
        (ms / 60_000 % 60, "m"),
        (ms / 1000 % 60, "s"),
        (ms % 1000, "ms"),
    ])
}

/// The non-zero parts, `<n><unit>` each, space-separated.
fn join_units(parts: &[(u128, &str)]) -> String {
    parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// [`format_duration`] of a number of milliseconds.
pub fn format_duration_ms(ms: u64) -> String {
    format_duration(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_durations_keep_every_unit() {
        assert_eq!(format_duration_exact(Duration::ZERO), "0s");
        assert_eq!(
            format_duration_exact(Duration::from_millis(90_200)),
            "1m 30s 200ms"
        );
        assert_eq!(format_duration_exact(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn table() {
        for (ms, want) in [
            (0, "0s"),
            (1, "1ms"),
            (250, "250ms"),
            (999, "999ms"),
            (1000, "1s"),
            (1009, "1s"),
            (1200, "1.2s"),
            (1234, "1.23s"),
            (1050, "1.05s"),
            (45_000, "45s"),
            (59_999, "59.99s"),
            (60_000, "1m"),
            (125_000, "2m 5s"),
            (125_900, "2m 5s"),
            (5_400_000, "1h 30m"),
            (3_661_000, "1h 1m 1s"),
            (3_600_000, "1h"),
            (86_400_000, "24h"),
            (7 * 86_400_000, "168h"),
        ] {
            assert_eq!(format_duration_ms(ms), want, "{ms}ms");
        }
    }

    #[test]
    fn sub_millisecond_durations_are_zero_and_huge_ones_do_not_overflow() {
        assert_eq!(format_duration(Duration::from_micros(999)), "0s");
        assert!(format_duration(Duration::MAX).ends_with('s'));
    }
}
