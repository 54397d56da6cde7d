//! The local control plane's PKI, made with jellyfin-ha's own `certs` crate.
//!
//! `envtest-pki DIR`: writes into DIR the cluster CA and the apiserver's serving certificate, the
//! client identities of the admin (`O=system:masters`), the controller-manager and the scheduler
//! (the user names the bootstrap RBAC binds), the front proxy's CA and client, the
//! service-account signing key pair, and the nodes' BMC CA with their one serving certificate.
//! Keys are written readable by the owner only.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use jellyfin_ha_certs::{Authority, Issued, Usage, key_pair};

/// `kubernetes` Service names and 10.96.0.1, its in-cluster ClusterIP.
const APISERVER_NAMES: &[&str] = &[
    "127.0.0.1",
    "10.96.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];
const BMC_NAMES: &[&str] = &["127.0.0.1", "localhost"];

struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn write(&self, file: &str, contents: &str, mode: u32) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .and_then(|mut f| f.write_all(contents.as_bytes()))
            .with_context(|| format!("writing {}", path.display()))
    }

    fn pair(&self, name: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        self.write(&format!("{name}.crt"), cert_pem, 0o644)?;
        self.write(&format!("{name}.key"), key_pem, 0o600)
    }

    fn authority(&self, name: &str, common_name: &str) -> anyhow::Result<Authority> {
        let ca = Authority::new(common_name)?;
        self.pair(name, ca.cert_pem(), &ca.key_pem())?;
        Ok(ca)
    }

    fn issued(&self, name: &str, issued: Issued) -> anyhow::Result<()> {
        self.pair(name, &issued.cert_pem, &issued.key_pem)
    }
}

fn names(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).context("usage: envtest-pki DIR")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {dir}"))?;
    let pki = Pki {
        dir: Path::new(&dir).to_path_buf(),
    };

    let ca = pki.authority("ca", "jellyfin-ha-envtest-ca")?;
    let apiserver_names = names(APISERVER_NAMES);
    pki.issued(
        "apiserver",
        ca.issue("kube-apiserver", None, Usage::Server(&apiserver_names))?,
    )?;
    let clients = [
        ("admin", "envtest-admin", Some("system:masters")),
        ("controller-manager", "system:kube-controller-manager", None),
        ("scheduler", "system:kube-scheduler", None),
    ];
    for (name, user, group) in clients {
        pki.issued(name, ca.issue(user, group, Usage::Client)?)?;
    }

    // Without a front proxy identity every component that reads
    // extension-apiserver-authentication logs errors.
    let front_proxy = pki.authority("front-proxy-ca", "jellyfin-ha-envtest-front-proxy-ca")?;
    pki.issued(
        "front-proxy-client",
        front_proxy.issue("front-proxy-client", None, Usage::Client)?,
    )?;

    let (private, public) = key_pair()?;
    pki.write("sa.key", &private, 0o600)?;
    pki.write("sa.pub", &public, 0o644)?;

    // The BMCs' CA is their own: what a fencer trusts for Redfish need not let it trust the
    // apiserver's CA.
    let bmc = pki.authority("bmc-ca", "jellyfin-ha-envtest-bmc-ca")?;
    let bmc_names = names(BMC_NAMES);
    pki.issued(
        "bmc",
        bmc.issue("envtest-bmc", None, Usage::Server(&bmc_names))?,
    )?;
    Ok(())
}
