// The static image links musl, whose allocator made the webhook serve 3.5 times fewer reviews
// a second than it does through mimalloc (README, Speed). Transparent huge pages are left off
// (`no_thp`): with them every role's resident memory grew by about 9 MiB.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    jellyfin_ha::cli::main()
}
