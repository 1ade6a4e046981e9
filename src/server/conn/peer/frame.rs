//! Record frames (peer protocol version 3): a batch of `AT` lines behind one header that says how they
//! travel, so a receiver reads the batch in one pass over its lines, without allocating per record, and
//! knows each record's mode without a byte added to the record itself.
//!
//! ```text
//!  T 00170\n                       header: T (tree) or F (flood), the payload's length in 5 digits, LF
//!  AT Bailey +0.1 kiwi ... \n      payload: whole AT lines (PROTOCOL section 2), 170 bytes in all
//!  AT Bailey +0.2 lime ... \n
//!  R 00085 0 3 1200\n              a repair frame: also the repairing server's index, its repair number
//!  AT Bailey +0.1 kiwi ... \n      and the index of the first record (the next ones count up from it)
//! ```
//!
//! The length is fixed-width so the sender can write the header first and fill its digits in when the
//! frame closes (at the end of the turn, or when the mode changes): records are appended straight into
//! the link's output buffer, never copied twice. The receiver counts the payload down line by line; a
//! line that would run past the frame's end is a protocol error, as is a header out of shape. Control
//! lines (`PING`, `OFF`) go between frames.

use crate::route::{Mode, Repair};

/// The largest payload a frame carries (a sender starts a new frame past it; a receiver refuses more).
pub const MAX: usize = 64 * 1024;
const _: () = assert!(MAX <= 99_999);

/// A frame being filled at the end of a link's output: where its header and its payload start, its
/// mode (for a repair, the identity of the record that would come next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open {
    pub mode: Mode,
    at: usize,
    payload: usize,
}

impl Open {
    /// Whether a record of `mode` and `len` bytes may join this frame.
    pub fn takes(&self, mode: Mode, len: usize, out_len: usize) -> bool {
        self.mode == mode && out_len - self.payload + len <= MAX
    }

    /// A record joined: a repair frame's next record is the following index.
    pub fn joined(&mut self) {
        if let Mode::Repair(r) = &mut self.mode {
            r.index += 1;
        }
    }
}

/// Starts a frame of `mode` at the end of `out`, its length still zero. For a repair, `mode` names the
/// first record's identity.
pub fn open(out: &mut Vec<u8>, mode: Mode) -> Open {
    let at = out.len();
    match mode {
        Mode::Tree => out.extend_from_slice(b"T 00000\n"),
        Mode::Flood => out.extend_from_slice(b"F 00000\n"),
        Mode::Repair(r) => {
            use std::io::Write;
            let _ = writeln!(out, "R 00000 {} {} {}", r.server, r.number, r.index);
        }
    }
    Open { mode, at, payload: out.len() }
}

/// Writes the frame's length into its header: everything after the header.
pub fn close(out: &mut [u8], frame: &Open) {
    let mut len = out.len() - frame.payload;
    debug_assert!(len <= MAX);
    for d in out[frame.at + 2..frame.at + 7].iter_mut().rev() {
        *d = b'0' + (len % 10) as u8;
        len /= 10;
    }
}

/// Whether a line is meant as a frame header (its first two bytes say so).
pub fn is_header(line: &[u8]) -> bool {
    matches!(line, [b'T' | b'F' | b'R', b' ', ..])
}

/// A header's mode (for a repair, its first record's identity) and payload length, if it is exactly
/// the shape `open` and `close` write, with a payload of 1 to [`MAX`] bytes.
pub fn parse_header(line: &[u8]) -> Option<(Mode, usize)> {
    let text = std::str::from_utf8(line.strip_suffix(b"\n")?).ok()?;
    let mut parts = text.split(' ');
    let (kind, digits) = (parts.next()?, parts.next()?);
    if digits.len() != 5 || !digits.bytes().all(|d| d.is_ascii_digit()) {
        return None;
    }
    let len: usize = digits.parse().ok()?;
    let mut number = || -> Option<u32> {
        let n = parts.next()?;
        // Canonical decimals only: one spelling per value.
        (!n.is_empty() && n.len() <= 10 && n.bytes().all(|d| d.is_ascii_digit()) && (n == "0" || !n.starts_with('0')))
            .then(|| n.parse().ok())
            .flatten()
    };
    let mode = match kind {
        "T" => Mode::Tree,
        "F" => Mode::Flood,
        "R" => Mode::Repair(Repair { server: number()?, number: number()?, index: number()? }),
        _ => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    (1..=MAX).contains(&len).then_some((mode, len))
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
        let repair = Mode::Repair(Repair { server: 3, number: 7, index: 1200 });
        let mut out = Vec::new();
        let mut frame = open(&mut out, repair);
        out.extend_from_slice(b"AT A +0.1 k +1+1 1\n");
        frame.joined();
        close(&mut out, &frame);
        assert_eq!(&out[..17], b"R 00019 3 7 1200\n");
        assert_eq!(parse_header(&out[..17]), Some((repair, 19)), "the header names the first record");
        assert!(frame.takes(Mode::Repair(Repair { server: 3, number: 7, index: 1201 }), 10, out.len()));
        assert!(!frame.takes(repair, 10, out.len()), "the next record of the repair, not the first again");
    }

    #[test]
    fn only_headers_of_the_exact_shape_and_a_bounded_length_are_read() {
        type Row = (&'static [u8], Option<(Mode, usize)>);
        let r = |server, number, index| Mode::Repair(Repair { server, number, index });
        let table: [Row; 15] = [
            (b"F 65536\n", Some((Mode::Flood, 65536))),
            (b"F 65537\n", None),
            (b"T 00000\n", None),
            (b"T 00001\n", Some((Mode::Tree, 1))),
            (b"T 1\n", None),
            (b"T 000001\n", None),
            (b"T 0000a\n", None),
            (b"X 00010\n", None),
            (b"T 00010", None),
            (b"T 00010 5\n", None),
            (b"R 00010 1 2 3\n", Some((r(1, 2, 3), 10))),
            (b"R 00010 1 2\n", None),
            (b"R 00010 1 2 03\n", None),
            (b"R 00010 1 2 4294967296\n", None),
            (b"R 00010 1 2 3 4\n", None),
        ];
        for (line, want) in table {
            assert_eq!(parse_header(line), want, "{}", String::from_utf8_lossy(line));
        }
        assert!(is_header(b"T 1\n") && is_header(b"R 1\n") && !is_header(b"AT A ...\n") && !is_header(b"PING\n"));
    }
}
