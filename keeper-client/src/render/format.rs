//! Values made readable for tables (`12.3 MiB`, `3m 12s`, `2h ago`) and exact for JSON
//! (RFC 3339 times and protobuf JSON durations such as `1.500s`).

use std::time::{Duration, SystemTime};

/// Size in binary units: `512 B`, `1.5 KiB`, `12.3 MiB`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Duration with at most two units: `850ms`, `1.2s`, `3m 12s`, `2h 5m`, `3d 4h`.
pub fn duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis < 1000 {
        return format!("{millis}ms");
    }
    let seconds = duration.as_secs();
    if seconds < 10 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    let (days, hours, minutes, seconds) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Protobuf duration for tables; `-` when absent or negative.
pub fn proto_duration(value: Option<&prost_types::Duration>) -> String {
    value
        .and_then(|value| Duration::try_from(*value).ok())
        .map_or_else(|| "-".to_owned(), duration)
}

/// Time since a timestamp, kubectl style: `45s`, `12m`, `3h`, `2d`; `-` when absent.
pub fn age(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(time) = timestamp.and_then(|t| SystemTime::try_from(*t).ok()) else {
        return "-".to_owned();
    };
    let elapsed = SystemTime::now()
        .duration_since(time)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match elapsed {
        0..60 => format!("{elapsed}s"),
        60..3600 => format!("{}m", elapsed / 60),
        3600..86_400 => format!("{}h", elapsed / 3600),
        _ => format!("{}d", elapsed / 86_400),
    }
}

/// Timestamp to the second in UTC with its age: `2026-12-04 16:16:00 UTC (3h ago)`.
pub fn time(timestamp: Option<&prost_types::Timestamp>) -> String {
    let Some(timestamp) = timestamp else {
        return "-".to_owned();
    };
    let whole_seconds = prost_types::Timestamp {
        seconds: timestamp.seconds,
        nanos: 0,
    };
    let text = whole_seconds
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC");
    format!("{text} ({} ago)", age(Some(timestamp)))
}

/// Exact timestamp for JSON: RFC 3339 in UTC, as in the protobuf JSON mapping.
pub fn json_time(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    timestamp.map(ToString::to_string)
}

/// Exact duration for JSON: seconds with an `s` suffix, as in the protobuf JSON mapping.
pub fn json_duration(value: Option<&prost_types::Duration>) -> Option<String> {
    value.map(ToString::to_string)
}

/// Serializes a protobuf timestamp as [`json_time`] does; `null` when absent.
pub fn serialize_time<S: serde::Serializer>(
    value: &Option<prost_types::Timestamp>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_some(&json_time(value.as_ref()))
}

/// Serializes a protobuf duration as [`json_duration`] does; `null` when absent.
pub fn serialize_duration<S: serde::Serializer>(
    value: &Option<prost_types::Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_some(&json_duration(value.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024 + 300 * 1024), "12.3 MiB");
    }

    #[test]
    fn durations_keep_two_units() {
        assert_eq!(duration(Duration::from_millis(850)), "850ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.2s");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(192)), "3m 12s");
        assert_eq!(duration(Duration::from_secs(2 * 3600 + 300)), "2h 5m");
        assert_eq!(
            duration(Duration::from_secs(3 * 86_400 + 4 * 3600)),
            "3d 4h"
        );
    }

    #[test]
    fn json_values_are_exact() {
        let timestamp = prost_types::Timestamp {
            seconds: 1_765_000_000,
            nanos: 123_000_000,
        };
        assert_eq!(
            json_time(Some(&timestamp)).as_deref(),
            Some("2025-12-06T05:46:40.123Z")
        );
        let elapsed = prost_types::Duration {
            seconds: 1,
            nanos: 500_000_000,
        };
        assert_eq!(json_duration(Some(&elapsed)).as_deref(), Some("1.500s"));
    }

    #[test]
    fn time_shows_utc_to_the_second() {
        let timestamp = prost_types::Timestamp {
            seconds: 1_765_000_000,
            nanos: 999,
        };
        assert!(time(Some(&timestamp)).starts_with("2025-12-06 05:46:40 UTC ("));
        assert_eq!(time(None), "-");
    }
}
