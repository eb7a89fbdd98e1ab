//! The `qlab` binary: command-line parsing and wiring; all work lives in the library.

mod cli;

use mimalloc::MiMalloc;

// glibc keeps freed memory; mimalloc returns it, so RSS figures mean what they say.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    qlab::allocator::keep_freed_pages();
    cli::main()
}
