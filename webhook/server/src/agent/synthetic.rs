//! A host's `/proc`, `/sys` and `/dev` as the agent reads them, written under a directory:
//! for tests, benchmarks and the demo, where no Intel GPU exists.
//!
//! The layout is the kernel's: `sys/class/drm/cardN` links to the card under its PCI device,
//! whose `driver` links into `bus/pci/drivers`; `proc/<pid>/fd/<n>` are symlinks showing what
//! the kernel shows (`/dev/dri/renderD128`, `anon_inode:[eventfd]`, `socket:[…]`); fdinfo is
//! written as each driver writes it. Files are replaced by rename, as the kernel never shows a
//! half-written fdinfo.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// A synthetic host rooted at a directory.
#[derive(Debug, Clone)]
pub struct SyntheticHost {
    root: PathBuf,
}

/// One card to create.
#[derive(Debug, Clone)]
pub struct SyntheticCard<'a> {
    /// N in `cardN`; the render node is `renderD(128 + N)`.
    pub index: u32,
    pub pci_address: &'a str,
    /// `i915` or `xe`, or any other driver name.
    pub driver: &'a str,
    /// Whether `/dev/dri/renderD*` exists.
    pub device_node: bool,
}

impl SyntheticCard<'_> {
    pub fn render_node(&self) -> String {
        format!("renderD{}", 128 + self.index)
    }
}

impl SyntheticHost {
    pub fn create(root: impl Into<PathBuf>) -> io::Result<Self> {
        let host = Self { root: root.into() };
        for dir in ["proc", "sys/class/drm", "dev/dri"] {
            fs::create_dir_all(host.root.join(dir))?;
        }
        Ok(host)
    }

    pub fn proc_root(&self) -> PathBuf {
        self.root.join("proc")
    }

    pub fn sys_root(&self) -> PathBuf {
        self.root.join("sys")
    }

    pub fn dev_root(&self) -> PathBuf {
        self.root.join("dev")
    }

    /// The flags that point `jellyfin-ha agent` at this host.
    pub fn agent_args(&self) -> Vec<OsString> {
        [
            ("--proc-root", self.proc_root()),
            ("--sys-root", self.sys_root()),
            ("--dev-root", self.dev_root()),
        ]
        .into_iter()
        .flat_map(|(flag, dir)| [OsString::from(flag), dir.into_os_string()])
        .collect()
    }

    pub fn add_card(&self, card: &SyntheticCard<'_>) -> io::Result<()> {
        let sys = self.sys_root();
        let name = format!("card{}", card.index);
        let pci = format!("devices/pci0000:00/{}", card.pci_address);
        let device = sys.join(&pci);
        fs::create_dir_all(device.join("drm").join(&name))?;
        fs::create_dir_all(device.join("drm").join(card.render_node()))?;
        fs::create_dir_all(sys.join("bus/pci/drivers").join(card.driver))?;
        replace_link(
            &format!("../../../bus/pci/drivers/{}", card.driver),
            &device.join("driver"),
        )?;
        replace_link(
            &format!("../../../{}", card.pci_address),
            &device.join("drm").join(&name).join("device"),
        )?;
        replace_link(
            &format!("../../{pci}/drm/{name}"),
            &sys.join("class/drm").join(&name),
        )?;
        let node = self.dev_root().join("dri").join(card.render_node());
        if card.device_node {
            fs::write(node, "")?;
        } else if node.exists() {
            fs::remove_file(node)?;
        }
        Ok(())
    }

    /// A process in `pod_uid`'s cgroup (cgroup v2, systemd driver), or outside any pod.
    pub fn add_process(&self, pid: u32, pod_uid: Option<&str>) -> io::Result<()> {
        let dir = self.proc_root().join(pid.to_string());
        fs::create_dir_all(dir.join("fd"))?;
        fs::create_dir_all(dir.join("fdinfo"))?;
        let cgroup = match pod_uid {
            Some(uid) => format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{pid:064x}.scope\n",
                uid.replace('-', "_")
            ),
            None => "0::/system.slice/containerd.service\n".to_string(),
        };
        write_atomically(&dir.join("cgroup"), &cgroup)
    }

    /// An fd of `pid` whose link shows `target`, with `fdinfo` as its fdinfo text.
    pub fn add_fd(&self, pid: u32, fd: u32, target: &str, fdinfo: &str) -> io::Result<()> {
        let dir = self.proc_root().join(pid.to_string());
        replace_link(target, &dir.join("fd").join(fd.to_string()))?;
        self.set_fdinfo(pid, fd, fdinfo)
    }

    pub fn set_fdinfo(&self, pid: u32, fd: u32, fdinfo: &str) -> io::Result<()> {
        let path = self
            .proc_root()
            .join(pid.to_string())
            .join("fdinfo")
            .join(fd.to_string());
        write_atomically(&path, fdinfo)
    }

    /// The process exits: its whole directory goes.
    pub fn remove_process(&self, pid: u32) -> io::Result<()> {
        fs::remove_dir_all(self.proc_root().join(pid.to_string()))
    }
}

/// fdinfo of an i915 client: busy ns per engine class; `capacity` for classes with more than
/// one engine.
pub fn i915_fdinfo(
    client_id: u64,
    pdev: &str,
    busy_ns: &[(&str, u64)],
    capacity: &[(&str, u32)],
) -> String {
    let mut text = format!(
        "pos:\t0\nflags:\t02100002\nmnt_id:\t26\nino:\t1124\ndrm-driver:\ti915\n\
         drm-client-id:\t{client_id}\ndrm-pdev:\t{pdev}\ndrm-total-system:\t0\n\
         drm-resident-system:\t0\n"
    );
    for (class, ns) in busy_ns {
        let _ = writeln!(text, "drm-engine-{class}:\t{ns} ns");
        if let Some((_, n)) = capacity.iter().find(|(c, _)| c == class) {
            let _ = writeln!(text, "drm-engine-capacity-{class}:\t{n}");
        }
    }
    text
}

/// fdinfo of an xe client: busy cycles per engine class against the GPU's `total_cycles`.
pub fn xe_fdinfo(client_id: u64, pdev: &str, cycles: &[(&str, u64)], total_cycles: u64) -> String {
    let mut text = format!(
        "pos:\t0\nflags:\t0100002\nmnt_id:\t26\nino:\t685\ndrm-driver:\txe\n\
         drm-client-id:\t{client_id}\ndrm-pdev:\t{pdev}\ndrm-total-gtt:\t192 KiB\n\
         drm-resident-gtt:\t192 KiB\n"
    );
    for (class, busy) in cycles {
        let _ = writeln!(
            text,
            "drm-cycles-{class}:\t{busy}\ndrm-total-cycles-{class}:\t{total_cycles}"
        );
    }
    text
}

fn replace_link(target: &str, link: &Path) -> io::Result<()> {
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link)?;
    }
    symlink(target, link)
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, path)
}
