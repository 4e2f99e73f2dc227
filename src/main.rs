//! The `ablate` binary: command line only (see `ablate::cli`).

fn main() {
    std::process::exit(ablate::cli::main(ablate::stages::registry()));
}
