//! The workloads' claims: whether something moves the volume off a dead node.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;

use super::workload::{Workload, single_node};
use super::{Finding, Snapshot};
use crate::extender::snapshot::VolumeAttachmentInfo;

/// Where a claim's volume comes from.
enum Backing {
    /// A CSI driver (bound volume, or the class's provisioner while unbound).
    Csi(String),
    /// An in-tree network share: any node mounts it.
    Shared(&'static str),
    /// An in-tree volume that lives on one node.
    NodeLocal(&'static str),
    /// A provisioner that is not a CSI driver, or nothing known.
    Other(String),
}

pub(super) fn check(snapshot: &Snapshot, workloads: &[Workload<'_>]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for workload in workloads {
        for name in &workload.claims {
            let subject = format!("{}/{name}", workload.subject());
            let Some(claim) = snapshot
                .claims
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(name.as_str()))
            else {
                findings.push(Finding::fail(
                    "storage/claim",
                    subject,
                    format!("the claim {name} does not exist, so the pod cannot start"),
                    "create the claim, or correct its name in the pod template",
                ));
                continue;
            };
            findings.push(access_mode(claim, &subject));
            findings.extend(attach(snapshot, claim, &subject));
        }
    }
    findings
}

fn access_mode(claim: &PersistentVolumeClaim, subject: &str) -> Finding {
    const CHECK: &str = "storage/access-mode";
    let modes = claim
        .spec
        .as_ref()
        .and_then(|s| s.access_modes.clone())
        .unwrap_or_default()
        .join(",");
    if single_node(claim) {
        Finding::ok(
            CHECK,
            subject,
            format!("{modes}: one node at a time, so the volume must move with the pod"),
        )
    } else {
        Finding::ok(
            CHECK,
            subject,
            format!("{modes}: any node mounts it, so nothing has to move"),
        )
    }
}

fn backing(snapshot: &Snapshot, claim: &PersistentVolumeClaim) -> Backing {
    let spec = claim.spec.as_ref();
    let volume = spec
        .and_then(|s| s.volume_name.as_deref())
        .and_then(|name| {
            snapshot
                .volumes
                .iter()
                .find(|v| v.metadata.name.as_deref() == Some(name))
        })
        .and_then(|v| v.spec.as_ref());
    if let Some(volume) = volume {
        return match volume {
            v if v.csi.is_some() => {
                Backing::Csi(v.csi.as_ref().map(|c| c.driver.clone()).unwrap_or_default())
            }
            v if v.host_path.is_some() => Backing::NodeLocal("hostPath"),
            v if v.local.is_some() => Backing::NodeLocal("local"),
            v if v.nfs.is_some() => Backing::Shared("nfs"),
            v if v.cephfs.is_some() => Backing::Shared("cephfs"),
            _ => Backing::Other("an in-tree volume type".to_string()),
        };
    }
    let class = spec.and_then(|s| s.storage_class_name.as_deref());
    let provisioner = class.and_then(|name| {
        snapshot
            .storage_classes
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .map(|c| c.provisioner.clone())
    });
    match provisioner {
        Some(p)
            if snapshot
                .csi_drivers
                .iter()
                .any(|d| d.metadata.name.as_deref() == Some(p.as_str())) =>
        {
            Backing::Csi(p)
        }
        Some(p) => Backing::Other(format!("provisioner {p}")),
        None => Backing::Other(format!("storage class {}", class.unwrap_or("(none)"))),
    }
}

/// The nodes the claim's volume is attached or attaching to.
fn attached_to(snapshot: &Snapshot, claim: &PersistentVolumeClaim) -> Vec<String> {
    let volume = claim.spec.as_ref().and_then(|s| s.volume_name.as_deref());
    snapshot
        .volume_attachments
        .iter()
        .filter_map(VolumeAttachmentInfo::from_volume_attachment)
        .filter(|a| a.holds_node() && a.pv_name.is_some() && a.pv_name.as_deref() == volume)
        .map(|a| a.node_name)
        .collect()
}

fn attach(snapshot: &Snapshot, claim: &PersistentVolumeClaim, subject: &str) -> Vec<Finding> {
    const CHECK: &str = "storage/attach";
    let single = single_node(claim);
    let driver = match backing(snapshot, claim) {
        Backing::Csi(driver) => driver,
        Backing::Shared(kind) => {
            return vec![Finding::ok(
                CHECK,
                subject,
                format!("an in-tree {kind} share: any node mounts it"),
            )];
        }
        Backing::NodeLocal(kind) => {
            return vec![Finding::fail(
                CHECK,
                subject,
                format!("a {kind} volume lives on one node: when it dies, the data stays there"),
                "move the library to replicated storage (Ceph RBD, Longhorn) or a network share",
            )];
        }
        Backing::Other(what) => {
            return vec![Finding::warn(
                CHECK,
                subject,
                format!(
                    "{what}: not a CSI driver known to this cluster, so nothing shows how the volume moves"
                ),
                "use a CSI storage class whose driver attaches (Ceph RBD, Longhorn) or a network share",
            )];
        }
    };
    // Without a CSIDriver object, Kubernetes attaches.
    let attach_required = snapshot
        .csi_drivers
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(driver.as_str()))
        .and_then(|d| d.spec.attach_required)
        .unwrap_or(true);
    let mut findings = vec![match (attach_required, single) {
        (true, _) => Finding::ok(
            CHECK,
            subject,
            format!(
                "CSI driver {driver} attaches ({}): a VolumeAttachment records the node, and \
                 the out-of-service taint detaches it from a dead one at once",
                match attached_to(snapshot, claim).as_slice() {
                    [] => "attached nowhere now".to_string(),
                    nodes => format!("attached to {}", nodes.join(", ")),
                }
            ),
        ),
        (false, false) => Finding::ok(
            CHECK,
            subject,
            format!("CSI driver {driver} has no attach step, and the claim is shared"),
        ),
        (false, true) => Finding::fail(
            CHECK,
            subject,
            format!(
                "CSI driver {driver} has no attach step (attachRequired: false), so no \
                 VolumeAttachment moves the ReadWriteOnce volume: the taint has nothing to \
                 detach and the extender cannot see where it is"
            ),
            "use a storage class whose CSI driver attaches (Ceph RBD, Longhorn), or a \
             ReadWriteMany share",
        ),
    }];
    if driver.ends_with("rbd.csi.ceph.com") || driver.ends_with("cephfs.csi.ceph.com") {
        findings.push(ceph_fencing(snapshot, &driver, subject));
    }
    findings
}

/// Ceph client blocklisting keeps a node that is still running from writing the image; it is
/// protection beside the power-off proof, not a proof itself.
fn ceph_fencing(snapshot: &Snapshot, driver: &str, subject: &str) -> Finding {
    const CHECK: &str = "storage/ceph-fencing";
    match &snapshot.ceph_drivers {
        None => Finding::ok(
            CHECK,
            subject,
            "no csi.ceph.io Driver API (Rook before 1.19, or ceph-csi without its operator): \
             client fencing not checked; jellyfin-ha's power-off proof keeps the volume safe",
        ),
        Some(drivers) => match drivers.iter().find(|d| d.name == driver) {
            Some(d) if d.enable_fencing => Finding::ok(
                CHECK,
                subject,
                format!(
                    "Driver {driver} has enableFencing: the node's Ceph clients are blocklisted on fencing"
                ),
            ),
            _ => Finding::warn(
                CHECK,
                subject,
                format!(
                    "Driver {driver} does not enable fencing: a fenced node's Ceph clients \
                     are not blocklisted"
                ),
                format!("set spec.enableFencing: true on the csi.ceph.io Driver {driver}"),
            ),
        },
    }
}
