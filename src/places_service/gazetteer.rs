//! The GeoNames gazetteer behind the local Places service, and a grid index over it.
//!
//! The vendored file (GeoNames (geonames.org), CC BY 4.0) is a gzip-compressed TSV with a header line:
//! `name, lat, lng, country, admin1, admin2`. It is decompressed once at start-up and kept as one string;
//! a row is a byte range of that string, split into fields only when it is answered, so the coordinates
//! go out with the exact text of the file.
//!
//! The index is a fixed grid of `CELL_DEG` × `CELL_DEG` cells in latitude and longitude, stored as one
//! array of points sorted by cell plus a prefix-sum of cell starts (CSR layout). A query visits the cells
//! of the circle's bounding box (wrapping across the antimeridian, taking every column when the circle
//! holds a pole) and keeps the points whose exact haversine distance is within the radius.

use std::f64::consts::PI;
use std::io::Read;

/// Mean Earth radius (IUGG), in metres. Every distance in this service uses it.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Size of a grid cell, in degrees of latitude and of longitude.
const CELL_DEG: f64 = 0.5;
const GRID_ROWS: usize = (180.0 / CELL_DEG) as usize;
const GRID_COLS: usize = (360.0 / CELL_DEG) as usize;

static EMBEDDED: &[u8] = include_bytes!("geonames-cities.tsv.gz");

/// One place of the gazetteer, borrowed from its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    pub name: &'a str,
    /// Latitude exactly as written in the file.
    pub lat: &'a str,
    /// Longitude exactly as written in the file.
    pub lng: &'a str,
    pub country: &'a str,
    pub admin1: &'a str,
    pub admin2: &'a str,
}

/// A place found by [`Gazetteer::nearby`]: its row (0-based, header excluded) and its distance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: u32,
    pub distance_m: f64,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    lat: f64, // radians
    lng: f64, // radians
    cos_lat: f64,
    row: u32,
}

impl Point {
    fn new(lat_deg: f64, lng_deg: f64, row: u32) -> Point {
        let lat = lat_deg.to_radians();
        Point { lat, lng: lng_deg.to_radians(), cos_lat: lat.cos(), row }
    }
}

/// Haversine central angle between two points, in radians.
#[inline]
fn central_angle(a: &Point, b: &Point) -> f64 {
    let s_lat = ((b.lat - a.lat) * 0.5).sin();
    let s_lng = ((b.lng - a.lng) * 0.5).sin();
    let h = s_lat * s_lat + a.cos_lat * b.cos_lat * s_lng * s_lng;
    2.0 * h.clamp(0.0, 1.0).sqrt().asin()
}

/// Great-circle distance in metres between two points given in decimal degrees (haversine formula on a
/// sphere of radius [`EARTH_RADIUS_M`]); the same arithmetic the index uses to decide "within the radius".
pub fn haversine_m(lat1: f64, lng1: f64, lat2: f64, lng2: f64) -> f64 {
    EARTH_RADIUS_M * central_angle(&Point::new(lat1, lng1, 0), &Point::new(lat2, lng2, 0))
}

/// The gazetteer and its spatial index.
pub struct Gazetteer {
    text: String,
    /// Byte range of each row's line in `text`.
    lines: Vec<(u32, u32)>,
    /// `cell_start[c]..cell_start[c + 1]` are the points of cell `c` in `points`.
    cell_start: Vec<u32>,
    points: Vec<Point>,
}

fn cell_row(lat_deg: f64) -> usize {
    (((lat_deg + 90.0) / CELL_DEG).floor().max(0.0) as usize).min(GRID_ROWS - 1)
}

fn cell_col(lng_deg: f64) -> usize {
    (((lng_deg + 180.0) / CELL_DEG).floor() as i64).rem_euclid(GRID_COLS as i64) as usize
}

