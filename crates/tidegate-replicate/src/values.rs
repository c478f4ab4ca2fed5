//! Exact, allocation-free parsers for the textual forms SQLite stores decimals, timestamps and
//! dates in. Each returns `None` for anything it does not accept; the caller turns that into an
//! error naming the table and column (never the value).

/// Largest exponent accepted in decimal text; keeps `10^n` arithmetic bounded.
const MAX_EXPONENT: i64 = 100;

/// Parses decimal text such as `-123.45`, `+7`, `.5` or `1.5e3` into the unscaled `i128` of a
/// `Decimal128(precision, scale)`.
///
/// Exact: digits beyond `scale` are accepted only if they are zeros (no rounding), and the
/// result must have at most `precision` digits.
pub(crate) fn parse_decimal(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let bytes = text.as_bytes();
    let (negative, rest) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let (mantissa, exponent) = match rest.iter().position(|b| matches!(b, b'e' | b'E')) {
        Some(at) => (&rest[..at], parse_exponent(&rest[at + 1..])?),
        None => (rest, 0),
    };
    let (int_digits, frac_digits) = match mantissa.iter().position(|&b| b == b'.') {
        Some(at) => (&mantissa[..at], &mantissa[at + 1..]),
        None => (mantissa, &[][..]),
    };
    if int_digits.is_empty() && frac_digits.is_empty() {
        return None;
    }
    if !int_digits.iter().chain(frac_digits).all(u8::is_ascii_digit) {
        return None;
    }

    // value = digits * 10^(exponent - frac_len); unscaled = value * 10^scale.
    let total = int_digits.len() + frac_digits.len();
    let shift = exponent + i64::from(scale) - i64::try_from(frac_digits.len()).ok()?;
    let digits = int_digits.iter().chain(frac_digits);
    let dropped = usize::try_from(-shift).unwrap_or(0);
    let kept = total.saturating_sub(dropped);
    let mut unscaled: i128 = 0;
    for (index, &digit) in digits.enumerate() {
        let digit = i128::from(digit - b'0');
        if index < kept {
            unscaled = unscaled.checked_mul(10)?.checked_add(digit)?;
        } else if digit != 0 {
            // A non-zero digit below the column's scale: refusing beats rounding silently.
            return None;
        }
    }
    if shift > 0 && unscaled != 0 {
        unscaled = unscaled.checked_mul(pow10(u32::try_from(shift).ok()?)?)?;
    }
    if unscaled >= pow10(u32::from(precision))? {
        return None;
    }
    Some(if negative { -unscaled } else { unscaled })
}

/// The unscaled `Decimal128(precision, scale)` value of an integer.
pub(crate) fn decimal_from_i64(value: i64, precision: u8, scale: i8) -> Option<i128> {
    let scale = u32::try_from(scale).ok()?;
    let unscaled = i128::from(value).checked_mul(pow10(scale)?)?;
    (unscaled.unsigned_abs() < pow10(u32::from(precision))?.unsigned_abs()).then_some(unscaled)
}

/// Parses `YYYY-MM-DD HH:MM:SS[.f{1,6}]` (or with `T` as the separator, or a bare
/// `YYYY-MM-DD` meaning midnight) into microseconds since the Unix epoch, without time zone.
pub(crate) fn parse_timestamp_micros(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let days = i64::from(parse_date_days(text.get(..10)?)?);
    let rest = &bytes[10..];
    let mut micros = days.checked_mul(86_400_000_000)?;
    if rest.is_empty() {
        return Some(micros);
    }
    if rest.len() < 9 || !matches!(rest[0], b' ' | b'T') || rest[3] != b':' || rest[6] != b':' {
        return None;
    }
    let hour = two_digits(&rest[1..3])?;
    let minute = two_digits(&rest[4..6])?;
    let second = two_digits(&rest[7..9])?;
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let fraction = &rest[9..];
    let mut fraction_micros = 0i64;
    if !fraction.is_empty() {
        let digits = fraction.strip_prefix(b".")?;
        if digits.is_empty() || digits.len() > 6 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for &digit in digits {
            fraction_micros = fraction_micros * 10 + i64::from(digit - b'0');
        }
        for _ in digits.len()..6 {
            fraction_micros *= 10;
        }
    }
    let seconds = i64::from(hour) * 3600 + i64::from(minute) * 60 + i64::from(second);
    micros = micros.checked_add(seconds * 1_000_000 + fraction_micros)?;
    Some(micros)
}

