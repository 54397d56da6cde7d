//! The cluster connection flags kubectl users expect, for the commands that talk to a live
//! cluster from a workstation (also when run as the kubectl plugin `kubectl jellyfin-ha`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Clone, Default, Args)]
pub struct KubeArgs {
    /// Path to the kubeconfig file; otherwise KUBECONFIG, ~/.kube/config, or the in-cluster
    /// service account.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; its current context when not given.
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// The namespace; the kubeconfig context's namespace when not given.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

impl KubeArgs {
    /// A client as kubectl would connect with these flags. Its `default_namespace()` is
    /// `--namespace` when given.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            ..KubeConfigOptions::default()
        };
        let mut config = match (&self.kubeconfig, &self.context) {
            (Some(path), _) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .with_context(|| format!("using the kubeconfig {}", path.display()))?
            }
            // A context names a kubeconfig entry; there is no in-cluster fallback for it.
            (None, Some(context)) => kube::Config::from_kubeconfig(&options)
                .await
                .with_context(|| format!("using the kubeconfig context {context}"))?,
            (None, None) => kube::Config::infer().await.context(
                "finding a kubeconfig (KUBECONFIG, ~/.kube/config) or in-cluster config",
            )?,
        };
        if let Some(namespace) = &self.namespace {
            config.default_namespace.clone_from(namespace);
        }
        kube::Client::try_from(config).context("creating the Kubernetes client")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const KUBECONFIG: &str = "\
apiVersion: v1
kind: Config
current-context: first
clusters:
- name: one
  cluster: {server: 'https://one.example:6443'}
- name: two
  cluster: {server: 'https://two.example:6443'}
users:
- name: someone
  user: {token: abc}
contexts:
- name: first
  context: {cluster: one, user: someone, namespace: media}
- name: second
  context: {cluster: two, user: someone}
";

    fn kubeconfig_file() -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), KUBECONFIG).unwrap();
        file
    }

    async fn connect(args: KubeArgs) -> kube::Client {
        // Building a client needs a runtime for its service, not a reachable server.
        args.client().await.unwrap()
    }

    #[tokio::test]
    async fn current_context_and_its_namespace_by_default() {
        let file = kubeconfig_file();
        let client = connect(KubeArgs {
            kubeconfig: Some(file.path().to_path_buf()),
            ..KubeArgs::default()
        })
        .await;
        assert_eq!(client.default_namespace(), "media");
    }

    #[tokio::test]
    async fn context_and_namespace_flags_win() {
        let file = kubeconfig_file();
        let args = KubeArgs {
            kubeconfig: Some(file.path().to_path_buf()),
            context: Some("second".to_string()),
            namespace: None,
        };
        assert_eq!(connect(args.clone()).await.default_namespace(), "default");
        let client = connect(KubeArgs {
            namespace: Some("jellyfin".to_string()),
            ..args
        })
        .await;
        assert_eq!(client.default_namespace(), "jellyfin");
    }

    async fn refusal(args: KubeArgs) -> String {
        match args.client().await {
            Ok(_) => String::new(),
            Err(error) => format!("{error:#}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_context_is_a_clear_error() {
        let file = kubeconfig_file();
        let error = refusal(KubeArgs {
            kubeconfig: Some(file.path().to_path_buf()),
            context: Some("nowhere".to_string()),
            namespace: None,
        })
        .await;
        assert!(error.contains("nowhere"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_file_names_the_path() {
        let error = refusal(KubeArgs {
            kubeconfig: Some(PathBuf::from("/nonexistent/kubeconfig")),
            ..KubeArgs::default()
        })
        .await;
        assert!(error.contains("/nonexistent/kubeconfig"), "{error}");
    }
}
