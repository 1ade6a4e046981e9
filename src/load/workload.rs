//! Requests and replies, with no I/O: formatting requests straight into a connection's output buffer and
//! framing replies out of its input buffer. Nothing here allocates per request or per reply.

use std::time::{SystemTime, UNIX_EPOCH};

/// What the connections send.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// `IAMAT client{k} LOCATION TIME`, expecting one `AT ` line.
    Iamat,
    /// `WHATSAT client{k} RADIUS BOUND` after seeding every id with IAMAT, expecting `AT` line, JSON, empty line.
    Whatsat,
    /// WHATSAT with probability `whatsat_ratio`, IAMAT otherwise (seeded like `Whatsat`).
    Mixed { whatsat_ratio: f64 },
    /// A line template with `{i}` replaced by a counter, expecting exactly one reply line.
    Raw { template: String },
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Iamat => "iamat",
            Workload::Whatsat => "whatsat",
            Workload::Mixed { .. } => "mixed",
            Workload::Raw { .. } => "raw",
        }
    }

    /// WHATSAT needs a record for every client id before it is measured.
    pub fn needs_seed(&self) -> bool {
        matches!(self, Workload::Whatsat | Workload::Mixed { .. })
    }
}

/// What one request expects back: how to frame the reply and what to check in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// One line, `AT <server> <diff> client{k} <location> <time>`.
    At { client: u32 },
    /// `AT ... client{k} ...` line, the Places JSON, then an empty line (the reply ends with `\n\n`).
    AtJson { client: u32 },
    /// Exactly one line of anything (raw mode).
    Line,
}

/// Why a request did not get a good reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server answered `? ...`.
    Invalid,
    /// The connection was closed or reset before the reply came.
    Closed,
    /// A reply that does not match the request (or bytes nobody asked for).
    Unexpected,
    /// No reply within `--timeout-ms` of the (scheduled) send time.
    Timeout,
    /// The connection could not be established (refused, unreachable, connect time-out).
    Connect,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 5] =
        [ErrorKind::Invalid, ErrorKind::Closed, ErrorKind::Unexpected, ErrorKind::Timeout, ErrorKind::Connect];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Closed => "closed",
            ErrorKind::Unexpected => "unexpected",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connect => "connect",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One piece of a raw template.
#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Lit(Vec<u8>),
    Counter,
}

fn parse_template(t: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    let mut rest = t;
    while let Some(p) = rest.find("{i}") {
        if p > 0 {
            segs.push(Seg::Lit(rest.as_bytes()[..p].to_vec()));
        }
        segs.push(Seg::Counter);
        rest = &rest[p + 3..];
    }
    if !rest.is_empty() {
        segs.push(Seg::Lit(rest.as_bytes().to_vec()));
    }
    segs
}

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `n` as exactly `width` digits, zero-padded (`n` must fit).
fn push_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    for i in (20 - width..20).rev() {
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[20 - width..]);
}

/// Appends a coordinate given in millionths of a degree as ISO 6709 text: sign, degrees, six decimals.
pub fn push_coord(out: &mut Vec<u8>, micro: i64) {
    out.push(if micro < 0 { b'-' } else { b'+' });
    let a = micro.unsigned_abs();
    push_u64(out, a / 1_000_000);
    out.push(b'.');
    push_padded(out, a % 1_000_000, 6);
}

/// Appends POSIX time given in nanoseconds as `SECONDS.NNNNNNNNN`.
pub fn push_time(out: &mut Vec<u8>, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    out.push(b'.');
    push_padded(out, ns % 1_000_000_000, 9);
}

/// `IAMAT client{k} {lat}{lon} {time}\n`.
pub fn write_iamat(out: &mut Vec<u8>, client: u32, lat_micro: i64, lon_micro: i64, time_ns: u64) {
    out.extend_from_slice(b"IAMAT client");
    push_u64(out, client as u64);
    out.push(b' ');
    push_coord(out, lat_micro);
    push_coord(out, lon_micro);
    out.push(b' ');
    push_time(out, time_ns);
    out.push(b'\n');
}

