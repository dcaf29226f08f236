//! The `ddrm` binary: a thin layer over the library's command line.
fn main() {
    std::process::exit(ddrm::cli::main());
}
