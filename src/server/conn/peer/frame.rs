//! Record frames (peer protocol version 3): a batch of `AT` lines behind one header that says how they
//! travel, so a receiver reads the batch in one pass over its lines, without allocating per record, and
//! knows each record's mode without a byte added to the record itself. Version 4 adds notice frames.
//!
//! ```text
//!  T 00170\n                       header: T (tree) or F (flood), the payload's length in 5 digits, LF
//!  AT Bailey +0.1 kiwi ... \n      payload: whole AT lines (PROTOCOL section 2), 170 bytes in all
//!  AT Bailey +0.2 lime ... \n
//!  R 00085\n                       a repair frame (`route::Mode::Repair`): the same, passed on once
//!  AT Bailey +0.1 kiwi ... \n
//!  N 00026\n                       a notice frame (version 4, `route::Mode::Notice`): not the records,
//!  kiwi 1479413884.392014450\n     only which ones (client id, client time) the receiver holds already
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

/// A frame being filled at the end of a link's output: its mode and where its header starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub mode: Mode,
    at: usize,
}

impl Open {
    /// Whether a record of `mode` and `len` bytes may join this frame.
    pub fn takes(&self, mode: Mode, len: usize, out_len: usize) -> bool {
        self.mode == mode && out_len - self.at - HEADER + len <= MAX
    }
}

/// Starts a frame of `mode` at the end of `out`, its length still zero.
pub fn open(out: &mut Vec<u8>, mode: Mode) -> Open {
    let at = out.len();
    out.extend_from_slice(match mode {
        Mode::Tree => b"T 00000\n",
        Mode::Flood => b"F 00000\n",
        Mode::Repair => b"R 00000\n",
        Mode::Notice => b"N 00000\n",
    });
    Open { mode, at }
}

/// Writes the frame's length into its header: everything after the header.
pub fn close(out: &mut [u8], frame: &Open) {
    let mut len = out.len() - frame.at - HEADER;
    debug_assert!(len <= MAX);
    for d in out[frame.at + 2..frame.at + 7].iter_mut().rev() {
        *d = b'0' + (len % 10) as u8;
        len /= 10;
    }
}

/// Whether a line is meant as a frame header (its first two bytes say so).
pub fn is_header(line: &[u8]) -> bool {
    matches!(line, [b'T' | b'F' | b'R' | b'N', b' ', ..])
}

/// A header's mode and payload length, if it is exactly the shape `open` and `close` write, with a
/// payload of 1 to [`MAX`] bytes.
pub fn parse_header(line: &[u8]) -> Option<(Mode, usize)> {
    let [m, b' ', digits @ .., b'\n'] = line else { return None };
    let mode = match m {
        b'T' => Mode::Tree,
        b'F' => Mode::Flood,
        b'R' => Mode::Repair,
        b'N' => Mode::Notice,
        _ => return None,
    };
    if digits.len() != 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let len = digits.iter().fold(0usize, |n, d| n * 10 + (d - b'0') as usize);
    (1..=MAX).contains(&len).then_some((mode, len))
}

/// Appends the notice of an `AT` line (its client id and client time, the fields that name one version
/// of one client's record): `kiwi 1479413884.392014450\n`. Returns false, writing nothing, for a line
/// without the six fields of an `AT` line.
pub fn write_notice(out: &mut Vec<u8>, at_line: &[u8]) -> bool {
    let line = at_line.strip_suffix(b"\n").unwrap_or(at_line);
    let mut fields = line.split(|&b| b == b' ');
    let (Some(_at), Some(_server), Some(_diff), Some(id), Some(_location), Some(time), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return false;
    };
    out.extend_from_slice(id);
    out.push(b' ');
    out.extend_from_slice(time);
    out.push(b'\n');
    true
}

/// The client id and client time of a notice line (LF included), if it has exactly that shape: two
/// non-empty fields, one space between them.
pub fn parse_notice(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let text = line.strip_suffix(b"\n")?;
    let space = memchr::memchr(b' ', text)?;
    let (id, time) = (&text[..space], &text[space + 1..]);
    (!id.is_empty() && !time.is_empty() && !time.contains(&b' ')).then_some((id, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_frame_states_its_payload_length_in_five_digits() {
        let mut out = b"PING\n".to_vec();
        let frame = open(&mut out, Mode::Tree);
        out.extend_from_slice(b"AT A +0.1 k +1+1 1\n");
        close(&mut out, &frame);
        assert_eq!(&out[5..13], b"T 00019\n");
        assert_eq!(parse_header(&out[5..13]), Some((Mode::Tree, 19)));
        assert!(frame.takes(Mode::Tree, MAX - 19, out.len()) && !frame.takes(Mode::Tree, MAX - 18, out.len()));
        assert!(!frame.takes(Mode::Repair, 10, out.len()));
    }

    #[test]
    fn only_headers_of_the_exact_shape_and_a_bounded_length_are_read() {
        type Row = (&'static [u8], Option<(Mode, usize)>);
        let table: [Row; 12] = [
            (b"F 65536\n", Some((Mode::Flood, 65536))),
            (b"F 65537\n", None),
            (b"T 00000\n", None),
            (b"T 00001\n", Some((Mode::Tree, 1))),
            (b"R 00010\n", Some((Mode::Repair, 10))),
            (b"N 00026\n", Some((Mode::Notice, 26))),
            (b"T 1\n", None),
            (b"T 000001\n", None),
            (b"T 0000a\n", None),
            (b"X 00010\n", None),
            (b"T 00010", None),
            (b"R 00010 1 2 3\n", None),
        ];
        for (line, want) in table {
            assert_eq!(parse_header(line), want, "{}", String::from_utf8_lossy(line));
        }
        assert!(is_header(b"T 1\n") && is_header(b"R 1\n") && !is_header(b"AT A ...\n") && !is_header(b"PING\n"));
        assert!(is_header(b"N 1\n") && !is_header(b"NO\n"));
    }

    /// A notice names a record by its client id and client time (PROTOCOL section 2's fields 4 and 6 of an
    /// AT line), and only lines of exactly that shape are read back.
    #[test]
    fn a_notice_is_the_client_id_and_client_time_of_its_record() {
        let mut out = Vec::new();
        assert!(write_notice(
            &mut out,
            b"AT Bailey +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1479413884.392014450\n"
        ));
        assert_eq!(out, b"kiwi.cs.ucla.edu 1479413884.392014450\n");
        assert_eq!(parse_notice(&out), Some((&b"kiwi.cs.ucla.edu"[..], &b"1479413884.392014450"[..])));
        assert!(!write_notice(&mut out, b"AT Bailey +0.2 kiwi +1+1\n") && !write_notice(&mut out, b"AT a b c d e f\n"));
        assert_eq!(out.len(), 38, "nothing written for a line of the wrong shape");
        for bad in [&b"kiwi\n"[..], b" 1\n", b"kiwi \n", b"kiwi 1 2\n", b"kiwi 1"] {
            assert_eq!(parse_notice(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
