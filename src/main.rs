use clap::Parser;

fn main() {
    // clap prints its own usage errors and exits with 2.
    let cli = skprof::cli::Cli::parse();
    if let Err(err) = skprof::cli::run(cli) {
        eprintln!("skprof: error: {}", skprof::error::one_line(&err));
        std::process::exit(skprof::error::exit_code(&err));
    }
}
