//! Reading the fields of a stored text. A stored text is an `AT` line without its `AT ` and its LF:
//! `server time-diff id location time`, five fields between single spaces (validated before it was stored).

use crate::protocol::AtFields;
use memchr::{memchr, memrchr};

/// The client id of a stored text: its third field.
#[inline]
pub(super) fn id_in(body: &[u8]) -> &[u8] {
    let mut start = 0;
    for _ in 0..2 {
        start += memchr(b' ', &body[start..]).expect("a stored line has six fields") + 1;
    }
    let end = start + memchr(b' ', &body[start..]).expect("a stored line has six fields");
    &body[start..end]
}

/// The client time of a stored text: its last field.
#[inline]
pub(super) fn time_in(body: &[u8]) -> &[u8] {
    &body[memrchr(b' ', body).expect("a stored line has six fields") + 1..]
}

/// The fields of a stored text, as ranges into it.
pub(super) fn fields_in(body: &[u8]) -> AtFields {
    let mut spaces = [0u32; 4];
    let mut at = 0;
    for s in &mut spaces {
        at += memchr(b' ', &body[at..]).expect("a stored line has six fields");
        *s = at as u32;
        at += 1;
    }
    AtFields {
        server: (0, spaces[0]),
        client_id: (spaces[1] + 1, spaces[2]),
        location: (spaces[2] + 1, spaces[3]),
        client_time: (spaces[3] + 1, body.len() as u32),
    }
}
