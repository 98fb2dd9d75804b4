//! `cargo bench -p coil-data`: preprocess tokens/s and loader samples/s (see `coil_data::bench`).

fn main() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a temp dir: {e}");
            std::process::exit(1);
        }
    };
    let opts = coil_data::bench::BenchOptions::default();
    match coil_data::bench::run(&opts, dir.path()) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("benchmark failed: {e}");
            std::process::exit(1);
        }
    }
}
