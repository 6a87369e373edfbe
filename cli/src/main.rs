//! natctl's binary: the command line is the library's ([`natctl::main`]).

fn main() -> std::process::ExitCode {
    natctl::main()
}
