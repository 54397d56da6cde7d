//! Which pod a process belongs to, from `/proc/<pid>/cgroup`.
//!
//! The kubelet puts every pod in a cgroup named after its UID. With the cgroupfs driver the
//! path holds `pod<uid>` (`/kubepods/burstable/pod1b2c.../<container>`); with the systemd
//! driver a slice `kubepods-burstable-pod<uid with _ for ->.slice`. Both hold under cgroup v1
//! (one line per hierarchy) and v2 (one `0::` line), under nesting such as kind's
//! `kubelet-kubepods-...` slices, and as a path relative to the reader's own cgroup namespace
//! (`0::/../../kubepods-burstable-pod....slice/...`), as a containerised agent sees it.

/// The UID of the pod whose cgroup the process is in, in its API form (with `-`). `None` for a
/// process outside any pod, or text that names none.
pub fn pod_uid(cgroup_file: &str) -> Option<String> {
    cgroup_file
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .find_map(pod_uid_in_segment)
}

fn pod_uid_in_segment(segment: &str) -> Option<String> {
    let name = segment.strip_suffix(".slice").unwrap_or(segment);
    let candidate = match name.strip_prefix("pod") {
        Some(rest) => rest,
        None => name.rsplit_once("-pod")?.1,
    };
    let uid = candidate.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// The 8-4-4-4-12 hex form Kubernetes gives pod UIDs.
fn is_uid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    const UID: &str = "1b2c3d4e-aaaa-4bbb-8ccc-0123456789ab";

    #[rstest]
    #[case::v2_systemd(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_aaaa_4bbb_8ccc_0123456789ab.slice/cri-containerd-0f3e.scope\n"
    )]
    #[case::v2_systemd_guaranteed(
        "0::/kubepods.slice/kubepods-pod1b2c3d4e_aaaa_4bbb_8ccc_0123456789ab.slice/crio-0f3e.scope\n"
    )]
    #[case::v2_cgroupfs("0::/kubepods/besteffort/pod1b2c3d4e-aaaa-4bbb-8ccc-0123456789ab/0f3e9a\n")]
    #[case::v1_cgroupfs(
        "12:pids:/kubepods/burstable/pod1b2c3d4e-aaaa-4bbb-8ccc-0123456789ab/0f3e\n11:cpu,cpuacct:/kubepods/burstable/pod1b2c3d4e-aaaa-4bbb-8ccc-0123456789ab/0f3e\n0::/\n"
    )]
    #[case::v1_systemd(
        "10:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_aaaa_4bbb_8ccc_0123456789ab.slice/docker-0f3e.scope\n1:name=systemd:/kubepods.slice\n"
    )]
    #[case::seen_from_another_cgroup_namespace(
        "0::/../../kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_aaaa_4bbb_8ccc_0123456789ab.slice/cri-containerd-0f3e.scope\n"
    )]
    #[case::kind_nested(
        "0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod1b2c3d4e_aaaa_4bbb_8ccc_0123456789ab.slice/cri-containerd-1.scope\n"
    )]
    fn finds_the_pod_uid(#[case] text: &str) {
        assert_eq!(pod_uid(text).as_deref(), Some(UID));
    }

    #[rstest]
    #[case::host_process("0::/system.slice/jellyfin.service\n")]
    #[case::root("0::/\n")]
    #[case::not_a_uid("0::/kubepods/burstable/podnotauid/0f3e\n")]
    #[case::junk("garbage\n\n::\n")]
    #[case::cut_short("0::/kubepods/burstable/pod1b2c3d4e-aaaa-4bbb")]
    fn finds_no_pod(#[case] text: &str) {
        assert_eq!(pod_uid(text), None);
    }
}
