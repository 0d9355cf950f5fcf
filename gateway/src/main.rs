//! The `perch` binary.

// Loading a component on a cache miss and dropping an evicted one make and
// free many small allocations of mixed sizes; glibc's allocator spent a
// quarter of the server's time on them (consolidating fast bins among
// others) with thousands of functions deployed. mimalloc keeps that cheap.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    perch_gateway::cli::main()
}