/// Parses `YYYY-MM-DD` into days since the Unix epoch.
pub(crate) fn parse_date_days(text: &str) -> Option<i32> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let year = i64::from(two_digits(&bytes[0..2])?) * 100 + i64::from(two_digits(&bytes[2..4])?);
    let month = two_digits(&bytes[5..7])?;
    let day = two_digits(&bytes[8..10])?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    i32::try_from(days_from_civil(year, month, day)).ok()
}

fn parse_exponent(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0i64, |acc, &digit| acc * 10 + i64::from(digit - b'0'));
    (value <= MAX_EXPONENT).then_some(if negative { -value } else { value })
}

fn pow10(exponent: u32) -> Option<i128> {
    10i128.checked_pow(exponent)
}

fn two_digits(bytes: &[u8]) -> Option<u32> {
    match bytes {
        [a @ b'0'..=b'9', b @ b'0'..=b'9'] => Some(u32::from(a - b'0') * 10 + u32::from(b - b'0')),
        _ => None,
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_parse_exactly() {
        let cases: &[(&str, u8, i8, Option<i128>)] = &[
            ("123.45", 12, 2, Some(12345)),
            ("-123.45", 12, 2, Some(-12345)),
            ("+7", 12, 2, Some(700)),
            (".5", 12, 2, Some(50)),
            ("5.", 12, 2, Some(500)),
            ("1.50000", 12, 2, Some(150)),
            ("1.5e3", 12, 2, Some(150_000)),
            ("12345E-2", 12, 2, Some(12345)),
            ("0", 12, 2, Some(0)),
            ("9999999999.99", 12, 2, Some(999_999_999_999)),
            ("10000000000.00", 12, 2, None),
            ("1.234", 12, 2, None),
            ("", 12, 2, None),
            ("-", 12, 2, None),
            (".", 12, 2, None),
            ("1,5", 12, 2, None),
            (" 1", 12, 2, None),
            ("1e", 12, 2, None),
            ("1e1000", 38, 0, None),
            ("0.000000e50", 38, 2, Some(0)),
            (
                "12345678901234567890123456789012.123456",
                38,
                6,
                Some(12_345_678_901_234_567_890_123_456_789_012_123_456),
            ),
            ("99999999999999999999999999999999999999999", 38, 0, None),
        ];
        for &(text, precision, scale, expected) in cases {
            assert_eq!(parse_decimal(text, precision, scale), expected, "{text}");
        }
    }

    #[test]
    fn integers_scale_into_decimals() {
        assert_eq!(decimal_from_i64(100, 12, 2), Some(10_000));
        assert_eq!(decimal_from_i64(-5, 3, 2), Some(-500));
        assert_eq!(decimal_from_i64(10, 3, 2), None);
        assert_eq!(
            decimal_from_i64(i64::MIN, 38, 0),
            Some(i128::from(i64::MIN))
        );
    }

    #[test]
    fn timestamps_and_dates_parse() {
        assert_eq!(parse_timestamp_micros("1970-01-01 00:00:00"), Some(0));
        assert_eq!(
            parse_timestamp_micros("2020-09-13T12:26:40.5"),
            Some(1_600_000_000_500_000)
        );
        assert_eq!(
            parse_timestamp_micros("2020-09-13 12:26:40.000123"),
            Some(1_600_000_000_000_123)
        );
        assert_eq!(
            parse_timestamp_micros("1969-12-31 23:59:59"),
            Some(-1_000_000)
        );
        assert_eq!(
            parse_timestamp_micros("2024-02-29"),
            Some(19_782 * 86_400_000_000)
        );
        for bad in [
            "2023-02-29 00:00:00",
            "2020-09-13 24:00:00",
            "2020-09-13 12:26:40.",
            "2020-09-13 12:26:40.1234567",
            "2020-09-13 12:26:40Z",
            "2020-9-13 12:26:40",
            "now",
            "",
        ] {
            assert_eq!(parse_timestamp_micros(bad), None, "{bad}");
        }
        assert_eq!(parse_date_days("1970-01-01"), Some(0));
        assert_eq!(parse_date_days("2000-03-01"), Some(11_017));
        assert_eq!(parse_date_days("0001-01-01"), Some(-719_162));
        assert_eq!(parse_date_days("2000-13-01"), None);
        assert_eq!(parse_date_days("2000-01-01 "), None);
    }
}
