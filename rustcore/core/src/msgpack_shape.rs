//! Shape check of a msgpack frame body, run on the raw bytes before anything is decoded.
//!
//! The frame decoder (`pyagent.proto.wire.decode_body`) bounds how deeply a peer's message nests and
//! how many values it holds. Checking that on the bytes, rather than on the decoded Python value, means
//! a hostile frame is refused before a single object is built for it, and the walk costs a few
//! nanoseconds per value instead of a Python loop.
//!
//! The scan keeps one explicit stack entry per open container (how many of its values are still to
//! come), so it neither recurses nor allocates per value: its stack never outgrows `depth_max`. Every
//! length field is bounds-checked against the input before it is used, so a declared length can
//! cost neither memory nor time beyond the bytes actually present.
//!
//! Counting follows the Python check it replaces: every value counts once, containers and scalars
//! alike, and a map of n pairs holds 2n values (keys count). The top-level container sits at depth 1,
//! a container inside it at depth 2, and so on; scalars add no depth.

use std::fmt;

/// Why a msgpack body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShapeError {
    /// A container sits at a depth greater than `depth_max`.
    TooDeep { depth_max: usize },
    /// The body holds more than `count_max` values.
    TooManyValues { count_max: usize },
    /// The body ends inside a value (a header, a length field, a payload or a container's values).
    Truncated,
    /// Bytes follow the single top-level value.
    TrailingBytes,
    /// The byte 0xc1, which msgpack reserves and never emits.
    ReservedByte,
    /// An ext or fixext value: our protocols never send them, so they are refused rather than skipped.
    ExtType,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The depth and count wording predates this module (the Python check said the same), and
        // callers and tests match on it.
        match self {
            Self::TooDeep { depth_max } => {
                write!(f, "message nested deeper than depth_max={depth_max}")
            }
            Self::TooManyValues { count_max } => {
                write!(f, "message has more than count_max={count_max} values")
            }
            Self::Truncated => write!(f, "truncated msgpack"),
            Self::TrailingBytes => write!(f, "trailing bytes after msgpack value"),
            Self::ReservedByte => write!(f, "reserved byte 0xc1 in msgpack"),
            Self::ExtType => write!(f, "msgpack ext types are not accepted"),
        }
    }
}

impl std::error::Error for ShapeError {}

/// Where a container's entry count is: in the marker byte itself, or in a big-endian field after it.
#[derive(Clone, Copy)]
enum Entries {
    Inline(u64),
    Follows { width: usize },
}

/// What the first byte of a value says about the bytes that follow it.
#[derive(Clone, Copy)]
enum Marker {
    /// A scalar whose encoding is the marker plus exactly this many bytes.
    Scalar { payload_bytes: u64 },
    /// A str or bin: a big-endian length field of `width` bytes, then that many bytes.
    Blob { width: usize },
    /// An array (one value per entry) or a map (two values per entry: key and value).
    Container {
        entries: Entries,
        values_per_entry: u64,
    },
}

fn classify(marker: u8) -> Result<Marker, ShapeError> {
    use Marker::{Blob, Container, Scalar};
    Ok(match marker {
        // Positive and negative fixint, nil, false, true.
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Scalar { payload_bytes: 0 },
        0x80..=0x8f => Container {
            entries: Entries::Inline(u64::from(marker & 0x0f)),
            values_per_entry: 2,
        },
        0x90..=0x9f => Container {
            entries: Entries::Inline(u64::from(marker & 0x0f)),
            values_per_entry: 1,
        },
        0xa0..=0xbf => Scalar {
            payload_bytes: u64::from(marker & 0x1f),
        },
        0xc1 => return Err(ShapeError::ReservedByte),
        0xc7..=0xc9 | 0xd4..=0xd8 => return Err(ShapeError::ExtType),
        // uint8 and int8.
        0xcc | 0xd0 => Scalar { payload_bytes: 1 },
        // uint16 and int16.
        0xcd | 0xd1 => Scalar { payload_bytes: 2 },
        // float32, uint32, int32.
        0xca | 0xce | 0xd2 => Scalar { payload_bytes: 4 },
        // float64, uint64, int64.
        0xcb | 0xcf | 0xd3 => Scalar { payload_bytes: 8 },
        // bin8 and str8.
        0xc4 | 0xd9 => Blob { width: 1 },
        // bin16 and str16.
        0xc5 | 0xda => Blob { width: 2 },
        // bin32 and str32.
        0xc6 | 0xdb => Blob { width: 4 },
        0xdc => Container {
            entries: Entries::Follows { width: 2 },
            values_per_entry: 1,
        },
        0xdd => Container {
            entries: Entries::Follows { width: 4 },
            values_per_entry: 1,
        },
        0xde => Container {
            entries: Entries::Follows { width: 2 },
            values_per_entry: 2,
        },
        0xdf => Container {
            entries: Entries::Follows { width: 4 },
            values_per_entry: 2,
        },
    })
}

