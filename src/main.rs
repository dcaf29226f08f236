//! The `ddrm` binary: a thin layer over the library's command line.

/// Large buffers (embedding tables, activations) on transparent huge pages, and every buffer
/// of 4 KiB or more on a cache line.
#[global_allocator]
static ALLOC: ddrm::util::hugepage::HugePageAlloc = ddrm::util::hugepage::HugePageAlloc;

fn main() {
    std::process::exit(ddrm::cli::main());
}
