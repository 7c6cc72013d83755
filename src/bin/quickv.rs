//! The `quickv` binary: parse arguments, hand over to the library.

/// jemalloc, as Redis allocates: no per-allocation header and 16-byte size classes, so each of a
/// stored entry's three allocations (flurry's node, its value box, the value) costs its size
/// class and nothing more, and no arena keeps freed space for a thread that will not reuse it.
/// A 1M × 116 B pair holds about 3 % less than with glibc's malloc (docs/benchmarks.md, "What
/// one entry costs"). Build with `--no-default-features` for the system allocator.
#[cfg(all(unix, feature = "jemalloc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    quickv::cli::main()
}
