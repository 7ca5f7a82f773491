//! The `hookbridge` binary. The commands live in the library, under [`hookbridge::cli`].

fn main() -> std::process::ExitCode {
    hookbridge::cli::main()
}
