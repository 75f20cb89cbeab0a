//! Reading newline-terminated lines with a length cap.
//!
//! Both ends of the control socket, and `p2pctl send` reading stdin, need a
//! line reader that never buffers an unbounded line: an oversized line is
//! skipped to its newline and reported, and the stream stays usable.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What [`read_line_capped`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line is in the buffer, without its `\n`. The last line of a stream
    /// counts even without a final newline.
    Line,
    /// The line was longer than the cap; it was consumed and discarded.
    TooLong,
    /// End of stream, nothing read.
    Eof,
}

/// Reads one line into `buf` (cleared first), keeping at most `cap` bytes.
pub async fn read_line_capped<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    cap: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    let mut read_any = false;
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => LineRead::Eof,
                (true, true) => LineRead::TooLong,
                (true, false) => LineRead::Line,
            });
        }
        read_any = true;
        let (chunk, used, done) = match memchr(available) {
            Some(i) => (&available[..i], i + 1, true),
            None => (available, available.len(), false),
        };
        if !too_long {
            if buf.len() + chunk.len() > cap {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        if done {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

fn memchr(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn caps_and_recovers() {
        let input = b"short\nwaaaaaaaaaaaay too long\nok\nlast".to_vec();
        let mut r = BufReader::with_capacity(4, &input[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line_capped(&mut r, &mut buf, 8).await.unwrap() {
                LineRead::Eof => break,
                LineRead::TooLong => got.push("<too long>".to_string()),
                LineRead::Line => got.push(String::from_utf8(buf.clone()).unwrap()),
            }
        }
        assert_eq!(got, ["short", "<too long>", "ok", "last"]);
    }

    #[tokio::test]
    async fn exactly_the_cap_fits() {
        let mut r = BufReader::new(&b"12345678\n"[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_line_capped(&mut r, &mut buf, 8).await.unwrap(),
            LineRead::Line
        );
        assert_eq!(buf, b"12345678");
    }
}
