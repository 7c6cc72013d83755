//! The `quickv` binary: parse arguments, hand over to the library.

fn main() -> std::process::ExitCode {
    quickv::cli::main()
}