/// The big-endian unsigned field of `width` (at most 4) bytes at `at`.
fn read_length(body: &[u8], at: usize, width: usize) -> Result<u64, ShapeError> {
    let end = at.checked_add(width).ok_or(ShapeError::Truncated)?;
    let field = body.get(at..end).ok_or(ShapeError::Truncated)?;
    Ok(field
        .iter()
        .fold(0, |value, &byte| (value << 8) | u64::from(byte)))
}

/// The position just past `length` bytes starting at `at`, if the body holds them.
fn skip(body: &[u8], at: usize, length: u64) -> Result<usize, ShapeError> {
    usize::try_from(length)
        .ok()
        .and_then(|length| at.checked_add(length))
        .filter(|&end| end <= body.len())
        .ok_or(ShapeError::Truncated)
}

/// Check that `body` is exactly one msgpack value, without ext types, whose containers nest at most
/// `depth_max` deep and which holds at most `count_max` values in all.
///
/// A scalar on its own is always within bounds (it has no container, and it is one value), as in the
/// Python check this replaces. When several problems are present, the one met first in byte order is
/// reported.
pub fn check_shape(body: &[u8], depth_max: usize, count_max: usize) -> Result<(), ShapeError> {
    // On every platform we build for, usize fits in u64; saturate rather than assume it.
    let count_limit = u64::try_from(count_max).unwrap_or(u64::MAX);
    // Values still to come in each open container, innermost last. Each open container took at least
    // one byte and a container is pushed only while there is room below depth_max, so this capacity is
    // never exceeded and the scan allocates once.
    let mut open: Vec<u64> = Vec::with_capacity(depth_max.min(body.len()));
    // The top-level value; containers add their values as their headers are read, so the total is
    // known (and refused) before those values are scanned.
    let mut count: u64 = 1;
    let mut pos = 0;
    loop {
        let marker = *body.get(pos).ok_or(ShapeError::Truncated)?;
        pos += 1;
        match classify(marker)? {
            Marker::Scalar { payload_bytes } => pos = skip(body, pos, payload_bytes)?,
            Marker::Blob { width } => {
                let length = read_length(body, pos, width)?;
                pos = skip(body, pos + width, length)?;
            }
            Marker::Container {
                entries,
                values_per_entry,
            } => {
                if open.len() >= depth_max {
                    return Err(ShapeError::TooDeep { depth_max });
                }
                let entries = match entries {
                    Entries::Inline(entries) => entries,
                    Entries::Follows { width } => {
                        let entries = read_length(body, pos, width)?;
                        pos += width;
                        entries
                    }
                };
                // At most 2 * (2^32 - 1), so the product fits. A saturated sum exceeds every limit but
                // u64::MAX, and no body holds that many values, so saturating never wrongly accepts.
                let values = entries * values_per_entry;
                count = count.saturating_add(values);
                if count > count_limit {
                    return Err(ShapeError::TooManyValues { count_max });
                }
                if values > 0 {
                    open.push(values);
                    continue;
                }
            }
        }
        // A value just ended: count it off its container, and close every container it completes.
        loop {
            let Some(remaining) = open.last_mut() else {
                return if pos == body.len() {
                    Ok(())
                } else {
                    Err(ShapeError::TrailingBytes)
                };
            };
            *remaining -= 1;
            if *remaining > 0 {
                break;
            }
            open.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_LIMIT: usize = usize::MAX;

    fn check(body: &[u8]) -> Result<(), ShapeError> {
        check_shape(body, NO_LIMIT, NO_LIMIT)
    }

    /// `[[..[]..]]` with `depth` arrays.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut body = vec![0x91; depth - 1];
        body.push(0x90);
        body
    }

    #[test]
    fn every_scalar_form_is_accepted() {
        let scalars: &[&[u8]] = &[
            &[0x00],
            &[0x7f],
            &[0xe0],
            &[0xff],
            &[0xc0],
            &[0xc2],
            &[0xc3],
            &[0xcc, 1],
            &[0xcd, 1, 2],
            &[0xce, 1, 2, 3, 4],
            &[0xcf, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0xd0, 1],
            &[0xd1, 1, 2],
            &[0xd2, 1, 2, 3, 4],
            &[0xd3, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0xca, 1, 2, 3, 4],
            &[0xcb, 1, 2, 3, 4, 5, 6, 7, 8],
            &[0xa0],
            &[0xa3, b'a', b'b', b'c'],
            &[0xd9, 2, b'a', b'b'],
            &[0xda, 0, 1, b'a'],
            &[0xdb, 0, 0, 0, 1, b'a'],
            &[0xc4, 0],
            &[0xc5, 0, 2, 1, 2],
            &[0xc6, 0, 0, 0, 1, 9],
        ];
        for scalar in scalars {
            assert_eq!(check(scalar), Ok(()), "{scalar:02x?}");
            // A lone scalar is within any bounds, as in the Python check.
            assert_eq!(check_shape(scalar, 0, 0), Ok(()), "{scalar:02x?}");
        }
    }

    #[test]
    fn every_container_form_is_walked() {
        // {"a": [1, 2]} in each width of map and array header.
        let forms: &[&[u8]] = &[
            &[0x81, 0xa1, b'a', 0x92, 1, 2],
            &[0xde, 0, 1, 0xa1, b'a', 0xdc, 0, 2, 1, 2],
            &[0xdf, 0, 0, 0, 1, 0xa1, b'a', 0xdd, 0, 0, 0, 2, 1, 2],
        ];
        for form in forms {
            assert_eq!(check_shape(form, 2, 5), Ok(()), "{form:02x?}");
            assert_eq!(
                check_shape(form, 1, 5),
                Err(ShapeError::TooDeep { depth_max: 1 })
            );
            assert_eq!(
                check_shape(form, 2, 4),
                Err(ShapeError::TooManyValues { count_max: 4 })
            );
        }
    }

    #[test]
    fn depth_counts_containers_from_one_at_the_top() {
        for depth in 1..10 {
            let body = nested_arrays(depth);
            assert_eq!(check_shape(&body, depth, NO_LIMIT), Ok(()));
            assert_eq!(
                check_shape(&body, depth - 1, NO_LIMIT),
                Err(ShapeError::TooDeep {
                    depth_max: depth - 1
                })
            );
        }
        // Scalars inside the deepest container add no depth.
        assert_eq!(check_shape(&[0x91, 0x92, 1, 0xa0], 2, NO_LIMIT), Ok(()));
    }

    #[test]
    fn every_value_counts_once_and_map_keys_count() {
        // {"a": 1}: the map, its key and its value.
        let map = [0x81, 0xa1, b'a', 1];
        assert_eq!(check_shape(&map, 1, 3), Ok(()));
        assert_eq!(
            check_shape(&map, 1, 2),
            Err(ShapeError::TooManyValues { count_max: 2 })
        );
        // [[], {}, 7]: five values, empty containers included.
        let list = [0x93, 0x90, 0x80, 7];
        assert_eq!(check_shape(&list, 2, 4), Ok(()));
        assert_eq!(
            check_shape(&list, 2, 3),
            Err(ShapeError::TooManyValues { count_max: 3 })
        );
        // An empty top-level container is one value, like in the Python check.
        assert_eq!(
            check_shape(&[0x90], 1, 0),
            Err(ShapeError::TooManyValues { count_max: 0 })
        );
        assert_eq!(check_shape(&[0x90], 1, 1), Ok(()));
    }

    #[test]
    fn a_container_is_refused_by_its_declared_size_before_its_values_are_read() {
        // array32 of 2^32 - 1 values followed by 3 bytes: the count is refused from the header alone.
        let body = [0xdd, 0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert_eq!(
            check_shape(&body, 8, 4096),
            Err(ShapeError::TooManyValues { count_max: 4096 })
        );
        // With no count bound, the body runs out instead, after the three values present.
        assert_eq!(check(&body), Err(ShapeError::Truncated));
        // map32 of 2^32 - 1 pairs: 2 * (2^32 - 1) values must not overflow anything.
        let body = [0xdf, 0xff, 0xff, 0xff, 0xff, 0xa0];
        assert_eq!(check(&body), Err(ShapeError::Truncated));
        assert_eq!(
            check_shape(&body, 8, u32::MAX as usize),
            Err(ShapeError::TooManyValues {
                count_max: u32::MAX as usize
            })
        );
    }

    #[test]
    fn declared_lengths_beyond_the_input_are_truncation() {
        let bodies: &[&[u8]] = &[
            &[0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
            &[0xc6, 0xff, 0xff, 0xff, 0xff],
            &[0xc5, 0xff],
            &[0xa5, b'a'],
            &[0xcf, 1, 2],
            &[0xdc, 0],
        ];
        for body in bodies {
            assert_eq!(check(body), Err(ShapeError::Truncated), "{body:02x?}");
        }
    }

    #[test]
    fn every_strict_prefix_of_a_value_is_truncation() {
        let body = [
            0x83, 0xa1, b'v', 1, 0xa1, b't', 0xd9, 1, b'x', 0xa1, b'n', 0x92, 0xcd, 1, 2, 0xc4, 1,
            9,
        ];
        assert_eq!(check(&body), Ok(()));
        for end in 0..body.len() {
            assert_eq!(check(&body[..end]), Err(ShapeError::Truncated), "{end}");
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert_eq!(check(&[1, 2]), Err(ShapeError::TrailingBytes));
        assert_eq!(check(&[0x91, 1, 0xc0]), Err(ShapeError::TrailingBytes));
        assert_eq!(check(&[0x90, 0x90]), Err(ShapeError::TrailingBytes));
    }

    #[test]
    fn reserved_byte_and_ext_types_are_refused_wherever_they_sit() {
        assert_eq!(check(&[0xc1]), Err(ShapeError::ReservedByte));
        assert_eq!(check(&[0x91, 0xc1]), Err(ShapeError::ReservedByte));
        for marker in [0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8] {
            assert_eq!(check(&[marker]), Err(ShapeError::ExtType));
            assert_eq!(check(&[0x81, 0xa0, marker, 0, 0]), Err(ShapeError::ExtType));
        }
    }

    #[test]
    fn deep_input_needs_no_recursion_and_stops_at_depth_max() {
        // A million nested arrays: a recursive walk would overflow the thread's stack.
        let body = nested_arrays(1_000_000);
        assert_eq!(check(&body), Ok(()));
        assert_eq!(
            check_shape(&body, 8, NO_LIMIT),
            Err(ShapeError::TooDeep { depth_max: 8 })
        );
        assert_eq!(check(&body[..body.len() - 1]), Err(ShapeError::Truncated));
    }

    #[test]
    fn no_short_input_panics() {
        // Every input of up to two bytes, plus a third from a spread of markers, under tight and
        // loose bounds: each returns a result.
        for first in 0..=u8::MAX {
            for second in 0..=u8::MAX {
                for third in [0x00, 0x90, 0xc1, 0xdd, 0xff] {
                    let body = [first, second, third];
                    for end in 0..=body.len() {
                        let _ = check_shape(&body[..end], 1, 2);
                        let _ = check(&body[..end]);
                    }
                }
            }
        }
    }

    #[test]
    fn messages_name_the_limit() {
        assert_eq!(
            ShapeError::TooDeep { depth_max: 6 }.to_string(),
            "message nested deeper than depth_max=6"
        );
        assert_eq!(
            ShapeError::TooManyValues { count_max: 4096 }.to_string(),
            "message has more than count_max=4096 values"
        );
    }
}