/// Why a gazetteer could not be loaded. The embedded one only fails if the build vendored a broken file.
#[derive(Debug)]
pub enum GazetteerError {
    /// `cannot decompress the embedded gazetteer: ERROR`.
    Decompress(std::io::Error),
    /// The text is over 4 GiB (offsets are 32-bit).
    TooLarge,
    /// The first line is not the expected header (the line is kept, for the message).
    BadHeader { line: String },
    /// `gazetteer line N: PROBLEM` (1-based, header included).
    BadLine { number: usize, problem: &'static str },
}

impl std::fmt::Display for GazetteerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GazetteerError::Decompress(e) => write!(f, "cannot decompress the embedded gazetteer: {e}"),
            GazetteerError::TooLarge => f.write_str("gazetteer text is larger than 4 GiB"),
            GazetteerError::BadHeader { line } => write!(f, "gazetteer header is not name, lat, lng, ...: {line:?}"),
            GazetteerError::BadLine { number, problem } => write!(f, "gazetteer line {number}: {problem}"),
        }
    }
}

impl std::error::Error for GazetteerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GazetteerError::Decompress(e) => Some(e),
            _ => None,
        }
    }
}

impl Gazetteer {
    /// Decompresses and indexes the vendored GeoNames file.
    pub fn embedded() -> Result<Gazetteer, GazetteerError> {
        // The gzip trailer holds the uncompressed size (mod 2^32): reserve it at once.
        let size_hint = EMBEDDED
            .len()
            .checked_sub(4)
            .map(|at| u32::from_le_bytes(EMBEDDED[at..].try_into().unwrap()) as usize)
            .unwrap_or(0);
        let mut text = String::with_capacity(size_hint);
        flate2::read::GzDecoder::new(EMBEDDED).read_to_string(&mut text).map_err(GazetteerError::Decompress)?;
        Gazetteer::from_tsv(text)
    }

    /// Parses and indexes a TSV text with the gazetteer's header and columns.
    pub fn from_tsv(text: String) -> Result<Gazetteer, GazetteerError> {
        if text.len() > u32::MAX as usize {
            return Err(GazetteerError::TooLarge);
        }
        let mut lines = Vec::with_capacity(text.len() / 48);
        let mut coords = Vec::with_capacity(text.len() / 48);
        let mut offset = 0usize;
        for (number, line) in text.split_inclusive('\n').enumerate() {
            let start = offset;
            offset += line.len();
            let line = line.strip_suffix('\n').unwrap_or(line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            if number == 0 {
                if !line.starts_with("name\tlat\tlng") {
                    return Err(GazetteerError::BadHeader { line: line.into() });
                }
                continue;
            }
            if line.is_empty() {
                continue;
            }
            let bad = |problem| GazetteerError::BadLine { number: number + 1, problem };
            let fields = split_fields(line).ok_or_else(|| bad("expected 6 fields"))?;
            let lat: f64 = fields.lat.parse().map_err(|_| bad("bad latitude"))?;
            let lng: f64 = fields.lng.parse().map_err(|_| bad("bad longitude"))?;
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lng) {
                return Err(bad("coordinates out of range"));
            }
            lines.push((start as u32, (start + line.len()) as u32));
            coords.push((lat, lng));
        }

        // Counting sort of the points by cell.
        let cell_of = |(lat, lng): (f64, f64)| cell_row(lat) * GRID_COLS + cell_col(lng);
        let mut cell_start = vec![0u32; GRID_ROWS * GRID_COLS + 1];
        for &c in &coords {
            cell_start[cell_of(c) + 1] += 1;
        }
        for i in 1..cell_start.len() {
            cell_start[i] += cell_start[i - 1];
        }
        let mut fill = cell_start.clone();
        let mut points = vec![Point::new(0.0, 0.0, 0); coords.len()];
        for (row, &c) in coords.iter().enumerate() {
            let slot = &mut fill[cell_of(c)];
            points[*slot as usize] = Point::new(c.0, c.1, row as u32);
            *slot += 1;
        }
        Ok(Gazetteer { text, lines, cell_start, points })
    }

