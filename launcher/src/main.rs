//! The `ordermesh` binary: one image, many roles.

fn main() -> std::process::ExitCode {
    ordermesh::cli::main()
}
