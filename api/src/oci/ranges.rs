//! Parsing of the `Range` request header for blob reads and of the `Content-Range`
//! header of chunked uploads. Pure functions with table tests.

use std::ops::Range;

/// What a `Range` header asks of a blob of a known size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByteRange {
    /// No usable header: send the whole blob with 200.
    Full,
    /// A satisfiable single range: send it with 206.
    Partial(Range<u64>),
    /// A syntactically valid range that lies outside the blob: 416.
    Unsatisfiable,
}

/// Interprets a `Range` header (`bytes=a-b`, `bytes=a-`, `bytes=-n`) against `size`.
/// Multiple ranges and unknown units are ignored (the whole blob is sent), as RFC 9110
/// allows.
pub fn parse_range(header: Option<&str>, size: u64) -> ByteRange {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return ByteRange::Full;
    };
    if spec.contains(',') {
        return ByteRange::Full;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (true, true) => return ByteRange::Full,
        (true, false) => match b.parse::<u64>() {
            Ok(0) => return ByteRange::Unsatisfiable,
            Ok(n) => Some((size.saturating_sub(n), size)),
            Err(_) => None,
        },
        (false, _) => match a.parse::<u64>() {
            Ok(start) if b.is_empty() => Some((start, size)),
            Ok(start) => match b.parse::<u64>() {
                Ok(end) if end >= start => Some((start, end.saturating_add(1).min(size))),
                _ => None,
            },
            Err(_) => None,
        },
    };
    match parsed {
        None => ByteRange::Full,
        Some((start, end)) if start >= size || start >= end => ByteRange::Unsatisfiable,
        Some((start, end)) => ByteRange::Partial(start..end),
    }
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (inclusive; a `bytes ` or
/// `bytes=` prefix is tolerated). Returns `None` when malformed.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let s = header.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next()?;
    let (a, b) = s.split_once('-')?;
    let (start, end) = (a.trim().parse::<u64>().ok()?, b.trim().parse::<u64>().ok()?);
    (end >= start).then_some((start, end))
}

/// The `Range` header value of an upload that holds `len` bytes: `0-<len-1>`; `0-0`
/// for an empty upload, as Docker clients expect.
pub fn upload_range(len: u64) -> String {
    format!("0-{}", len.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_table() {
        let size = 100;
        let table = [
            (None, ByteRange::Full),
            (Some("bytes=0-9"), ByteRange::Partial(0..10)),
            (Some("bytes=90-"), ByteRange::Partial(90..100)),
            (Some("bytes=90-500"), ByteRange::Partial(90..100)),
            (Some("bytes=-10"), ByteRange::Partial(90..100)),
            (Some("bytes=-500"), ByteRange::Partial(0..100)),
            (Some("bytes=100-"), ByteRange::Unsatisfiable),
            (Some("bytes=200-300"), ByteRange::Unsatisfiable),
            (Some("bytes=-0"), ByteRange::Unsatisfiable),
            (Some("bytes=5-1"), ByteRange::Full),
            (Some("bytes=0-1,5-6"), ByteRange::Full),
            (Some("items=0-1"), ByteRange::Full),
            (Some("bytes=x-y"), ByteRange::Full),
        ];
        for (h, want) in table {
            assert_eq!(parse_range(h, size), want, "{h:?}");
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), ByteRange::Unsatisfiable);
    }

    #[test]
    fn content_range_table() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes=10-19"), Some((10, 19)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("9-1"), None);
        assert_eq!(parse_content_range("abc"), None);
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(10), "0-9");
    }
}
