//! Record frames (peer protocol version 3): a batch of `AT` lines behind one header that says how they
//! travel, so a receiver reads the batch in one pass over its lines, without allocating per record, and
//! knows each record's mode without a byte added to the record itself.
//!
//! ```text
//!  T 00170\n                       header: T (tree) or F (flood), the payload's length in 5 digits, LF
//!  AT Bailey +0.1 kiwi ... \n      payload: whole AT lines (PROTOCOL section 2), 170 bytes in all
//!  AT Bailey +0.2 lime ... \n
//! ```
//!
//! The length is fixed-width so the sender can write the header first and fill its digits in when the
//! frame closes (at the end of the turn, or when the mode changes): records are appended straight into
//! the link's output buffer, never copied twice. The receiver counts the payload down line by line; a
//! line that would run past the frame's end is a protocol error, as is a header out of shape. Control
//! lines (`PING`, `OFF`) go between frames.

use crate::route::Mode;

/// Bytes of a header: mode, space, five digits, LF.
pub const HEADER: usize = 8;
/// The largest payload a frame carries (a sender starts a new frame past it; a receiver refuses more).
pub const MAX: usize = 64 * 1024;
const _: () = assert!(MAX <= 99_999);

/// Starts a frame of `mode` at the end of `out`, its length still zero.
pub fn open(out: &mut Vec<u8>, mode: Mode) {
    out.extend_from_slice(match mode {
        Mode::Tree => b"T 00000\n",
        Mode::Flood => b"F 00000\n",
    });
}

/// Writes the length of the frame whose header starts at `at`: everything after its header.
pub fn close(out: &mut [u8], at: usize) {
    let mut len = out.len() - at - HEADER;
    debug_assert!(len <= MAX);
    for d in out[at + 2..at + 7].iter_mut().rev() {
        *d = b'0' + (len % 10) as u8;
        len /= 10;
    }
}

/// Whether a line is meant as a frame header (its first two bytes say so).
pub fn is_header(line: &[u8]) -> bool {
    matches!(line, [b'T' | b'F', b' ', ..])
}

/// A header's mode and payload length, if it is exactly the shape `open` and `close` write, with a
/// payload of 1 to [`MAX`] bytes.
pub fn parse_header(line: &[u8]) -> Option<(Mode, usize)> {
    let [m, b' ', digits @ .., b'\n'] = line else { return None };
    let mode = match m {
        b'T' => Mode::Tree,
        b'F' => Mode::Flood,
        _ => return None,
    };
    if digits.len() != 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = digits.iter().fold(0usize, |n, d| n * 10 + (d - b'0') as usize);
    (1..=MAX).contains(&len).then_some((mode, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_frame_states_its_payload_length_in_five_digits() {
        let mut out = b"PING\n".to_vec();
        open(&mut out, Mode::Tree);
        out.extend_from_slice(b"AT A +0.1 k +1+1 1\n");
        close(&mut out, 5);
        assert_eq!(&out[5..13], b"T 00019\n");
        assert_eq!(parse_header(&out[5..13]), Some((Mode::Tree, 19)));
    }

    #[test]
    fn only_headers_of_the_exact_shape_and_a_bounded_length_are_read() {
        type Row = (&'static [u8], Option<(Mode, usize)>);
        let table: [Row; 9] = [
            (b"F 65536\n", Some((Mode::Flood, 65536))),
            (b"F 65537\n", None),
            (b"T 00000\n", None),
            (b"T 00001\n", Some((Mode::Tree, 1))),
            (b"T 1\n", None),
            (b"T 000001\n", None),
            (b"T 0000a\n", None),
            (b"X 00010\n", None),
            (b"T 00010", None),
        ];
        for (line, want) in table {
            assert_eq!(parse_header(line), want, "{}", String::from_utf8_lossy(line));
        }
        assert!(is_header(b"T 1\n") && !is_header(b"AT A ...\n") && !is_header(b"PING\n"));
    }
}
