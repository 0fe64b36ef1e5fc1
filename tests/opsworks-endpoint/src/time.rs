//! The few date formats the endpoint reads and writes, without a date library: ISO 8601 as
//! OpsWorks writes `CreatedAt` (`2024-05-01T12:00:00+00:00`), the forms IAM accepts in date
//! conditions, and SigV4's `X-Amz-Date` (`20240501T120000Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn from_unix_seconds(s: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

fn split(t: SystemTime) -> (i64, u32, u32, u32, u32, u32) {
    let s = unix_seconds(t);
    let (y, mo, d) = civil_from_days(s.div_euclid(86_400));
    let rem = s.rem_euclid(86_400) as u32;
    (y, mo, d, rem / 3600, rem / 60 % 60, rem % 60)
}

/// `2024-05-01T12:00:00+00:00`, the form OpsWorks used for `CreatedAt`.
pub(crate) fn iso8601(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = split(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00")
}

/// `20240501T120000Z`, SigV4's `X-Amz-Date`.
pub(crate) fn amz_date(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = split(t);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn from_parts(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<SystemTime> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(from_unix_seconds(
        days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s),
    ))
}

/// Parses SigV4's `X-Amz-Date` (`20240501T120000Z`).
pub(crate) fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if !s.is_ascii() || b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    from_parts(
        i64::from(digits(&s[0..4])?),
        digits(&s[4..6])?,
        digits(&s[6..8])?,
        digits(&s[9..11])?,
        digits(&s[11..13])?,
        digits(&s[13..15])?,
    )
}

/// Parses the date forms IAM accepts in date conditions: ISO 8601 (`2024-05-01`,
/// `2024-05-01T12:00:00Z`, with optional fraction and `±HH:MM` / `±HHMM` offset, minutes-only
/// times) or seconds since the epoch.
pub(crate) fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    if !s.is_ascii() {
        return None;
    }
    if let Some(n) = digits(s).filter(|_| s.len() > 8) {
        return Some(from_unix_seconds(i64::from(n)));
    }
    let (date, rest) = match s.find(['T', 't', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut dp = date.split('-');
    let y = digits(dp.next()?)?;
    let mo = digits(dp.next()?)?;
    let d = digits(dp.next()?)?;
    if dp.next().is_some() {
        return None;
    }
    if rest.is_empty() {
        return from_parts(i64::from(y), mo, d, 0, 0, 0);
    }
    // Split off the zone designator.
    let (clock, offset_secs) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else if let Some(i) = rest.rfind(['+', '-']) {
        let (c, z) = rest.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let z = z[1..].replace(':', "");
        if z.len() != 4 {
            return None;
        }
        let zh = i64::from(digits(&z[..2])?);
        let zm = i64::from(digits(&z[2..])?);
        (c, sign * (zh * 3600 + zm * 60))
    } else {
        (rest, 0)
    };
    let clock = clock.split('.').next()?;
    let mut cp = clock.split(':');
    let h = digits(cp.next()?)?;
    let mi = digits(cp.next()?)?;
    let sec = match cp.next() {
        Some(x) => digits(x)?,
        None => 0,
    };
    if cp.next().is_some() {
        return None;
    }
    let t = from_parts(i64::from(y), mo, d, h, mi, sec)?;
    Some(from_unix_seconds(unix_seconds(t) - offset_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let t = UNIX_EPOCH + Duration::from_secs(1_714_564_800); // 2024-05-01T12:00:00Z
        assert_eq!(iso8601(t), "2024-05-01T12:00:00+00:00");
        assert_eq!(amz_date(t), "20240501T120000Z");
        assert_eq!(parse_amz_date("20240501T120000Z"), Some(t));
        for s in [
            "2024-05-01T12:00:00Z",
            "2024-05-01T12:00:00.250Z",
            "2024-05-01T12:00:00+00:00",
            "2024-05-01T14:00:00+02:00",
            "2024-05-01T10:00:00-0200",
            "2024-05-01T12:00Z",
            "1714564800",
        ] {
            assert_eq!(parse_iso8601(s), Some(t), "{s}");
        }
        assert_eq!(
            parse_iso8601("2024-05-01"),
            Some(UNIX_EPOCH + Duration::from_secs(1_714_521_600))
        );
        for bad in [
            "",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "2024-05-01T25:00:00Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad}");
        }
        assert_eq!(parse_amz_date("2024-05-01T12:00:00Z"), None);
        assert_eq!(parse_amz_date("2024050éT12000Z"), None);
    }
}
