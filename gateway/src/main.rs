//! The `perch` binary: everything lives in `perch_gateway`.
fn main() -> std::process::ExitCode {
    perch_gateway::cli::main()
}
