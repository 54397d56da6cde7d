//! The node lifecycle verbs of `hack/envtest.sh` (which builds this and execs it):
//!
//! `envtest-node node-add NAME [--gpu-count N | --no-gpu] [--cpu N] [--memory Q]`, and
//! `node-power-off`, `node-power-on`, `node-partition`, `node-reconnect`, `node-bmc`,
//! `node-delete` with a NAME, on the control plane of `ENVTEST_STATE_DIR`.

use jellyfin_ha_e2e::envtest::{Envtest, cli};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match cli::run(&Envtest::from_env(), &args).await {
        Ok(output) => {
            print!("{output}");
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
