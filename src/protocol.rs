//! The client protocol of PROTOCOL.md sections 2 to 4: parsing commands and formatting replies.
//!
//! Pure functions over byte slices: no I/O, no clock (the caller passes the time in), no allocation
//! except into the output buffer the caller hands in. Everything here is exact: coordinates and times are
//! validated and compared as decimal text, and the time difference is computed in integer nanoseconds.

use std::cmp::Ordering;

/// The six whitespace bytes of the protocol: SP, HT, LF, VT, FF, CR.
#[inline]
pub fn is_whitespace(b: u8) -> bool {
    WHITESPACE[usize::from(b)]
}

/// One load per byte instead of six comparisons: the field splitter's inner loop.
static WHITESPACE: [bool; 256] = {
    let mut t = [false; 256];
    t[b' ' as usize] = true;
    t[b'\t' as usize] = true;
    t[b'\n' as usize] = true;
    t[0x0b] = true;
    t[0x0c] = true;
    t[b'\r' as usize] = true;
    t
};

/// Iterator over the fields of a command: the runs of non-whitespace bytes.
#[derive(Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    pub fn new(line: &'a [u8]) -> Self {
        Fields { rest: line }
    }

    /// What is left after the fields taken so far.
    pub fn clone_rest(&self) -> &'a [u8] {
        self.rest
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|&b| !is_whitespace(b))?;
        let rest = &self.rest[start..];
        let len = rest.iter().position(|&b| is_whitespace(b)).unwrap_or(rest.len());
        self.rest = &rest[len..];
        Some(&rest[..len])
    }
}

/// Longest client id, in bytes (PROTOCOL section 2).
pub const MAX_CLIENT_ID: usize = 255;
/// Longest location, in bytes.
pub const MAX_LOCATION: usize = 64;
/// Longest client time, in bytes.
pub const MAX_CLIENT_TIME: usize = 40;
/// Longest time difference in an `AT` line: a sign, ten integer digits, the point and nine digits. A client
/// time no later than the clock plus the allowed skew, and no earlier than the epoch, always fits.
pub const MAX_TIME_DIFF: usize = 21;
/// Longest server name (the config refuses longer ones).
pub const MAX_SERVER_NAME: usize = 64;
/// Longest `AT` line a server can ever store or send, final LF included: the sum of the field bounds.
/// Every record is at most this long by construction, so a peer that accepts lines this long accepts every
/// record of the herd.
pub const MAX_AT_LINE: usize = "AT ".len()
    + MAX_SERVER_NAME
    + 1
    + MAX_TIME_DIFF
    + 1
    + MAX_CLIENT_ID
    + 1
    + MAX_LOCATION
    + 1
    + MAX_CLIENT_TIME
    + "\n".len();
/// Largest WHATSAT bound.
pub const MAX_BOUND: u8 = 20;

/// One parsed client command. The slices borrow from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// No fields at all: ignored, no reply.
    Blank,
    IAmAt(IAmAt<'a>),
    WhatsAt(WhatsAt<'a>),
    /// Anything else: answered with `? <line>`.
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IAmAt<'a> {
    pub client_id: &'a [u8],
    pub location: &'a [u8],
    pub client_time: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhatsAt<'a> {
    pub client_id: &'a [u8],
    /// The radius in kilometres as the client wrote it (DIGITS or DIGITS.DIGITS, in (0, 50]).
    pub radius_km: &'a [u8],
    pub bound: u8,
}

/// Parses one command: `line` is the bytes before the LF (a CR before it is whitespace anyway).
pub fn parse_command(line: &[u8]) -> Command<'_> {
    match scan_iamat(line) {
        Some(cmd) => Command::IAmAt(cmd),
        None => parse_command_by_field(line),
    }
}

/// The fast path of [`parse_command`] for the command a server answers most: `IAMAT` and its three
/// fields separated by single spaces, nothing before or after, read in one pass (see [`scan_at`]).
/// Accepts only what [`parse_command_by_field`] parses as that `IAMAT`, with the same fields; anything
/// else (other whitespace, a bad field) is left to it. (`tests/protocol_props.rs` checks the two
/// against each other.)
#[inline]
pub fn scan_iamat(line: &[u8]) -> Option<IAmAt<'_>> {
    let mut at = Scan { s: line.strip_prefix(b"IAMAT ")?, i: 0 };
    let id = at.name(MAX_CLIENT_ID)?;
    at.space()?;
    let location = at.location()?;
    at.space()?;
    let time = at.time_to_end()?;
    let field = |(a, b): (u32, u32)| &at.s[a as usize..b as usize];
    Some(IAmAt { client_id: field(id), location: field(location), client_time: field(time) })
}

/// [`parse_command`] field by field: splits the line at any whitespace, then checks the fields of the
/// verb it names. The reference for [`scan_iamat`], and every other command's parser.
pub fn parse_command_by_field(line: &[u8]) -> Command<'_> {
    let mut fields = Fields::new(line);
    let Some(verb) = fields.next() else {
        return Command::Blank;
    };
    let (Some(a), Some(b), Some(c), None) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
        return Command::Invalid;
    };
    match verb {
        b"IAMAT" if valid_client_id(a) && parse_location(b).is_some() && valid_time(c) => {
            Command::IAmAt(IAmAt { client_id: a, location: b, client_time: c })
        }
        b"WHATSAT" if valid_client_id(a) && valid_radius(b) => match parse_bound(c) {
            Some(bound) => Command::WhatsAt(WhatsAt { client_id: a, radius_km: b, bound }),
            None => Command::Invalid,
        },
        _ => Command::Invalid,
    }
}

