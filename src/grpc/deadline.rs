//! The caller's deadline, read from the `grpc-timeout` request header (gRPC over HTTP/2 spec:
//! at most 8 ASCII digits followed by a unit, H M S m u n).

use std::sync::LazyLock;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataKey};

/// The header's name, parsed once (a name given as text is parsed again at each look-up).
pub static GRPC_TIMEOUT: LazyLock<MetadataKey<Ascii>> =
    LazyLock::new(|| MetadataKey::from_static("grpc-timeout"));

/// Parses a `grpc-timeout` header value; `None` when it is malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `wait` as a `grpc-timeout` value can say it exactly: whole milliseconds when it is at least
/// one, else whole microseconds (at least one), whole seconds past the 8 digits a value may have.
/// Rounded down, so the callee never gets more time than `wait` (but a microsecond at least). A
/// caller that waits for the callee this long itself, and sends
/// [`grpc_timeout_value`]`(sendable_wait(w))`, waits exactly as long as the client library's own
/// timer on that header.
pub fn sendable_wait(wait: Duration) -> Duration {
    match in_units(wait) {
        (n, b'u') => Duration::from_micros(n),
        (n, b'm') => Duration::from_millis(n),
        (n, _) => Duration::from_secs(n),
    }
}

/// [`sendable_wait`]`(wait)` as a count and its unit letter (`u`, `m` or `S`).
fn in_units(wait: Duration) -> (u64, u8) {
    const MOST: u64 = 99_999_999;
    let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        ((wait.as_micros() as u64).max(1), b'u')
    } else if millis <= MOST {
        (millis, b'm')
    } else {
        (wait.as_secs().min(MOST), b'S')
    }
}

/// The `grpc-timeout` value for [`sendable_wait`]`(wait)`, in the unit that says it exactly.
/// Whole milliseconds make the same text from one call to the next far more often than the
/// microseconds or nanoseconds a remaining deadline has, and HPACK then sends an index into
/// its table instead of a new literal. Written without the formatting machinery: an expert call
/// sends one every time.
pub fn grpc_timeout_value(
    wait: Duration,
) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    let (n, unit) = in_units(wait);
    let mut text = [0u8; 9];
    let mut start = 8;
    text[8] = unit;
    let mut rest = n;
    loop {
        start -= 1;
        text[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    tonic::metadata::MetadataValue::try_from(&text[start..])
        .expect("digits and a unit letter are a valid header value")
}

/// The deadline a request carries, if any.
pub fn request_timeout<T>(request: &tonic::Request<T>) -> Option<Duration> {
    request
        .metadata()
        .get(&*GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_sent_in_whole_milliseconds_rounded_down_and_read_back_exactly() {
        let cases = [
            (Duration::from_millis(9_979), "9979m"),
            (Duration::from_micros(9_979_999), "9979m"),
            (Duration::from_millis(1), "1m"),
            (Duration::from_micros(999), "999u"),
            (Duration::from_nanos(10), "1u"),
            (Duration::ZERO, "1u"),
            (Duration::from_millis(99_999_999), "99999999m"),
            (Duration::from_millis(100_000_000), "100000S"),
            (Duration::MAX, "99999999S"),
        ];
        for (wait, text) in cases {
            let value = grpc_timeout_value(wait);
            assert_eq!(value.to_str().unwrap(), text, "{wait:?}");
            let read = parse_grpc_timeout(text).expect("a value the parser reads");
            // The callee is told exactly the wait the caller keeps, never more than asked.
            assert_eq!(read, sendable_wait(wait), "{wait:?}");
            assert!(read <= wait.max(Duration::from_micros(1)), "{wait:?}");
        }
    }

    #[test]
    fn parses_every_unit_and_rejects_malformed_values() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "S", "10", "123456789S", "1.5S", "-1S", "10s", "10 S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
