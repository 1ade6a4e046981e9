//! The bytes of a journal file, and nothing else: no I/O here, so every decision about a torn or corrupt
//! file can be tested on a byte slice.
//!
//! A file is an 8-byte magic followed by entries:
//!
//! ```text
//!   "HERDJNL1"
//!   [len u32 LE][crc u32 LE][seq u64 LE][len bytes: one AT line, final LF included] ...
//! ```
//!
//! `crc` is CRC-32 (IEEE, the `crc32fast` crate) over `len`, `seq` and the payload, so a flipped bit in the
//! length or the sequence number is caught as surely as one in the line. A length is never trusted before its
//! entry's CRC has been checked: a corrupt length simply makes the entry fail its CRC or run past the end.

/// First bytes of every journal file (segment or snapshot): version 1 of this format.
pub const MAGIC: &[u8; 8] = b"HERDJNL1";
/// `len`, `crc` and `seq`.
pub const HEADER: usize = 16;
/// No record line comes near this; a larger `len` is corruption, and rejecting it early keeps the scan for
/// valid entries after a bad one cheap.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Appends one entry for `payload` stored at `seq`, CRC included.
#[cfg(test)]
pub fn encode(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    let start = out.len();
    encode_unsealed(out, seq, payload);
    seal(&mut out[start..]);
}

/// Appends one entry for `payload` stored at `seq` with its CRC left zero, for `seal` to fill in later on
/// another thread: the loop thread only copies (the line is copied once), and the CRC, the larger part of
/// an entry's cost, is computed by the journal's writer thread, off the loop.
pub fn encode_unsealed(out: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    debug_assert!(!payload.is_empty() && payload.len() <= MAX_PAYLOAD);
    out.reserve(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(payload);
}

/// Fills in the CRC of every entry in `entries`, whole entries made by `encode_unsealed` (or `encode`: the
/// CRC field is not part of what it covers, so sealing twice changes nothing). Each CRC is computed over
/// the bytes as they lie (`seq` and the payload are adjacent in an entry), in two calls.
pub fn seal(entries: &mut [u8]) {
    let mut at = 0;
    while at < entries.len() {
        let len = u32::from_le_bytes(entries[at..at + 4].try_into().expect("4 bytes")) as usize;
        let end = at + HEADER + len;
        let crc = checksum(&entries[at..at + 4], &entries[at + 8..end]);
        entries[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

/// CRC-32 of an entry: over its length field, then its seq and payload (adjacent in an entry).
fn checksum(len: &[u8], seq_and_payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(seq_and_payload);
    h.finalize()
}

/// What lies at one position of a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A whole entry that passes its CRC; the next one starts at `next`.
    Good { seq: u64, payload: &'a [u8], next: usize },
    /// The bytes end before the entry does: all of it may yet arrive (a chunked read) or it was torn.
    Short,
    /// Not an entry: impossible length or a CRC mismatch.
    Bad,
}

/// Decodes the entry starting at `at` in `bytes`.
pub fn decode(bytes: &[u8], at: usize) -> Entry<'_> {
    let Some(head) = bytes.get(at..at + HEADER) else { return Entry::Short };
    let len_bytes: [u8; 4] = head[0..4].try_into().expect("4 bytes");
    let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
    let seq_bytes: [u8; 8] = head[8..16].try_into().expect("8 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Entry::Bad;
    }
    let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else { return Entry::Short };
    if checksum(&len_bytes, &bytes[at + 8..at + HEADER + len]) != crc {
        return Entry::Bad;
    }
    Entry::Good { seq: u64::from_le_bytes(seq_bytes), payload, next: at + HEADER + len }
}

/// Whether any valid entry starts anywhere in `bytes` at or after `from`: tells corruption in the middle (a
/// bad entry with good ones after it) from a torn or corrupt tail (nothing good after it). Every byte offset
/// is tried, since a corrupt length says nothing about where the next entry starts; an offset whose length
/// is impossible is rejected before any CRC is computed.
pub fn any_good_after(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(HEADER - 1)).find(|&at| matches!(decode(bytes, at), Entry::Good { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_every_single_bit_flip_is_caught() {
        let mut bytes = Vec::new();
        encode(&mut bytes, 7, b"AT Bona +0.1 kiwi +1+1 5\n");
        assert_eq!(
            decode(&bytes, 0),
            Entry::Good { seq: 7, payload: b"AT Bona +0.1 kiwi +1+1 5\n", next: bytes.len() }
        );
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            // A flip in the length may make the entry look longer than the bytes: Short, never Good.
            assert!(!matches!(decode(&flipped, 0), Entry::Good { .. }), "bit {bit}");
        }
    }

    #[test]
    fn sealed_later_is_the_same_as_encoded_with_its_crc() {
        let (mut sealed, mut encoded) = (Vec::new(), Vec::new());
        for (seq, line) in [(1, &b"AT a\n"[..]), (2, b"AT Bona +0.1 kiwi +1+1 5\n"), (u64::MAX, b"x\n")] {
            encode_unsealed(&mut sealed, seq, line);
            encode(&mut encoded, seq, line);
        }
        assert!(matches!(decode(&sealed, 0), Entry::Bad), "an unsealed entry is not a good one");
        seal(&mut sealed);
        assert_eq!(sealed, encoded);
        seal(&mut sealed);
        assert_eq!(sealed, encoded, "sealing twice changes nothing");
        // The CRC is the IEEE CRC-32 of length, seq and line (crc32fast::hash over the bytes put together).
        let whole: Vec<u8> = [&encoded[0..4], &encoded[8..16], b"AT a\n"].concat();
        assert_eq!(&encoded[4..8], &crc32fast::hash(&whole).to_le_bytes());
    }

    #[test]
    fn a_prefix_is_short_and_an_impossible_length_is_bad() {
        let mut bytes = Vec::new();
        encode(&mut bytes, 1, b"x\n");
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], 0), Entry::Short, "cut at {cut}");
        }
        assert_eq!(decode(&[0u8; 32], 0), Entry::Bad, "zeros (a preallocated tail) are not an entry");
        let mut huge = bytes.clone();
        huge[0..4].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_le_bytes());
        assert_eq!(decode(&huge, 0), Entry::Bad);
    }

    #[test]
    fn the_scan_finds_the_next_good_entry_after_garbage() {
        let mut bytes = vec![0xAB; 13];
        let second = bytes.len();
        encode(&mut bytes, 2, b"AT two\n");
        assert_eq!(any_good_after(&bytes, 0), Some(second));
        assert_eq!(any_good_after(&bytes, second + 1), None);
    }
}