/// 1 to 255 bytes, none of them whitespace or a control byte (0x00-0x1F, 0x7F): an id is echoed into
/// replies, records and logs, so it must not be able to carry terminal escapes or line breaks.
#[inline]
fn valid_client_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_CLIENT_ID && id.iter().all(|&b| b > b' ' && b != 0x7f)
}

/// A decimal number split at its point: `int` is DIGITS, `frac` is empty or DIGITS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal<'a> {
    pub int: &'a [u8],
    pub frac: &'a [u8],
}

/// Parses `DIGITS` or `DIGITS.DIGITS` (no sign, no exponent, digits on both sides of a point).
#[inline]
pub fn parse_decimal(s: &[u8]) -> Option<Decimal<'_>> {
    let (int, frac) = match s.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let (int, frac) = (&s[..dot], &s[dot + 1..]);
            if frac.is_empty() {
                return None;
            }
            (int, frac)
        }
        None => (s, &s[s.len()..]),
    };
    if int.is_empty() || !int.iter().all(u8::is_ascii_digit) || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(Decimal { int, frac })
}

impl Decimal<'_> {
    /// The integer part without leading zeros (empty for zero).
    fn int_trimmed(&self) -> &[u8] {
        let zeros = self.int.iter().take_while(|&&b| b == b'0').count();
        &self.int[zeros..]
    }

    /// The fraction without trailing zeros (empty for a whole number).
    fn frac_trimmed(&self) -> &[u8] {
        let zeros = self.frac.iter().rev().take_while(|&&b| b == b'0').count();
        &self.frac[..self.frac.len() - zeros]
    }

    fn is_zero(&self) -> bool {
        self.int_trimmed().is_empty() && self.frac_trimmed().is_empty()
    }

    /// Exact comparison of two decimals of any length: `.5` and `.50` are equal.
    pub fn cmp_exact(&self, other: &Decimal<'_>) -> Ordering {
        let (a, b) = (self.int_trimmed(), other.int_trimmed());
        a.len()
            .cmp(&b.len())
            .then_with(|| a.cmp(b))
            // With trailing zeros gone, digit strings compare as fractions do: "05" < "5" < "51".
            .then_with(|| self.frac_trimmed().cmp(other.frac_trimmed()))
    }

    /// Whether this decimal is at most `limit` (a small whole number such as 90 or 180).
    fn at_most(&self, limit: u32) -> bool {
        let int = self.int_trimmed();
        if int.len() > 9 {
            return false;
        }
        let value = int.iter().fold(0u32, |v, &d| v * 10 + u32::from(d - b'0'));
        value < limit || (value == limit && self.frac_trimmed().is_empty())
    }
}

/// The client-time grammar: DIGITS or DIGITS.DIGITS, at most [`MAX_CLIENT_TIME`] bytes.
#[inline]
pub fn valid_time(s: &[u8]) -> bool {
    s.len() <= MAX_CLIENT_TIME && parse_decimal(s).is_some()
}

/// Whether the client time `t` (which satisfies [`valid_time`]) is at most `limit`, compared exactly: a
/// client may not pin its record with a time from the far future (`limits.max_clock_skew_s`).
pub fn time_at_most(t: &[u8], limit: Timestamp) -> bool {
    let Some(t) = TimeValue::parse(t) else { return false };
    // Whole seconds first: the fraction matters only on equal seconds, which is one request in a billion
    // for a real clock. Digits past the ninth make `t` a little more than its nanoseconds.
    if t.secs != limit.secs {
        return t.secs < limit.secs;
    }
    t.nanos < limit.nanos || (t.nanos == limit.nanos && !t.beyond)
}

/// A client time's value, read in one pass over its text: the whole seconds (saturating at `u64::MAX`,
/// far past any clock), the first nine fraction digits as nanoseconds, and whether a digit past the ninth
/// is not zero (the time is then a little more than `secs.nanos`). Checked and stored on every record a
/// server receives, so it is read once a use, without splitting the text first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeValue {
    pub secs: u64,
    pub nanos: u32,
    pub beyond: bool,
}

impl TimeValue {
    /// `None` unless `s` is DIGITS or DIGITS.DIGITS (the client-time grammar, without its length bound).
    #[inline]
    pub fn parse(s: &[u8]) -> Option<TimeValue> {
        let mut i = 0;
        let mut secs = 0u64;
        while let Some(&b) = s.get(i).filter(|b| b.is_ascii_digit()) {
            secs = secs.saturating_mul(10).saturating_add(u64::from(b - b'0'));
            i += 1;
        }
        if i == 0 {
            return None;
        }
        let (mut nanos, mut beyond) = (0u32, false);
        if i < s.len() {
            if s[i] != b'.' {
                return None;
            }
            let start = i + 1;
            let mut j = start;
            while let Some(&b) = s.get(j).filter(|b| b.is_ascii_digit()) {
                if j - start < 9 {
                    nanos = nanos * 10 + u32::from(b - b'0');
                } else {
                    beyond |= b != b'0';
                }
                j += 1;
            }
            if j == start || j != s.len() {
                return None;
            }
            nanos *= 10u32.pow(9 - (j - start).min(9) as u32);
        }
        Some(TimeValue { secs, nanos, beyond })
    }
}

