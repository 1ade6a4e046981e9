fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.get(1).map(|s| s.as_str()) == Some("load") {
        std::process::exit(herd::load::cli(&a[2..]));
    }
}
