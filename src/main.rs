//! The `sessiongate` binary: everything lives in the library; this only hands over the
//! process' arguments and turns the outcome into an exit code.

#![forbid(unsafe_code)]

/// mimalloc, not the system allocator: a validation allocates and frees a few dozen small
/// buffers (HTTP/2 frames, the request, the verdict, the response), and glibc's malloc spent
/// ~13 % of a server-bound opaque validation on them, consolidating and unlinking chunks
/// (profiled with `perf`, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sessiongate::cli::main()
}
