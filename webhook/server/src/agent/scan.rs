//! Reading one sample from the host's trees: the cards and their health from `/sys` and
//! `/dev`, the DRM clients from `/proc`.
//!
//! Processes come and go while the scan runs, and some cannot be read: every such file is
//! skipped, never an error. Only fds whose link points into `/dev/dri/` have their fdinfo
//! read, so a scan costs one `readlink` per fd and one small read per DRM fd.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use jellyfin_ha_core::busyness::fdinfo::{self, engine_classes};
use jellyfin_ha_core::busyness::{CardReport, SeenClient, cgroup};

/// Where the host's trees are mounted.
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
    pub dev: PathBuf,
}

/// What a scan of `/proc` could not read, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanCounts {
    pub drm_fds: u64,
    /// Files that exist but could not be read (permissions); a process that exited is not
    /// counted.
    pub denied: u64,
}

/// Every DRM card (`cardN`, not its connectors) with its health; busyness left empty.
pub fn cards(roots: &Roots) -> Vec<CardReport> {
    let class = roots.sys.join("class/drm");
    let Ok(entries) = fs::read_dir(&class) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix("card")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    names.sort_by_key(|name| (name.len(), name.clone()));
    names
        .into_iter()
        .map(|name| card(roots, &class.join(&name), name))
        .collect()
}

fn card(roots: &Roots, dir: &Path, card: String) -> CardReport {
    let device = dir.join("device");
    let pci_address = link_name(&device);
    let driver = link_name(&device.join("driver"));
    let render_node = fs::read_dir(device.join("drm")).ok().and_then(|entries| {
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .find(|name| name.starts_with("renderD"))
    });
    let mut render_gid = None;
    let mut unchecked = None;
    let problem = match (&driver, &render_node) {
        (None, _) => Some("no driver is bound to the device".to_string()),
        (Some(driver), _) if engine_classes(driver).is_empty() => {
            Some(format!("driver {driver} is neither i915 nor xe"))
        }
        (_, None) => Some("the card has no render node".to_string()),
        (Some(_), Some(node)) => {
            let path = roots.dev.join("dri").join(node);
            match fs::metadata(&path) {
                Err(e) => Some(format!("{}: {e}", path.display())),
                Ok(meta) => {
                    render_gid = Some(meta.gid());
                    // What a transcoder does first; a wedged or unbound device fails here.
                    match OpenOptions::new().read(true).write(true).open(&path) {
                        Ok(_) => None,
                        // The agent's own lack of device access says nothing of the card.
                        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
                            unchecked =
                                Some(format!("{} not opened to check it: {e}", path.display()));
                            None
                        }
                        Err(e) => Some(format!("{} does not open: {e}", path.display())),
                    }
                }
            }
        }
    };
    CardReport {
        card,
        driver,
        pci_address,
        render_node,
        render_gid,
        usable: problem.is_none(),
        problem: problem.or(unchecked),
        engines: Default::default(),
    }
}

/// The last path component of a symlink's target, as sysfs links name devices and drivers.
fn link_name(link: &Path) -> Option<String> {
    let target = fs::read_link(link).ok()?;
    target.file_name()?.to_str().map(str::to_string)
}

/// The DRM clients behind every process's fds, matched to `cards` by `drm-pdev` (or by the
/// render node the fd opened, for a driver that prints no `drm-pdev`). A process's pod is
/// read from its cgroup only when it holds a DRM fd.
pub fn clients(roots: &Roots, cards: &[CardReport]) -> (Vec<SeenClient>, ScanCounts) {
    let by_pdev: HashMap<&str, &str> = cards
        .iter()
        .filter_map(|c| Some((c.pci_address.as_deref()?, c.card.as_str())))
        .collect();
    let by_node: HashMap<&str, &str> = cards
        .iter()
        .filter_map(|c| Some((c.render_node.as_deref()?, c.card.as_str())))
        .chain(cards.iter().map(|c| (c.card.as_str(), c.card.as_str())))
        .collect();
    let mut counts = ScanCounts::default();
    let mut seen = Vec::new();
    let Ok(entries) = fs::read_dir(&roots.proc) else {
        return (seen, counts);
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect();
    // In pid order, so a client shared between processes is attributed the same way each time.
    pids.sort_unstable();
    let mut link = PathBuf::new();
    for pid in pids {
        let process = roots.proc.join(pid.to_string());
        let fd_dir = process.join("fd");
        let fds = match fs::read_dir(&fd_dir) {
            Ok(fds) => fds,
            Err(e) => {
                counts.denied += u64::from(e.kind() == ErrorKind::PermissionDenied);
                continue;
            }
        };
        let mut pod_uid: Option<Option<String>> = None;
        for fd in fds.flatten() {
            link.clone_from(&fd_dir);
            link.push(fd.file_name());
            let Ok(target) = fs::read_link(&link) else {
                continue;
            };
            let Ok(device) = target.strip_prefix("/dev/dri") else {
                continue;
            };
            counts.drm_fds += 1;
            let text = match fs::read_to_string(process.join("fdinfo").join(fd.file_name())) {
                Ok(text) => text,
                Err(e) => {
                    counts.denied += u64::from(e.kind() == ErrorKind::PermissionDenied);
                    continue;
                }
            };
            let Some(client) = fdinfo::parse(&text) else {
                continue;
            };
            // `renderD128`, or `renderD128 (deleted)` once the device node was removed.
            let node = device.to_str().and_then(|d| d.split(' ').next());
            let card = client
                .pdev
                .as_deref()
                .and_then(|pdev| by_pdev.get(pdev))
                .or_else(|| node.and_then(|node| by_node.get(node)));
            let Some(card) = card else {
                continue;
            };
            let pod_uid = pod_uid
                .get_or_insert_with(|| {
                    fs::read_to_string(process.join("cgroup"))
                        .ok()
                        .and_then(|text| cgroup::pod_uid(&text))
                })
                .clone();
            seen.push(SeenClient {
                card: (*card).to_string(),
                client,
                pod_uid,
            });
        }
    }
    (seen, counts)
}
