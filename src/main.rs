//! The `ablate` binary: command line only (see `ablate::cli`).

/// mimalloc keeps freed memory for reuse: the training step frees and allocates
/// activation-sized buffers every op, which glibc's malloc hands back to the kernel.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(ablate::cli::main(ablate::stages::registry()));
}
