//! Durations (`30s`, `5m`, `168h`) and sizes (`512KiB`, `25MiB`, `1GiB`)
//! as users write them, read and written back the same way.

use std::time::Duration;

/// Reads a duration such as `30s`, `5m`, `1h 30m` or `0` (zero).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(wow::config::parse_duration("5m"), Ok(Duration::from_secs(300)));
/// assert!(wow::config::parse_duration("five minutes").is_err());
/// ```
///
/// # Errors
///
/// A message naming the expected form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text).map_err(|_| {
        format!("invalid duration {text:?}: write it like \"30s\", \"5m\" or \"168h\"")
    })
}

/// Writes a duration the way a user would, in the largest of hours,
/// minutes, seconds and milliseconds that holds it exactly: `7s`, `5m`,
/// `168h`, `90m`, `1500ms`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let whole = duration.subsec_nanos() == 0;
    if duration.is_zero() {
        "0s".to_owned()
    } else if whole && seconds.is_multiple_of(3600) {
        format!("{}h", seconds / 3600)
    } else if whole && seconds.is_multiple_of(60) {
        format!("{}m", seconds / 60)
    } else if whole {
        format!("{seconds}s")
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        humantime::format_duration(duration).to_string()
    }
}

/// Reads a size such as `512KiB`, `25MiB`, `1GiB`, `10MB` or a plain number of bytes.
///
/// ```
/// assert_eq!(wow::config::parse_size("25MiB"), Ok(25 * 1024 * 1024));
/// assert!(wow::config::parse_size("big").is_err());
/// ```
///
/// # Errors
///
/// A message naming the expected form.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text.trim()).map_err(|_| {
        format!("invalid size {text:?}: write it like \"512KiB\", \"25MiB\" or \"1GiB\"")
    })
}

/// Writes a size in the largest binary unit that divides it exactly.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (unit, name) in UNITS {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{name}", bytes / unit);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_write_back() {
        for (text, seconds) in [("30s", 30), ("5m", 300), ("168h", 168 * 3600), ("0", 0)] {
            let duration = parse_duration(text).unwrap();
            assert_eq!(duration, Duration::from_secs(seconds));
            assert_eq!(
                parse_duration(&format_duration(duration)).unwrap(),
                duration
            );
        }
        assert_eq!(format_duration(Duration::from_secs(7)), "7s");
        assert_eq!(format_duration(Duration::from_secs(8760 * 3600)), "8760h");
        assert_eq!(format_duration(Duration::from_secs(90 * 60)), "90m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_read_and_write_back() {
        for (text, bytes) in [
            ("512KiB", 512 << 10),
            ("25MiB", 25 << 20),
            ("1GiB", 1 << 30),
            ("64KiB", 64 << 10),
            ("1000", 1000),
        ] {
            assert_eq!(parse_size(text).unwrap(), bytes);
            assert_eq!(parse_size(&format_size(bytes)).unwrap(), bytes);
        }
        assert_eq!(format_size(25 << 20), "25MiB");
        assert_eq!(format_size(1000), "1000B");
        assert!(parse_size("lots").is_err());
    }
}