/// Compares two client times exactly. Both must satisfy [`valid_time`]; invalid text compares as zero.
pub fn cmp_time(a: &[u8], b: &[u8]) -> Ordering {
    let zero = Decimal { int: b"0", frac: b"" };
    let a = parse_decimal(a).unwrap_or(zero);
    let b = parse_decimal(b).unwrap_or(zero);
    a.cmp_exact(&b)
}

/// A validated ISO 6709 location, split into its two signed coordinates (each with its sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location<'a> {
    pub lat: &'a [u8],
    pub lng: &'a [u8],
}

/// Parses `±DD[.D+]±DDD[.D+]` with latitude in [-90, 90] and longitude in [-180, 180].
pub fn parse_location(s: &[u8]) -> Option<Location<'_>> {
    if s.len() < 4 || s.len() > MAX_LOCATION || !matches!(s[0], b'+' | b'-') {
        return None;
    }
    let second = 1 + s[1..].iter().position(|&b| b == b'+' || b == b'-')?;
    let (lat, lng) = (&s[..second], &s[second..]);
    let lat_abs = parse_decimal(&lat[1..])?;
    let lng_abs = parse_decimal(&lng[1..])?;
    (lat_abs.at_most(90) && lng_abs.at_most(180)).then_some(Location { lat, lng })
}

/// WHATSAT radius: DIGITS or DIGITS.DIGITS, greater than 0 and at most 50.
fn valid_radius(s: &[u8]) -> bool {
    parse_decimal(s).is_some_and(|d| !d.is_zero() && d.at_most(50))
}

/// WHATSAT bound: DIGITS, 0 to 20 (leading zeros allowed, as for every DIGITS).
fn parse_bound(s: &[u8]) -> Option<u8> {
    let d = parse_decimal(s)?;
    if !d.frac.is_empty() || !d.at_most(u32::from(MAX_BOUND)) {
        return None;
    }
    Some(d.int_trimmed().iter().fold(0u8, |v, &b| v * 10 + (b - b'0')))
}

/// A point in time as the server's clock gives it: whole seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: u64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_system_time(t: std::time::SystemTime) -> Self {
        let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp { secs: d.as_secs(), nanos: d.subsec_nanos() }
    }

    fn as_nanos(self) -> i128 {
        i128::from(self.secs) * 1_000_000_000 + i128::from(self.nanos)
    }

    /// This time plus `secs` seconds.
    pub fn plus_secs(self, secs: u64) -> Self {
        Timestamp { secs: self.secs.saturating_add(secs), nanos: self.nanos }
    }
}

/// Appends `now - client_time` as `±S.NNNNNNNNN`, exact: computed in integer nanoseconds from the decimal
/// text and truncated toward zero past the ninth fraction digit. `client_time` must satisfy [`valid_time`].
pub fn write_time_diff(out: &mut Vec<u8>, now: Timestamp, client_time: &[u8]) {
    // Every real time (before the year 2242, 2^33 s) in 64-bit nanoseconds: under 2^63, so the
    // difference of two fits an i64 too. A 64-bit division is a few instructions; the i128 path below is
    // for the rest.
    const REAL: u64 = 1 << 33;
    if let Some(t) = TimeValue::parse(client_time).filter(|t| t.secs < REAL && now.secs < REAL) {
        let nanos = |secs: u64, nanos: u32| (secs * 1_000_000_000 + u64::from(nanos)) as i64;
        let mut diff = nanos(now.secs, now.nanos) - nanos(t.secs, t.nanos);
        if t.beyond && diff > 0 {
            diff -= 1; // see below
        }
        out.push(if diff < 0 { b'-' } else { b'+' });
        let abs = diff.unsigned_abs();
        write_digits(out, abs / 1_000_000_000, 1);
        out.push(b'.');
        write_digits(out, abs % 1_000_000_000, 9);
        return;
    }
    let t = parse_decimal(client_time).unwrap_or(Decimal { int: b"0", frac: b"" });
    let int = t.int_trimmed();
    let frac9 = |i: usize| t.frac.get(i).map_or(0, |d| i128::from(d - b'0'));
    let frac_ns = (0..9).fold(0i128, |v, i| v * 10 + frac9(i));
    // Digits past the ninth make the client time a little larger than `t_ns`.
    let beyond_ns = t.frac.len() > 9 && t.frac[9..].iter().any(|&d| d != b'0');

    // Up to 20 integer digits, t_ns < 10^29 fits an i128 with room to spare.
    if int.len() <= 20 {
        let secs = int.iter().fold(0i128, |v, &d| v * 10 + i128::from(d - b'0'));
        let mut diff = now.as_nanos() - (secs * 1_000_000_000 + frac_ns);
        // The exact difference is diff - ε with 0 < ε < 1 ns: truncating toward zero lowers a positive
        // difference by one and leaves a negative one where it is.
        if beyond_ns && diff > 0 {
            diff -= 1;
        }
        out.push(if diff < 0 { b'-' } else { b'+' });
        let abs = diff.unsigned_abs();
        // 128-bit division is a library call; any real clock difference fits 64 bits.
        let (secs, nanos) = match u64::try_from(abs) {
            Ok(abs) => (u128::from(abs / 1_000_000_000), abs % 1_000_000_000),
            Err(_) => (abs / 1_000_000_000, (abs % 1_000_000_000) as u64),
        };
        write_u128(out, secs);
        out.push(b'.');
        write_digits(out, nanos, 9);
        return;
    }

    // A client time beyond 10^20 seconds is far in the future of any clock: the difference is negative and
    // its magnitude is t_ns - now, in decimal digits. ε only moves it toward zero, which truncation undoes.
    let mut t_ns: Vec<u8> = int.to_vec();
    t_ns.extend((0..9).map(|i| t.frac.get(i).copied().unwrap_or(b'0')));
    let magnitude = sub_decimal(&t_ns, now.as_nanos() as u128);
    let split = magnitude.len() - 9;
    out.push(b'-');
    out.extend_from_slice(&magnitude[..split]);
    out.push(b'.');
    out.extend_from_slice(&magnitude[split..]);
}

