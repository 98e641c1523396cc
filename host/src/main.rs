//! The `portcullis` binary: see `portcullis --help`.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    portcullis_host::cli::main()
}
