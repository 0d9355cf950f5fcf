//! What a compiler child tells its parent on stderr: one structured line,
//! `perch-compile-reason: MESSAGE`, the reason an uploader may be shown.
//! Anything else the child writes (a panic, an allocator's abort message,
//! output of a program that is not Perch at all) is for the server log only.
use std::io::Read;

/// Starts the one line of a child's stderr the parent reads as the reason.
pub(crate) const REASON_PREFIX: &str = "perch-compile-reason: ";
/// Longest reason kept, in bytes (a reason is shown to the uploader).
pub(crate) const MAX_REASON: usize = 1024;
/// Bytes of the child's other output kept for the server log.
const OTHER_CAP: usize = 16 * 1024;

/// `message` as one line of printable ASCII of at most [`MAX_REASON`]
/// bytes: other characters become `?`, line breaks and tabs spaces, and a
/// longer message is cut, ending in `...`.
pub(crate) fn bounded(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_REASON));
    for c in message.trim().chars() {
        if out.len() == MAX_REASON {
            out.truncate(MAX_REASON - 3);
            out.push_str("...");
            break;
        }
        out.push(match c {
            ' '..='~' => c,
            '\n' | '\r' | '\t' => ' ',
            _ => '?',
        });
    }
    out
}

/// The line a child writes to report `message` (without a line break).
pub(crate) fn reason_line(message: &str) -> String {
    format!("{REASON_PREFIX}{}", bounded(message))
}

/// What a child wrote to stderr, read to its end (so the child never blocks
/// on a full pipe) in bounded memory.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ChildReport {
    /// The last reason line's message, bounded.
    pub(crate) reason: Option<String>,
    /// The first bytes of everything else, for the server log.
    pub(crate) other: String,
    /// Bytes of other output beyond `other`'s cap.
    pub(crate) dropped: u64,
}

impl ChildReport {
    /// Reads `pipe` to its end.
    pub(crate) fn read(mut pipe: impl Read) -> ChildReport {
        let mut report = ChildReport::default();
        let mut other = Vec::new();
        // The line being read, up to a reason line's length (the rest of a
        // longer line is counted, not kept).
        let mut line = Vec::new();
        let mut line_len = 0usize;
        let keep = REASON_PREFIX.len() + MAX_REASON * 4;
        let mut end_line = |line: &mut Vec<u8>, line_len: &mut usize, report: &mut ChildReport| {
            let text = String::from_utf8_lossy(line);
            match text.strip_prefix(REASON_PREFIX) {
                Some(reason) => report.reason = Some(bounded(reason)),
                None => {
                    let room = OTHER_CAP.saturating_sub(other.len());
                    let take = line.len().min(room);
                    other.extend_from_slice(&line[..take]);
                    if take < room {
                        other.push(b'\n');
                    }
                    report.dropped += (*line_len - take) as u64;
                }
            }
            line.clear();
            *line_len = 0;
        };
        let mut buf = [0u8; 8192];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    end_line(&mut line, &mut line_len, &mut report);
                } else {
                    line_len += 1;
                    if line.len() < keep {
                        line.push(b);
                    }
                }
            }
        }
        if line_len > 0 {
            end_line(&mut line, &mut line_len, &mut report);
        }
        report.other = String::from_utf8_lossy(&other).trim_end().to_string();
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_printable_line() {
        assert_eq!(
            bounded("  bad\tmagic\r\nat 0\x1b[31m é "),
            "bad magic  at 0?[31m ?"
        );
        let long = bounded(&"y".repeat(5000));
        assert_eq!(long.len(), MAX_REASON);
        assert!(long.ends_with("..."));
        assert_eq!(bounded(&"z".repeat(MAX_REASON)).len(), MAX_REASON);
        assert_eq!(reason_line("a\nb"), "perch-compile-reason: a b");
    }

    #[test]
    fn the_last_reason_line_is_kept_and_the_rest_bounded() {
        let mut input = b"junk before\n".to_vec();
        input.extend_from_slice(b"perch-compile-reason: first\n");
        input.extend(std::iter::repeat_n(b'j', 100_000));
        input.extend_from_slice(b"\nperch-compile-reason: the real reason\x07\ntrailing");
        let report = ChildReport::read(&input[..]);
        assert_eq!(report.reason.as_deref(), Some("the real reason?"));
        assert!(
            report.other.starts_with("junk before\njjj"),
            "{}",
            report.other
        );
        assert!(report.other.len() <= OTHER_CAP);
        assert!(report.dropped > 80_000, "{}", report.dropped);

        let report = ChildReport::read(&b"no reason here\n"[..]);
        assert_eq!(report.reason, None);
        assert_eq!(report.other, "no reason here");
    }
}