/// `a - b` for a decimal digit string `a` known to be larger than `b`, at least ten digits long.
fn sub_decimal(a: &[u8], b: u128) -> Vec<u8> {
    let mut digits = a.to_vec();
    let mut borrow = 0u8;
    let mut b = b;
    for d in digits.iter_mut().rev() {
        let sub = (b % 10) as u8 + borrow;
        b /= 10;
        let v = *d - b'0';
        if v >= sub {
            *d = b'0' + v - sub;
            borrow = 0;
        } else {
            *d = b'0' + v + 10 - sub;
            borrow = 1;
        }
    }
    let zeros = digits.iter().take_while(|&&d| d == b'0').count().min(digits.len() - 10);
    digits.drain(..zeros);
    digits
}

/// Appends `v` in decimal. Anything that fits 64 bits (every real clock difference) avoids 128-bit
/// division, which is a library call; larger values go out as the high part, then 19 low digits.
fn write_u128(out: &mut Vec<u8>, v: u128) {
    const TEN19: u128 = 10_000_000_000_000_000_000;
    match u64::try_from(v) {
        Ok(v) => write_digits(out, v, 1),
        Err(_) => {
            write_u128(out, v / TEN19);
            write_digits(out, (v % TEN19) as u64, 19);
        }
    }
}

/// Appends `v` in decimal, zero-padded to at least `width` digits.
pub fn write_digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    while v > 0 || buf.len() - i < width {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends the IAMAT reply `AT <server> <time-diff> <client-id> <location> <client-time>\n` and returns
/// where its fields are, relative to the start of the line, so it can be stored without parsing it again.
pub fn write_at(out: &mut Vec<u8>, server: &[u8], now: Timestamp, cmd: &IAmAt<'_>) -> AtFields {
    let start = out.len();
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        let from = (out.len() - start) as u32;
        out.extend_from_slice(bytes);
        (from, (out.len() - start) as u32)
    };
    out.extend_from_slice(b"AT ");
    let server = field(out, server);
    out.push(b' ');
    write_time_diff(out, now, cmd.client_time);
    out.push(b' ');
    let client_id = field(out, cmd.client_id);
    out.push(b' ');
    let location = field(out, cmd.location);
    out.push(b' ');
    let client_time = field(out, cmd.client_time);
    out.push(b'\n');
    AtFields { server, client_id, location, client_time }
}

/// Appends the reply to an invalid command: `? <line>\n`, the line exactly as received (without its LF
/// and a CR just before it, which the caller has already removed).
pub fn write_invalid(out: &mut Vec<u8>, line: &[u8]) {
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// The fields of a stored `AT` line, as byte ranges into it: what a record needs to compare and flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtFields {
    pub server: (u32, u32),
    pub client_id: (u32, u32),
    pub location: (u32, u32),
    pub client_time: (u32, u32),
}

/// Why a line that has the shape of an `AT` record was refused (PROTOCOL section 5): the link stays up,
/// the record is counted and logged, never stored or forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtRefusal {
    /// The line is not shaped like a record at all (not `AT` and five fields separated by single spaces):
    /// the stream is broken, and the link ends.
    NotARecord,
    /// A field breaks a rule of section 2; the name says which field.
    Field(&'static str),
}

impl AtRefusal {
    pub fn name(self) -> &'static str {
        match self {
            AtRefusal::NotARecord => "not_a_record",
            AtRefusal::Field(f) => f,
        }
    }
}

/// Validates an `AT` line (with or without its final LF) as it travels between servers, and finds its
/// fields. Everything is checked again: a peer is trusted to be a neighbour, not to be bug-free. The
/// server name's membership in the herd and the clock skew need the config and a clock: the caller checks
/// those.
pub fn check_at(line: &[u8]) -> Result<AtFields, AtRefusal> {
    match scan_at(line) {
        Some(fields) => Ok(fields),
        None => check_at_by_field(line),
    }
}

/// The fast path of [`check_at`]: one pass over the line that accepts exactly the lines
/// [`check_at_by_field`] accepts, with the same fields, and says `None` at the first byte that does not
/// fit, leaving the refusal and its reason to the field-by-field check. Every record a server receives
/// from a neighbour goes through here, four times per record in the default herd, so the pass is written
/// for it: each byte is looked at once, a decimal's value is kept as its digits go by (saturating, since
/// only "at most 90" or "at most 180" is asked of it), and no field is searched for twice.
/// (`tests/protocol_props.rs` checks the two against each other on generated and mutated lines.)
#[inline]
pub fn scan_at(line: &[u8]) -> Option<AtFields> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let mut at = Scan { s: body, i: 0 };
    if !body.starts_with(b"AT ") {
        return None;
    }
    at.i = 3;
    let server = at.name(MAX_SERVER_NAME)?;
    at.space()?;
    let diff_start = at.i;
    at.sign()?;
    at.digits()?;
    at.byte(b'.')?;
    if at.digits()?.0 != 9 || at.i - diff_start > MAX_TIME_DIFF {
        return None;
    }
    at.space()?;
    let client_id = at.name(MAX_CLIENT_ID)?;
    at.space()?;
    let location = at.location()?;
    at.space()?;
    let client_time = at.time_to_end()?;
    Some(AtFields { server, client_id, location, client_time })
}

