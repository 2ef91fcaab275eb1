//! The `sessiongate` binary: everything lives in the library; this only hands over the
//! process' arguments and turns the outcome into an exit code.

#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    sessiongate::cli::main()
}
