//! The Kubernetes client of both roles: from a kubeconfig file (its current context), or by the
//! standard resolution (the in-cluster service account when running in a pod, else `$KUBECONFIG`,
//! else `~/.kube/config`).

use std::path::{Path, PathBuf};

use kube::{Client, Config, config::KubeConfigOptions};

#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    #[error("--kubeconfig {}: cannot read it: {source}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no in-cluster service account ({in_cluster}) and no usable kubeconfig ($KUBECONFIG or ~/.kube/config: {kubeconfig})"
    )]
    Infer {
        in_cluster: kube::config::InClusterError,
        kubeconfig: kube::config::KubeconfigError,
    },
    #[error("cannot make a Kubernetes client: {source}")]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// A client from `kubeconfig` (its current context), or by the standard resolution when None.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig_error = |source| KubeClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|kubeconfig| KubeClientError::Infer {
                    in_cluster,
                    kubeconfig,
                })?,
        },
    };
    Client::try_from(config).map_err(|source| KubeClientError::Client { source })
}
