use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = sandboxd::cli::Cli::parse();
    match sandboxd::cli::dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sandboxd: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