/// A cursor over an `AT` line's body for [`scan_at`]: each step consumes what it accepts, or says `None`.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    #[inline]
    fn byte(&mut self, want: u8) -> Option<()> {
        (self.s.get(self.i) == Some(&want)).then(|| self.i += 1)
    }

    #[inline]
    fn space(&mut self) -> Option<()> {
        self.byte(b' ')
    }

    #[inline]
    fn sign(&mut self) -> Option<()> {
        matches!(self.s.get(self.i), Some(b'+' | b'-')).then(|| self.i += 1)
    }

    /// A server name or client id: 1 to `max` bytes above the space, DEL excluded; the range it spans.
    #[inline]
    fn name(&mut self, max: usize) -> Option<(u32, u32)> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&b| b > b' ' && b != 0x7f) {
            self.i += 1;
        }
        (self.i > start && self.i - start <= max).then_some((start as u32, self.i as u32))
    }

    /// A location, `±lat±lng` within range and at most [`MAX_LOCATION`] bytes: the range it spans.
    #[inline]
    fn location(&mut self) -> Option<(u32, u32)> {
        let start = self.i;
        self.sign()?;
        self.coordinate(90)?;
        self.sign()?;
        self.coordinate(180)?;
        (self.i - start <= MAX_LOCATION).then_some((start as u32, self.i as u32))
    }

    /// A client time that ends the input: DIGITS or DIGITS.DIGITS, at most [`MAX_CLIENT_TIME`] bytes.
    #[inline]
    fn time_to_end(&mut self) -> Option<(u32, u32)> {
        let start = self.i;
        self.digits()?;
        if self.byte(b'.').is_some() {
            self.digits()?;
        }
        (self.i == self.s.len() && self.i - start <= MAX_CLIENT_TIME).then_some((start as u32, self.i as u32))
    }

    /// One or more ASCII digits: how many, and their value (saturating at 10^9, past any limit asked).
    #[inline]
    fn digits(&mut self) -> Option<(usize, u32)> {
        let start = self.i;
        let mut value = 0u64;
        while let Some(&b) = self.s.get(self.i).filter(|b| b.is_ascii_digit()) {
            value = (value * 10 + u64::from(b - b'0')).min(1_000_000_000);
            self.i += 1;
        }
        (self.i > start).then_some((self.i - start, value as u32))
    }

    /// The unsigned part of a coordinate, DIGITS or DIGITS.DIGITS, at most `limit` (exactly: `90.0` is,
    /// `90.000001` is not).
    #[inline]
    fn coordinate(&mut self, limit: u32) -> Option<()> {
        let (_, int) = self.digits()?;
        let mut fraction_zero = true;
        if self.byte(b'.').is_some() {
            let start = self.i;
            self.digits()?;
            fraction_zero = self.s[start..self.i].iter().all(|&b| b == b'0');
        }
        (int < limit || (int == limit && fraction_zero)).then_some(())
    }
}

/// [`check_at`] field by field: splits the line at its spaces, then checks each field by the rules of
/// section 2 and names the first that breaks one. The reference for [`scan_at`], and the refusal's
/// reason when the scan stops.
pub fn check_at_by_field(line: &[u8]) -> Result<AtFields, AtRefusal> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = body.split(|&b| b == b' ');
    let (Some(b"AT"), Some(server), Some(diff), Some(id), Some(loc), Some(time), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AtRefusal::NotARecord);
    };
    if [server, diff, id, loc, time].iter().any(|f| f.is_empty()) {
        return Err(AtRefusal::NotARecord);
    }
    let server_ok = server.len() <= MAX_SERVER_NAME && server.iter().all(|&b| b > b' ' && b != 0x7f);
    let diff_ok = diff.len() <= MAX_TIME_DIFF
        && diff.len() > 1
        && matches!(diff[0], b'+' | b'-')
        && parse_decimal(&diff[1..]).is_some_and(|d| d.frac.len() == 9);
    let checks = [
        (server_ok, "server"),
        (diff_ok, "time_diff"),
        (valid_client_id(id), "client_id"),
        (parse_location(loc).is_some(), "location"),
        (valid_time(time), "client_time"),
    ];
    if let Some(&(_, field)) = checks.iter().find(|(ok, _)| !ok) {
        return Err(AtRefusal::Field(field));
    }
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - body.as_ptr() as usize;
        (start as u32, (start + s.len()) as u32)
    };
    Ok(AtFields { server: range(server), client_id: range(id), location: range(loc), client_time: range(time) })
}

