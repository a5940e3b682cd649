//! `kvmprof`: parse the command line, run one command, exit with its code. The command line
//! lives in `cli/`, part of this binary only: the library knows nothing of clap.
use clap::Parser;

mod cli;

fn main() {
    let code = match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvmprof: error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
