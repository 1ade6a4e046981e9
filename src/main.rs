fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.get(1).map(|s| s.as_str()) == Some("places") {
        std::process::exit(herd::places_service::cli(&a[2..]));
    }
}