/// `WHATSAT client{k} {radius} {bound}\n`.
pub fn write_whatsat(out: &mut Vec<u8>, client: u32, radius: &[u8], bound: &[u8]) {
    out.extend_from_slice(b"WHATSAT client");
    push_u64(out, client as u64);
    out.push(b' ');
    out.extend_from_slice(radius);
    out.push(b' ');
    out.extend_from_slice(bound);
    out.push(b'\n');
}

/// A small, fast, deterministic generator (xorshift64*); load patterns need spread, not secrecy.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, n)` (n > 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
}

/// A client's home point, in millionths of a degree, spread over the globe by a hash of its id.
fn home(client: u32) -> (i64, i64) {
    let mut r = Rng::new(0x9E37_79B9_7F4A_7C15 ^ (client as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let lat = r.below(160_000_001) as i64 - 80_000_000;
    let lon = r.below(350_000_001) as i64 - 175_000_000;
    (lat, lon)
}

/// Produces the request stream of one run. One generator is shared by all connections, so client ids,
/// counters and client times advance over the whole run, not per connection.
#[derive(Debug)]
pub struct Generator {
    workload: Workload,
    clients: u32,
    radius: Vec<u8>,
    bound: Vec<u8>,
    whatsat_threshold: u64,
    template: Vec<Seg>,
    counter: u64,
    next_client: u32,
    rng: Rng,
    last_time_ns: u64,
}

impl Generator {
    pub fn new(workload: &Workload, clients: u32, radius: &str, bound: u32) -> Generator {
        let ratio = match workload {
            Workload::Whatsat => 1.0,
            Workload::Mixed { whatsat_ratio } => whatsat_ratio.clamp(0.0, 1.0),
            _ => 0.0,
        };
        let template = match workload {
            Workload::Raw { template } => parse_template(template),
            _ => Vec::new(),
        };
        Generator {
            workload: workload.clone(),
            clients: clients.max(1),
            radius: radius.as_bytes().to_vec(),
            bound: bound.to_string().into_bytes(),
            // Compared with 32 random bits.
            whatsat_threshold: (ratio * (1u64 << 32) as f64) as u64,
            template,
            counter: 0,
            next_client: 0,
            rng: Rng::new(0x005E_ED0F_4E4D),
            last_time_ns: 0,
        }
    }

    pub fn clients(&self) -> u32 {
        self.clients
    }

    /// A client time that is now (wall clock, nanoseconds) and strictly later than any given before, so
    /// every IAMAT is newer than the record it replaces.
    fn client_time(&mut self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        self.last_time_ns = now.max(self.last_time_ns + 1);
        self.last_time_ns
    }

    fn iamat(&mut self, client: u32, out: &mut Vec<u8>) -> Expect {
        let (lat, lon) = home(client);
        // Wander up to ±0.05° around home: valid, and different on every report.
        let lat = (lat + self.rng.below(100_001) as i64 - 50_000).clamp(-90_000_000, 90_000_000);
        let lon = (lon + self.rng.below(100_001) as i64 - 50_000).clamp(-180_000_000, 180_000_000);
        let t = self.client_time();
        write_iamat(out, client, lat, lon, t);
        Expect::At { client }
    }

    /// The seeding IAMAT for client `k` (WHATSAT workloads, before warm-up).
    pub fn seed(&mut self, client: u32, out: &mut Vec<u8>) -> Expect {
        self.iamat(client, out)
    }

    /// Formats the next request of the workload onto `out` and says what it expects back.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Expect {
        if let Workload::Raw { .. } = self.workload {
            let i = self.counter;
            self.counter += 1;
            for seg in &self.template {
                match seg {
                    Seg::Lit(b) => out.extend_from_slice(b),
                    Seg::Counter => push_u64(out, i),
                }
            }
            out.push(b'\n');
            return Expect::Line;
        }
        let client = self.next_client;
        self.next_client = if client + 1 >= self.clients { 0 } else { client + 1 };
        let whatsat = match self.whatsat_threshold {
            0 => false,
            t if t >= 1u64 << 32 => true,
            t => (self.rng.next_u64() >> 32) < t,
        };
        if whatsat {
            write_whatsat(out, client, &self.radius, &self.bound);
            Expect::AtJson { client }
        } else {
            self.iamat(client, out)
        }
    }
}

/// Finds reply boundaries in a byte stream that arrives in arbitrary pieces. It remembers how far it has
/// searched, so a large reply arriving in many reads is scanned once.
#[derive(Clone, Debug, Default)]
pub struct Framer {
    scanned: usize,
}

impl Framer {
    pub fn reset(&mut self) {
        self.scanned = 0;
    }

    /// The length of the first complete reply at the start of `buf` (which holds the bytes of the
    /// current reply and any after it), or `None` when more bytes are needed. `buf` may only grow at its
    /// end between calls until a reply is returned.
    pub fn next(&mut self, buf: &[u8], expect: Expect) -> Option<usize> {
        let two = match expect {
            Expect::AtJson { .. } => {
                if buf.len() < 2 {
                    return None;
                }
                // `? ...` is one line; anything else is framed on the empty line that ends the JSON.
                &buf[..2] != b"? "
            }
            _ => false,
        };
        let found = if two {
            let from = self.scanned.saturating_sub(1);
            buf[from..].windows(2).position(|w| w == b"\n\n").map(|p| from + p + 2)
        } else {
            buf[self.scanned..].iter().position(|&b| b == b'\n').map(|p| self.scanned + p + 1)
        };
        match found {
            Some(n) => {
                self.scanned = 0;
                Some(n)
            }
            None => {
                self.scanned = buf.len();
                None
            }
        }
    }
}

/// Appends `client{k}` to a stack buffer and returns its length.
fn client_id(buf: &mut [u8; 32], client: u32) -> usize {
    buf[..6].copy_from_slice(b"client");
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    let mut n = client;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = &digits[i..];
    buf[6..6 + d.len()].copy_from_slice(d);
    6 + d.len()
}

const WS: &[u8] = b" \t\r\n\x0c\x0b";

/// Checks that `line` is `AT <server> <diff> client{k} <location> <time>`.
fn is_at_line(line: &[u8], client: u32) -> bool {
    if !line.starts_with(b"AT ") {
        return false;
    }
    let mut id = [0u8; 32];
    let idn = client_id(&mut id, client);
    let mut fields = line.split(|b| WS.contains(b)).filter(|f| !f.is_empty());
    let ok = fields.by_ref().take(3).count() == 3 && fields.next() == Some(&id[..idn]);
    ok && fields.count() == 2
}

/// Judges one complete reply (as framed by [`Framer`], terminator included).
pub fn classify(frame: &[u8], expect: Expect, raw_prefix: &[u8]) -> Result<(), ErrorKind> {
    if frame.starts_with(b"? ") {
        return Err(ErrorKind::Invalid);
    }
    let first_end = frame.iter().position(|&b| b == b'\n').unwrap_or(frame.len());
    let mut line = &frame[..first_end];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let ok = match expect {
        Expect::Line => line.starts_with(raw_prefix),
        Expect::At { client } => first_end + 1 == frame.len() && is_at_line(line, client),
        Expect::AtJson { client } => {
            is_at_line(line, client) && frame.get(first_end + 1) == Some(&b'{') && frame.ends_with(b"\n\n")
        }
    };
    if ok {
        Ok(())
    } else {
        Err(ErrorKind::Unexpected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_coordinates() {
        let mut o = Vec::new();
        push_u64(&mut o, 0);
        o.push(b' ');
        push_u64(&mut o, 18_446_744_073_709_551_615);
        o.push(b' ');
        push_coord(&mut o, 34_068_930);
        push_coord(&mut o, -118_445_127);
        o.push(b' ');
        push_coord(&mut o, 0);
        push_coord(&mut o, -5);
        o.push(b' ');
        push_coord(&mut o, 90_000_000);
        push_coord(&mut o, -180_000_000);
        o.push(b' ');
        push_time(&mut o, 1_520_023_934_918_963_997);
        o.push(b' ');
        push_time(&mut o, 1_700_000_000_000_000_001);
        assert_eq!(
            std::str::from_utf8(&o).unwrap(),
            "0 18446744073709551615 +34.068930-118.445127 +0.000000-0.000005 +90.000000-180.000000 \
             1520023934.918963997 1700000000.000000001"
        );
    }

    #[test]
    fn iamat_and_whatsat_format() {
        let mut o = Vec::new();
        write_iamat(&mut o, 42, 34_068_930, -118_445_127, 1_520_023_934_918_963_997);
        write_whatsat(&mut o, 7, b"10", b"5");
        assert_eq!(
            std::str::from_utf8(&o).unwrap(),
            "IAMAT client42 +34.068930-118.445127 1520023934.918963997\nWHATSAT client7 10 5\n"
        );
    }

    /// Every generated IAMAT follows the protocol grammar, cycles over the ids, and its client time is
    /// strictly later than the one before.
    #[test]
    fn generated_iamat_is_valid_and_newer() {
        let mut g = Generator::new(&Workload::Iamat, 3, "10", 5);
        let mut last = 0u128;
        for i in 0..3000u32 {
            let mut o = Vec::new();
            let e = g.next(&mut o);
            assert_eq!(e, Expect::At { client: i % 3 });
            let s = std::str::from_utf8(&o).unwrap();
            assert!(s.ends_with('\n'));
            let f: Vec<&str> = s.split_ascii_whitespace().collect();
            assert_eq!(f.len(), 4, "{s}");
            assert_eq!(f[0], "IAMAT");
            assert_eq!(f[1], format!("client{}", i % 3));
            // +DD.DDDDDD±DDD.DDDDDD
            let loc = f[2].as_bytes();
            let split = loc[1..].iter().position(|&b| b == b'+' || b == b'-').unwrap() + 1;
            let lat: f64 = f[2][..split].parse().unwrap();
            let lon: f64 = f[2][split..].parse().unwrap();
            assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon), "{s}");
            for part in [&f[2][1..split], &f[2][split + 1..]] {
                let (a, b) = part.split_once('.').unwrap();
                assert!(!a.is_empty() && b.len() == 6);
                assert!(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()));
            }
            let (secs, frac) = f[3].split_once('.').unwrap();
            assert_eq!(frac.len(), 9);
            let t: u128 = format!("{secs}{frac}").parse().unwrap();
            assert!(t > last);
            last = t;
        }
    }

    #[test]
    fn mixed_ratio_and_raw_template() {
        let mut g = Generator::new(&Workload::Mixed { whatsat_ratio: 0.25 }, 100, "2.5", 3);
        let mut o = Vec::new();
        let mut w = 0;
        for _ in 0..10_000 {
            if let Expect::AtJson { .. } = g.next(&mut o) {
                w += 1;
            }
        }
        assert!((2200..2800).contains(&w), "{w}");
        assert!(std::str::from_utf8(&o).unwrap().contains("WHATSAT client"));

        let mut g = Generator::new(&Workload::Raw { template: "SET k{i} v{i}!".into() }, 1, "", 0);
        let mut o = Vec::new();
        for _ in 0..3 {
            assert_eq!(g.next(&mut o), Expect::Line);
        }
        assert_eq!(o, b"SET k0 v0!\nSET k1 v1!\nSET k2 v2!\n");
        let mut g = Generator::new(&Workload::Raw { template: "PING".into() }, 1, "", 0);
        let mut o = Vec::new();
        g.next(&mut o);
        assert_eq!(o, b"PING\n");
    }

    /// Frames `stream` fed in the given pieces, the way a connection does: bytes are appended, complete
    /// replies are taken off the front.
    fn frame_in_pieces(stream: &[u8], cuts: &[usize], expects: &[Expect]) -> Vec<Vec<u8>> {
        let mut f = Framer::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut frames = Vec::new();
        let mut at = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(stream.len());
        for &end in &bounds {
            buf.extend_from_slice(&stream[at..end]);
            at = end;
            while frames.len() < expects.len() {
                match f.next(&buf, expects[frames.len()]) {
                    Some(n) => frames.push(buf.drain(..n).collect()),
                    None => break,
                }
            }
        }
        assert!(buf.is_empty(), "left over: {:?}", String::from_utf8_lossy(&buf));
        frames
    }

    #[test]
    fn framing_split_anywhere() {
        let at = b"AT Bailey +0.263873386 client1 +34.068930-118.445127 1520023934.918963997\n".to_vec();
        let mut whatsat = b"AT Bona -0.000000001 client2 +1.000000+2.000000 1700000000.5\n".to_vec();
        whatsat.extend_from_slice(
            b"{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OK\"\n}\n\n",
        );
        let invalid = b"? WHATSAT client9 10 5\n".to_vec();
        let stream: Vec<u8> = [at.clone(), whatsat.clone(), invalid.clone(), at.clone()].concat();
        let expects = [
            Expect::At { client: 1 },
            Expect::AtJson { client: 2 },
            Expect::AtJson { client: 9 },
            Expect::At { client: 1 },
        ];
        let want = vec![at.clone(), whatsat.clone(), invalid.clone(), at.clone()];
        // Every single cut, every pair of cuts, and byte-by-byte.
        for i in 0..=stream.len() {
            assert_eq!(frame_in_pieces(&stream, &[i], &expects), want, "cut at {i}");
        }
        for i in (0..=stream.len()).step_by(3) {
            for j in (i..=stream.len()).step_by(5) {
                assert_eq!(frame_in_pieces(&stream, &[i, j], &expects), want, "cuts {i} {j}");
            }
        }
        let all: Vec<usize> = (1..stream.len()).collect();
        assert_eq!(frame_in_pieces(&stream, &all, &expects), want);

        assert_eq!(classify(&want[0], expects[0], b""), Ok(()));
        assert_eq!(classify(&want[1], expects[1], b""), Ok(()));
        assert_eq!(classify(&want[2], expects[2], b""), Err(ErrorKind::Invalid));
    }

    #[test]
    fn raw_lines_with_crlf() {
        let stream = b"+OK\r\n+OK\r\n-ERR wrong\r\n";
        let e = [Expect::Line; 3];
        for i in 0..=stream.len() {
            let frames = frame_in_pieces(stream, &[i], &e);
            assert_eq!(frames.len(), 3);
            assert_eq!(classify(&frames[0], Expect::Line, b""), Ok(()));
            assert_eq!(classify(&frames[0], Expect::Line, b"+OK"), Ok(()));
            assert_eq!(classify(&frames[2], Expect::Line, b"+OK"), Err(ErrorKind::Unexpected));
            assert_eq!(classify(&frames[2], Expect::Line, b""), Ok(()));
        }
    }

    #[test]
    fn classify_checks_the_client() {
        let e = Expect::At { client: 12 };
        assert_eq!(classify(b"AT S +0.1 client12 +1-2 3\n", e, b""), Ok(()));
        assert_eq!(classify(b"AT S\t+0.1  client12 +1-2 3\r\n", e, b""), Ok(()));
        assert_eq!(classify(b"AT S +0.1 client1 +1-2 3\n", e, b""), Err(ErrorKind::Unexpected));
        assert_eq!(classify(b"AT S +0.1 client12 +1-2\n", e, b""), Err(ErrorKind::Unexpected));
        assert_eq!(classify(b"AT S +0.1 client12 +1-2 3 x\n", e, b""), Err(ErrorKind::Unexpected));
        assert_eq!(classify(b"OK\n", e, b""), Err(ErrorKind::Unexpected));
        assert_eq!(classify(b"? IAMAT x\n", e, b""), Err(ErrorKind::Invalid));
        let j = Expect::AtJson { client: 12 };
        assert_eq!(classify(b"AT S +0.1 client12 +1-2 3\n{}\n\n", j, b""), Ok(()));
        assert_eq!(classify(b"AT S +0.1 client12 +1-2 3\nnot json\n\n", j, b""), Err(ErrorKind::Unexpected));
    }
}
