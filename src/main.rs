//! The `ablate` binary: command line only (see `ablate::cli`).

/// mimalloc keeps freed memory for reuse: the training step frees and allocates
/// activation-sized buffers every op, which glibc's malloc hands back to the kernel.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h): how long freed memory stays mapped.
#[cfg(feature = "mimalloc")]
const MI_OPTION_PURGE_DELAY: i32 = 15;

#[cfg(feature = "mimalloc")]
extern "C" {
    fn mi_option_set(option: i32, value: std::os::raw::c_long);
}

/// Keep freed memory mapped (no purge): a training step frees and re-allocates the same
/// large buffers every op, and each purge makes the next use fault in fresh zeroed pages
/// (a third of a step's samples were in the kernel clearing pages). Costs peak RSS.
fn tune_allocator() {
    #[cfg(feature = "mimalloc")]
    // SAFETY: sets a process-wide option; mimalloc reads it at purge time
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, -1)
    };
}

/// Die quietly on a closed pipe (`ablate plan ... | head`), as Unix tools do, instead of
/// panicking in `println!`: Rust ignores SIGPIPE by default.
fn default_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: std::os::raw::c_int, handler: usize) -> usize;
        }
        const SIGPIPE: std::os::raw::c_int = 13; // Linux, macOS and the BSDs
        const SIG_DFL: usize = 0;
        // SAFETY: restores the default disposition of one signal before any thread starts
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

fn main() {
    default_sigpipe();
    tune_allocator();
    std::process::exit(ablate::cli::main(ablate::stages::registry()));
}
