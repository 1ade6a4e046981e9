//! The local Places-compatible HTTPS service (being written).

/// `herd places`.
pub fn cli(_args: &[String]) -> i32 {
    eprintln!("herd places: not built yet");
    2
}