/// [`check_at`] without the reason.
pub fn parse_at(line: &[u8]) -> Option<AtFields> {
    check_at(line).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(secs: u64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    fn diff(now: Timestamp, t: &str) -> String {
        let mut out = Vec::new();
        write_time_diff(&mut out, now, t.as_bytes());
        String::from_utf8(out).unwrap()
    }

    /// Client times read into (seconds, nanoseconds, digits past the ninth): a table written by hand.
    #[test]
    fn time_values_follow_a_table() {
        let v = |secs, nanos, beyond| Some(TimeValue { secs, nanos, beyond });
        let table: [(&str, Option<TimeValue>); 12] = [
            ("1700000000.5", v(1_700_000_000, 500_000_000, false)),
            ("1700000000.123456789", v(1_700_000_000, 123_456_789, false)),
            ("1.1234567891", v(1, 123_456_789, true)),
            ("1.1234567890000", v(1, 123_456_789, false)),
            ("0.0000000001", v(0, 0, true)),
            ("007", v(7, 0, false)),
            ("18446744073709551615", v(u64::MAX, 0, false)),
            ("99999999999999999999999.25", v(u64::MAX, 250_000_000, false)),
            ("1.", None),
            (".5", None),
            ("1.5x", None),
            ("+1", None),
        ];
        for (text, want) in table {
            assert_eq!(TimeValue::parse(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn fields_split_on_all_six_whitespace_bytes() {
        let line = b" \tIAMAT\x0bkiwi.cs.ucla.edu\x0c+34.068930-118.445127\r1520023934.918963997\r";
        let fields: Vec<&[u8]> = Fields::new(line).collect();
        assert_eq!(fields, vec![&b"IAMAT"[..], b"kiwi.cs.ucla.edu", b"+34.068930-118.445127", b"1520023934.918963997"]);
        assert!(matches!(parse_command(line), Command::IAmAt(_)));
    }

    #[test]
    fn protocol_locations() {
        let valid = [
            "+34.068930-118.445127",
            "+12-118",
            "-33.8587+151.2100",
            "+040.5-075.25",
            "+90+180",
            "-90-180",
            "+90.000-180.0000",
            "+0+0",
            "-0.0-0.0",
            "+000090+0000180",
        ];
        for loc in valid {
            assert!(parse_location(loc.as_bytes()).is_some(), "{loc} should be valid");
        }
        let invalid = [
            "+34.-118.",
            "34.068930-118.445127",
            "+34.068930118.445127",
            "+90.0000001+0",
            "-90.0000001+0",
            "+0+180.0000001",
            "+91+0",
            "+0-181",
            "+1e1+0",
            "+34.0-118.4x",
            "+34.0-118.4+",
            "+.5+1",
            "+1+.5",
            "++1+1",
            "+1+1-1",
            "+1",
            "+",
            "",
            "+ 1+1",
            "+1+1.",
            "+100000000000+0",
        ];
        for loc in invalid {
            assert!(parse_location(loc.as_bytes()).is_none(), "{loc} should be invalid");
        }
        let loc = parse_location(b"+34.068930-118.445127").unwrap();
        assert_eq!((loc.lat, loc.lng), (&b"+34.068930"[..], &b"-118.445127"[..]));
    }

    #[test]
    fn protocol_times() {
        for t in ["1520023934.918963997", "1646272345.1234567", "1700000000", "0", "0.0", "0001"] {
            assert!(valid_time(t.as_bytes()), "{t} should be valid");
        }
        for t in ["1700000000.", ".5", "+5", "-5", "1e9", "", "1.2.3", "12a", "1,5"] {
            assert!(!valid_time(t.as_bytes()), "{t} should be invalid");
        }
    }

    #[test]
    fn times_compare_exactly() {
        use Ordering::*;
        let cases = [
            ("1700000300.0000000001", "1700000300", Greater),
            ("0.5", "0.50", Equal),
            ("0.5", "0.500000000000000000000001", Less),
            ("01", "1", Equal),
            ("1700000000", "999999999.999999999999", Greater),
            ("9", "10", Less),
            ("10.05", "10.5", Less),
            ("0000000000000000000000000000000000000001", "1.0", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(cmp_time(a.as_bytes(), b.as_bytes()), want, "{a} vs {b}");
            assert_eq!(cmp_time(b.as_bytes(), a.as_bytes()), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn time_diff_is_exact() {
        let now = ts(1520023935, 182837383);
        assert_eq!(diff(now, "1520023934.918963997"), "+0.263873386");
        assert_eq!(diff(ts(1700000000, 0), "1700000002.000000001"), "-2.000000001");
        assert_eq!(diff(ts(1700000000, 0), "1700000000"), "+0.000000000");
        assert_eq!(diff(ts(1700000000, 0), "1700000000.000000000000"), "+0.000000000");
        // Truncation toward zero past the ninth digit, both signs.
        assert_eq!(diff(ts(1700000001, 0), "1700000000.0000000001"), "+0.999999999");
        assert_eq!(diff(ts(1700000000, 0), "1700000001.9999999999"), "-1.999999999");
        assert_eq!(diff(ts(1700000000, 0), "1700000000.0000000001"), "+0.000000000");
        assert_eq!(diff(ts(1700000000, 5), "1700000000.000000004999"), "+0.000000000");
        assert_eq!(diff(ts(1700000000, 6), "1700000000.0000000049"), "+0.000000001");
        // A 12-digit fraction, zero, and a 40-digit integer.
        assert_eq!(diff(ts(1700000000, 0), "1699999999.123456789999"), "+0.876543210");
        assert_eq!(diff(ts(1700000000, 1), "0"), "+1700000000.000000001");
        let huge = "1234567890123456789012345678901234567890";
        assert_eq!(diff(ts(1700000000, 0), huge), "-1234567890123456789012345678899534567890.000000000");
        assert_eq!(
            diff(ts(1700000000, 0), &format!("{huge}.5")),
            "-1234567890123456789012345678899534567890.500000000"
        );
        assert_eq!(diff(ts(0, 0), "100000000000000000000"), "-100000000000000000000.000000000");
        // 20 integer digits: the i128 path with a value past 64 bits.
        assert_eq!(diff(ts(0, 0), "99999999999999999999.5"), "-99999999999999999999.500000000");
        assert_eq!(diff(ts(5, 0), "18446744073709551616"), "-18446744073709551611.000000000");
    }

    #[test]
    fn iamat_reply_matches_the_spec_example() {
        let line = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997";
        let Command::IAmAt(cmd) = parse_command(line) else { panic!("valid IAMAT") };
        let mut out = Vec::new();
        let written = write_at(&mut out, b"Hill", ts(1520023935, 182837383), &cmd);
        assert_eq!(out, b"AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997\n");
        let fields = parse_at(&out).unwrap();
        assert_eq!(fields, written);
        let s = |r: (u32, u32)| &out[r.0 as usize..r.1 as usize];
        assert_eq!(s(fields.server), b"Hill");
        assert_eq!(s(fields.client_id), b"kiwi.cs.ucla.edu");
        assert_eq!(s(fields.location), b"+34.068930-118.445127");
        assert_eq!(s(fields.client_time), b"1520023934.918963997");
    }

    #[test]
    fn command_table() {
        let id255 = "x".repeat(255);
        let id256 = "x".repeat(256);
        let valid_iamat = [
            "IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997".to_string(),
            "IAMAT a +12-118 1700000000".into(),
            "IAMAT a +90-180 1646272345.1234567".into(),
            "IAMAT a -90+180 1646272345.123456789012".into(),
            format!("IAMAT {id255} +0+0 1"),
            "IAMAT a +0+0 1234567890123456789012345678901234567890".into(),
            "  IAMAT\ta\x0b+0+0\x0c1\r".into(),
            "IAMAT ключ +0+0 1".into(),
        ];
        for line in &valid_iamat {
            assert!(matches!(parse_command(line.as_bytes()), Command::IAmAt(_)), "{line:?}");
        }
        let valid_whatsat = [
            ("WHATSAT kiwi.cs.ucla.edu 10 5", 5),
            ("WHATSAT a 50 20", 20),
            ("WHATSAT a 2.5 0", 0),
            ("WHATSAT a 0.001 00020", 20),
            ("WHATSAT a 050.000 1", 1),
        ];
        for (line, bound) in valid_whatsat {
            match parse_command(line.as_bytes()) {
                Command::WhatsAt(w) => assert_eq!(w.bound, bound, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        let invalid = [
            "IAMAT".to_string(),
            "IAMAT a +0+0".into(),
            "IAMAT a +0+0 1 extra".into(),
            "iamat a +0+0 1".into(),
            "IAMAT a 34.0-118.0 1".into(),
            "IAMAT a +90.0000001+0 1".into(),
            "IAMAT a +0+0 1e9".into(),
            "IAMAT a +0+0 1.".into(),
            "IAMAT a +0+0 .5".into(),
            "IAMAT a +0+0 +5".into(),
            format!("IAMAT {id256} +0+0 1"),
            "WHATSAT a 0 5".into(),
            "WHATSAT a 0.0 5".into(),
            "WHATSAT a 50.0001 5".into(),
            "WHATSAT a 51 5".into(),
            "WHATSAT a 10. 5".into(),
            "WHATSAT a .5 5".into(),
            "WHATSAT a 1e1 5".into(),
            "WHATSAT a 10 21".into(),
            "WHATSAT a 10 -1".into(),
            "WHATSAT a 10 1.0".into(),
            "WHATSAT a 10".into(),
            format!("WHATSAT {id256} 10 5"),
            "AT Hill +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1520023934.918963997".into(),
            "HELLO".into(),
            "\u{7f}\u{0}".into(),
        ];
        for line in &invalid {
            assert_eq!(parse_command(line.as_bytes()), Command::Invalid, "{line:?}");
        }
        for blank in ["", " ", "\t\r", "\x0b\x0c \r"] {
            assert_eq!(parse_command(blank.as_bytes()), Command::Blank, "{blank:?}");
        }
        let non_utf8 = b"IAMAT \xff\xfe +0+0 x";
        assert_eq!(parse_command(non_utf8), Command::Invalid);
        let mut out = Vec::new();
        write_invalid(&mut out, non_utf8);
        assert_eq!(out, b"? IAMAT \xff\xfe +0+0 x\n");
    }

    #[test]
    fn at_lines_are_validated() {
        let good = b"AT Bona -0.000000001 c +1+1 1.5\n";
        assert!(parse_at(good).is_some());
        for bad in [
            &b"AT Bona +0.1 c +1+1 1.5"[..],
            b"AT Bona 0.000000000 c +1+1 1.5",
            b"AT  +0.000000000 c +1+1 1.5",
            b"AT Bona +0.000000000 c +91+1 1.5",
            b"AT Bona +0.000000000 c +1+1 1.",
            b"AT Bona +0.000000000 c +1+1 1.5 x",
            b"AT Bona +0.000000000 c +1+1",
            b"IAMAT Bona +0.000000000 c +1+1 1",
        ] {
            assert!(parse_at(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn at_refusals_say_which_rule_broke_and_what_ends_a_link() {
        let long_id = format!("AT Bona +0.000000001 {} +1+1 1\n", "i".repeat(256));
        let long_loc = format!("AT Bona +0.000000001 c +{}+1 1\n", "0".repeat(64));
        let long_time = format!("AT Bona +0.000000001 c +1+1 1.{}\n", "0".repeat(39));
        let long_server = format!("AT {} +0.000000001 c +1+1 1\n", "S".repeat(65));
        let cases: [(&[u8], AtRefusal); 10] = [
            (b"AT Bona +0.000000001 c\x1b +1+1 1\n", AtRefusal::Field("client_id")),
            (b"AT Bona +0.000000001 c\x7f +1+1 1\n", AtRefusal::Field("client_id")),
            (long_id.as_bytes(), AtRefusal::Field("client_id")),
            (long_loc.as_bytes(), AtRefusal::Field("location")),
            (long_time.as_bytes(), AtRefusal::Field("client_time")),
            (long_server.as_bytes(), AtRefusal::Field("server")),
            (b"AT Bona +12345678901.000000001 c +1+1 1\n", AtRefusal::Field("time_diff")),
            (b"AT Bo\x1bna +0.000000001 c +1+1 1\n", AtRefusal::Field("server")),
            // Not shaped like a record: the stream is broken.
            (b"AT Bona +0.000000001 c +1+1\n", AtRefusal::NotARecord),
            (b"AT Bona  +0.000000001 c +1+1 1\n", AtRefusal::NotARecord),
        ];
        for (line, want) in cases {
            assert_eq!(check_at(line), Err(want), "{}", String::from_utf8_lossy(line));
        }
        // At every bound at once: accepted, and exactly MAX_AT_LINE bytes long.
        let at_limit = format!(
            "AT {} -1234567890.123456789 {} +{}-1 1.{}\n",
            "S".repeat(MAX_SERVER_NAME),
            "i".repeat(MAX_CLIENT_ID),
            "0".repeat(MAX_LOCATION - 3),
            "0".repeat(MAX_CLIENT_TIME - 2)
        );
        assert!(check_at(at_limit.as_bytes()).is_ok(), "{at_limit}");
        assert_eq!(at_limit.len(), MAX_AT_LINE);
    }

    #[test]
    fn time_at_most_compares_exactly_at_the_nanosecond() {
        let limit = ts(1_700_000_300, 500_000_000);
        // (client time, at most the limit?) worked out by hand.
        let table = [
            ("1700000300.5", true),
            ("1700000300.500000000", true),
            ("1700000300.5000000000000001", false),
            ("1700000300.499999999999", true),
            ("1700000300.500000001", false),
            ("1700000301", false),
            ("0001700000300", true),
            ("0", true),
            ("99999999999999999999", false),
            ("999999999999999999999999999999", false),
        ];
        for (t, want) in table {
            assert_eq!(time_at_most(t.as_bytes(), limit), want, "{t}");
        }
    }

    /// PROTOCOL.md section 2's length limits, at the edge and one byte past it, for a client's command
    /// and for a peer's record: a location of 64 bytes (and of 4, the shortest: `+0+0`), a client id of
    /// 255 and a client time of 40. Lengths counted by the test, the limits written out by hand.
    #[test]
    fn length_limits_hold_at_the_edge() {
        // (location, valid): `+1.` then zeros, then `+1`; 64 bytes is 3 + 59 + 2.
        let cases = [
            (format!("+1.{}+1", "0".repeat(59)), true),
            (format!("+1.{}+1", "0".repeat(60)), false),
            ("+0+0".to_string(), true),
            ("+0+".to_string(), false),
        ];
        for (loc, valid) in &cases {
            assert_eq!(parse_location(loc.as_bytes()).is_some(), *valid, "{} bytes: {loc}", loc.len());
            let iamat = format!("IAMAT kiwi {loc} 1700000000.5");
            assert_eq!(matches!(parse_command(iamat.as_bytes()), Command::IAmAt(_)), *valid, "{iamat}");
            let at = format!("AT Bona +0.000000000 kiwi {loc} 1700000000.5\n");
            assert_eq!(check_at(at.as_bytes()).is_ok(), *valid, "{at}");
            // The fast path on its own (check_at falls back to the field check when it stops).
            assert_eq!(scan_at(at.as_bytes()).is_some(), *valid, "scan: {at}");
        }
        assert_eq!(cases[0].0.len(), 64);
        for (id, valid) in [("k".repeat(255), true), ("k".repeat(256), false)] {
            let iamat = format!("IAMAT {id} +1+1 1700000000.5");
            assert_eq!(matches!(parse_command(iamat.as_bytes()), Command::IAmAt(_)), valid, "{} bytes", id.len());
            let at = format!("AT Bona +0.000000000 {id} +1+1 1700000000.5\n");
            assert_eq!(check_at(at.as_bytes()).is_ok(), valid, "{} bytes", id.len());
            assert_eq!(scan_at(at.as_bytes()).is_some(), valid, "scan: {} bytes", id.len());
        }
        for (time, valid) in [(format!("1.{}", "5".repeat(38)), true), (format!("1.{}", "5".repeat(39)), false)] {
            assert_eq!(valid_time(time.as_bytes()), valid, "{} bytes", time.len());
            let at = format!("AT Bona +0.000000000 kiwi +1+1 {time}\n");
            assert_eq!(check_at(at.as_bytes()).is_ok(), valid, "{} bytes", time.len());
            assert_eq!(scan_at(at.as_bytes()).is_some(), valid, "scan: {} bytes", time.len());
        }
    }
}
