//! The load generator (being written).

/// `herd load`.
pub fn cli(_args: &[String]) -> i32 {
    eprintln!("herd load: not built yet");
    2
}
