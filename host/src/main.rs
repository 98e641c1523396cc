//! The `portcullis` binary: see `portcullis --help`.

fn main() -> std::process::ExitCode {
    portcullis_host::cli::main()
}