    /// Number of places.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// The place at `row` (0-based, header excluded). Panics when `row` is out of range.
    pub fn place(&self, row: u32) -> Place<'_> {
        let (start, end) = self.lines[row as usize];
        split_fields(&self.text[start as usize..end as usize]).expect("checked at load")
    }

    /// The places within `radius_m` metres (haversine) of (`lat`, `lng`) in degrees, nearest first (ties by
    /// row), at most `limit`. A radius that is not positive, or coordinates that are not finite, find nothing.
    pub fn nearby(&self, lat: f64, lng: f64, radius_m: f64, limit: usize) -> Vec<Hit> {
        let mut hits = Vec::new();
        if limit == 0 || radius_m.is_nan() || radius_m <= 0.0 || !lat.is_finite() || !lng.is_finite() {
            return hits;
        }
        let center = Point::new(lat, lng, 0);
        let delta = radius_m / EARTH_RADIUS_M; // angular radius
        let mut visit = |cell: usize| {
            let (a, b) = (self.cell_start[cell] as usize, self.cell_start[cell + 1] as usize);
            for p in &self.points[a..b] {
                let d = EARTH_RADIUS_M * central_angle(&center, p);
                if d <= radius_m {
                    hits.push(Hit { row: p.row, distance_m: d });
                }
            }
        };
        if delta >= PI {
            (0..GRID_ROWS * GRID_COLS).for_each(&mut visit);
        } else {
            // Bounding box of the spherical cap (J. P. Matuschek), widened by a hair against rounding: the
            // exact distance test decides, so a cell too many costs time, never correctness.
            let margin = 1e-9;
            let delta_deg = delta.to_degrees() + margin;
            let (lat_lo, lat_hi) = (lat - delta_deg, lat + delta_deg);
            let (r0, r1) = (cell_row(lat_lo.max(-90.0)), cell_row(lat_hi.min(90.0)));
            let spread = delta.sin() / center.cos_lat;
            let cols: Option<(i64, i64)> = if lat_hi >= 90.0 || lat_lo <= -90.0 || spread.is_nan() || spread >= 1.0 {
                None // the cap holds a pole, or is wider than any meridian band: every column
            } else {
                let dlng = spread.asin().to_degrees() + margin;
                let c0 = ((lng - dlng + 180.0) / CELL_DEG).floor() as i64;
                let c1 = ((lng + dlng + 180.0) / CELL_DEG).floor() as i64;
                if c1 - c0 + 1 >= GRID_COLS as i64 {
                    None
                } else {
                    Some((c0, c1))
                }
            };
            for r in r0..=r1 {
                match cols {
                    None => (0..GRID_COLS).for_each(|c| visit(r * GRID_COLS + c)),
                    Some((c0, c1)) => {
                        for c in c0..=c1 {
                            visit(r * GRID_COLS + c.rem_euclid(GRID_COLS as i64) as usize);
                        }
                    }
                }
            }
        }
        let order = |a: &Hit, b: &Hit| a.distance_m.total_cmp(&b.distance_m).then(a.row.cmp(&b.row));
        if hits.len() > limit {
            hits.select_nth_unstable_by(limit - 1, order);
            hits.truncate(limit);
        }
        hits.sort_unstable_by(order);
        hits
    }

    /// Every place within the radius by a scan of all rows: the reference the index is tested against.
    pub fn nearby_brute_force(&self, lat: f64, lng: f64, radius_m: f64, limit: usize) -> Vec<Hit> {
        let center = Point::new(lat, lng, 0);
        let mut hits: Vec<Hit> = self
            .points
            .iter()
            .filter_map(|p| {
                let d = EARTH_RADIUS_M * central_angle(&center, p);
                (d <= radius_m).then_some(Hit { row: p.row, distance_m: d })
            })
            .collect();
        hits.sort_unstable_by(|a, b| a.distance_m.total_cmp(&b.distance_m).then(a.row.cmp(&b.row)));
        hits.truncate(limit);
        hits
    }
}

fn split_fields(line: &str) -> Option<Place<'_>> {
    let mut it = line.split('\t');
    let place = Place {
        name: it.next()?,
        lat: it.next()?,
        lng: it.next()?,
        country: it.next()?,
        admin1: it.next()?,
        admin2: it.next()?,
    };
    it.next().is_none().then_some(place)
}

