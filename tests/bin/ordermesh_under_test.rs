//! The `ordermesh` binary, built as a target of this package so that `cargo test` builds it
//! from the code under test before any test here runs, and tells the tests where it is
//! (`CARGO_BIN_EXE_ordermesh-under-test`). A binary of another package (the launcher's) is
//! not built by `cargo test`, and a leftover one may be stale.

fn main() -> std::process::ExitCode {
    ordermesh::cli::main()
}
