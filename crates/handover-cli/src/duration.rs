//! Durations as operators write them: `500ms`, `3s`, `2m`, `1h`, `1m30s`.

use std::time::Duration;

/// The longest duration accepted, in seconds.
const MAX_SECS: f64 = 1e9;

/// Parses a duration: one or more `<number><unit>` parts, units `ms`, `s`,
/// `m`, `h` (and `us`); a bare `0` is zero.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = |why: &str| {
        format!("{text:?} is not a duration: {why}. Write it like 500ms, 3s, 2m, 1h or 1m30s")
    };
    let t = text.trim();
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if digits == 0 {
            return Err(bad("a number is missing"));
        }
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| bad(&format!("{:?} is not a number", &rest[..digits])))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "" => return Err(bad("the unit is missing (ms, s, m or h)")),
            other => return Err(bad(&format!("{other:?} is not a unit (ms, s, m or h)"))),
        };
        let secs = number * scale;
        if !secs.is_finite() || secs > MAX_SECS || total.as_secs_f64() + secs > MAX_SECS {
            return Err(bad("it is too long (at most about 31 years)"));
        }
        total += Duration::from_secs_f64(secs);
    }
    Ok(total)
}

/// Formats a duration the way [`parse`] reads it (rounded to milliseconds).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "0".to_string()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        // Found by fuzzing: parts that are each fine but sum past the limit.
        assert!(parse("900000000s900000000s").is_err());
        for bad in ["", "5", "s", "3 parsecs", "-1s", "1e9h", "5x"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("Write it like 500ms"), "{bad}: {e}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,20}") {
            let _ = parse(&s);
        }

        #[test]
        fn round_trips(ms in 0u64..10_000_000) {
            let d = Duration::from_millis(ms);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }
    }
}