/// The stable place id of a row: "GN" followed by the row index in base 36 (lower case).
pub fn place_id(row: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut digits = Vec::with_capacity(8);
    let mut n = row;
    loop {
        digits.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    let mut id = String::with_capacity(2 + digits.len());
    id.push_str("GN");
    id.push_str(std::str::from_utf8(&digits).expect("ascii"));
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::OnceLock;

    fn embedded() -> &'static Gazetteer {
        static G: OnceLock<Gazetteer> = OnceLock::new();
        G.get_or_init(|| Gazetteer::embedded().expect("embedded gazetteer"))
    }

    /// xorshift64*: deterministic randomness without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn unit(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn range(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.unit()
        }
    }

    fn assert_same(g: &Gazetteer, lat: f64, lng: f64, radius: f64, limit: usize) {
        let fast = g.nearby(lat, lng, radius, limit);
        let slow = g.nearby_brute_force(lat, lng, radius, limit);
        assert_eq!(fast, slow, "query ({lat}, {lng}) radius {radius} limit {limit}");
    }

    #[test]
    fn loads_every_row_of_the_embedded_file() {
        let g = embedded();
        assert_eq!(g.len(), 171_075);
        let first = g.place(0);
        assert_eq!(first.name, "Vila");
        assert_eq!((first.lat, first.lng, first.country), ("42.53176", "1.56654", "AD"));
        assert_eq!(first.admin1, "Encamp");
        assert_eq!(first.admin2, "");
    }

    #[test]
    fn index_matches_brute_force_on_random_queries() {
        let g = embedded();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..240 {
            let (lat, lng) = if i % 2 == 0 {
                // Near a real place, where the data is dense.
                let p = g.place((rng.next_u64() % g.len() as u64) as u32);
                let lat: f64 = p.lat.parse().unwrap();
                let lng: f64 = p.lng.parse().unwrap();
                ((lat + rng.range(-0.3, 0.3)).clamp(-90.0, 90.0), lng + rng.range(-0.3, 0.3))
            } else {
                // Uniform on the sphere.
                (rng.range(-1.0, 1.0).asin().to_degrees(), rng.range(-180.0, 180.0))
            };
            let radius = match i % 4 {
                0 => rng.range(1.0, 5_000.0),
                1 | 2 => rng.range(1.0, 50_000.0),
                _ => rng.range(50_000.0, 600_000.0),
            };
            let limit = if i % 3 == 0 { usize::MAX } else { 20 };
            assert_same(g, lat, lng, radius, limit);
        }
    }

    #[test]
    fn index_matches_brute_force_at_the_edges() {
        let g = embedded();
        // Across the antimeridian (Fiji, Chukotka), at and near the poles, Svalbard, exact cell borders.
        for &(lat, lng) in &[
            (-16.8, 180.0),
            (-16.8, -180.0),
            (-16.8, 179.99),
            (-16.8, -179.99),
            (65.0, 179.9),
            (90.0, 0.0),
            (-90.0, 0.0),
            (89.99, 45.0),
            (78.22, 15.6),
            (0.0, 0.0),
            (34.5, -118.5),
        ] {
            for &radius in &[1.0, 10_000.0, 50_000.0, 300_000.0, 2_500_000.0] {
                assert_same(g, lat, lng, radius, 20);
            }
        }
        assert_same(g, 48.85, 2.35, 30_000_000.0, 50);
    }

    #[test]
    fn synthetic_points_near_poles_and_antimeridian() {
        let mut tsv = String::from("name\tlat\tlng\tcountry\tadmin1\tadmin2\n");
        let spots = [
            (89.999, 0.0),
            (89.999, 180.0),
            (89.5, -90.0),
            (-89.999, 10.0),
            (-89.7, -170.0),
            (10.0, 179.999),
            (10.0, -179.999),
            (10.0, 180.0),
            (10.0, -180.0),
            (-10.0, 179.75),
            (0.0, 0.0),
            (0.25, 0.25),
        ];
        for (i, (lat, lng)) in spots.iter().enumerate() {
            tsv.push_str(&format!("P{i}\t{lat}\t{lng}\tXX\t\t\n"));
        }
        let g = Gazetteer::from_tsv(tsv).unwrap();
        assert_eq!(g.len(), spots.len());
        let mut rng = Rng(42);
        for _ in 0..2_000 {
            let lat = rng.range(-1.0, 1.0).asin().to_degrees();
            let lng = rng.range(-180.0, 180.0);
            let radius = rng.range(1.0, 400_000.0);
            assert_same(&g, lat, lng, radius, 20);
        }
        // A point on the other side of the antimeridian is 220 m away, not 40,000 km.
        let hits = g.nearby(10.0, 179.999, 300.0, 20);
        let mut names: Vec<_> = hits.iter().map(|h| g.place(h.row).name).collect();
        // P7 (lng 180) and P8 (lng -180) are the same point; rounding decides which comes first.
        names[1..3].sort_unstable();
        assert_eq!(names, ["P5", "P7", "P8", "P6"]);
        // Across the pole.
        let hits = g.nearby(89.999, 90.0, 1_000.0, 20);
        assert_eq!(hits.len(), 2);
    }

    #[test]
    fn degenerate_queries_find_nothing() {
        let g = embedded();
        assert!(g.nearby(34.0, -118.0, 0.0, 20).is_empty());
        assert!(g.nearby(34.0, -118.0, -5.0, 20).is_empty());
        assert!(g.nearby(34.0, -118.0, f64::NAN, 20).is_empty());
        assert!(g.nearby(f64::NAN, -118.0, 1000.0, 20).is_empty());
        assert!(g.nearby(34.0, -118.0, 50_000.0, 0).is_empty());
    }

    #[test]
    fn haversine_is_symmetric_and_sane() {
        // One degree of latitude is about 111.2 km.
        let d = haversine_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        assert_eq!(haversine_m(10.0, 179.9, 10.0, -179.9), haversine_m(10.0, -179.9, 10.0, 179.9));
        assert!(haversine_m(10.0, 179.9, 10.0, -179.9) < 25_000.0);
    }

    #[test]
    fn place_ids_are_base36() {
        assert_eq!(place_id(0), "GN0");
        assert_eq!(place_id(35), "GNz");
        assert_eq!(place_id(36), "GN10");
        assert_eq!(place_id(171_074), "GN3o02");
    }

    /// Start-up and per-query cost; run with
    /// `cargo test --release --lib index_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn index_timing() {
        let t = std::time::Instant::now();
        let g = Gazetteer::embedded().unwrap();
        let load = t.elapsed();
        let mut rng = Rng(7);
        let queries: Vec<(f64, f64)> = (0..100_000)
            .map(|_| {
                let p = g.place((rng.next_u64() % g.len() as u64) as u32);
                (p.lat.parse().unwrap(), p.lng.parse().unwrap())
            })
            .collect();
        for &radius in &[10_000.0, 50_000.0] {
            let t = std::time::Instant::now();
            let mut found = 0usize;
            for &(lat, lng) in &queries {
                found += g.nearby(lat, lng, radius, 20).len();
            }
            let per = t.elapsed() / queries.len() as u32;
            println!("radius {radius} m: {per:?} per query ({found} hits)");
        }
        let t = std::time::Instant::now();
        for &(lat, lng) in &queries[..200] {
            std::hint::black_box(g.nearby_brute_force(lat, lng, 50_000.0, 20));
        }
        println!("brute force: {:?} per query", t.elapsed() / 200);
        println!("load + index: {load:?}");
    }

    #[test]
    fn broken_files_are_refused_with_the_line() {
        let header = "name\tlat\tlng\tcountry\tadmin1\tadmin2\n";
        let bad_line = |body: &str| match Gazetteer::from_tsv(format!("{header}A\t1\t2\tX\tY\tZ\n{body}")) {
            Err(GazetteerError::BadLine { number, problem }) => (number, problem),
            Err(other) => panic!("{body:?}: {other:?}"),
            Ok(_) => panic!("{body:?} was accepted"),
        };
        assert_eq!(bad_line("B\t1\t2\n"), (3, "expected 6 fields"));
        assert_eq!(bad_line("B\tnorth\t2\tX\tY\tZ\n"), (3, "bad latitude"));
        assert_eq!(bad_line("B\t1\teast\tX\tY\tZ\n"), (3, "bad longitude"));
        assert_eq!(bad_line("B\t91\t2\tX\tY\tZ\n"), (3, "coordinates out of range"));
        let err = Gazetteer::from_tsv("city\tx\n".into()).err().expect("a bad header is refused");
        assert!(matches!(&err, GazetteerError::BadHeader { line } if line == "city\tx"), "{err:?}");
        assert_eq!(err.to_string(), "gazetteer header is not name, lat, lng, ...: \"city\\tx\"");
        let err = Gazetteer::from_tsv(format!("{header}B\t1\t2\n")).err().unwrap();
        assert_eq!(err.to_string(), "gazetteer line 2: expected 6 fields");
    }
}
