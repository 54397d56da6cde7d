fn main() -> std::process::ExitCode {
    jellyfin_ha::cli::main()
}
