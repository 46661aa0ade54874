//! Which container and Kubernetes pod a process runs in, read from its cgroup path
//! (`/proc/PID/cgroup`) as Parca and the OpenTelemetry profiler read it. Container runtimes and the
//! kubelet name the cgroups they create after the container id and the pod uid, in a few layouts:
//!
//! | who | cgroup path |
//! |---|---|
//! | kubelet, systemd driver | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid, _ for ->.slice/cri-containerd-<id>.scope` |
//! | kubelet, cgroupfs driver | `kubepods/burstable/pod<uid>/<id>` (Guaranteed pods sit right under `kubepods`) |
//! | Docker | `system.slice/docker-<id>.scope`, or `docker/<id>` with the cgroupfs driver |
//! | Podman | `machine.slice/libpod-<id>.scope`, under `user.slice/...` when rootless |
//! | CRI-O | `crio-<id>.scope` (`crio-conmon-<id>.scope` is its monitor, not the container) |
//!
//! Pod and namespace names are not in the path: the pod is known by its uid, and by its name where
//! the runtime's state says it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Container {
    /// The container id, 64 hex digits, as `docker ps --no-trunc` and `crictl ps` show it.
    /// Empty for a process of a pod outside any container (a pod's own cgroup).
    pub id: String,
    /// containerd, cri-o, docker or podman, when the path names it.
    pub runtime: Option<String>,
    /// The Kubernetes pod's uid, as the API writes it (with dashes).
    pub pod_uid: Option<String>,
    /// The pod's QoS class: guaranteed, burstable or besteffort.
    pub qos_class: Option<String>,
    /// The container's name, the pod's and its namespace: not in the cgroup path, but in the
    /// runtime's state where it is readable (see the collector's `runtimes`).
    pub name: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
}

impl Container {
    /// The container of a process from the text of its `/proc/PID/cgroup`: the first hierarchy,
    /// cgroup v2 (`0::`) or v1, whose path names a container, else a pod. `None` outside both.
    pub fn from_proc_cgroup(text: &str) -> Option<Container> {
        let paths = text.lines().filter_map(|line| line.splitn(3, ':').nth(2));
        let found: Vec<Container> = paths.filter_map(Container::from_cgroup_path).collect();
        found.iter().find(|c| !c.id.is_empty()).or_else(|| found.first()).cloned()
    }

    /// The container (or pod) that one cgroup path names, if any.
    pub fn from_cgroup_path(path: &str) -> Option<Container> {
        let mut container = Container::default();
        let mut in_kubepods = false;
        let mut parent = "";
        for component in path.split('/').filter(|c| !c.is_empty()) {
            // `kubelet-kubepods.slice`: a kubelet nested in a container (kind, k3d).
            if component == "kubepods" || component.ends_with("kubepods.slice") {
                in_kubepods = true;
                container.qos_class = Some("guaranteed".into());
            } else if in_kubepods && let Some(qos) = qos_class(component) {
                container.qos_class = Some(qos.into());
            }
            if in_kubepods && let Some(uid) = pod_uid(component) {
                container.pod_uid = Some(uid);
            }
            if let Some((id, runtime)) = container_id(component, parent) {
                container.id = id.to_string();
                container.runtime = runtime.map(String::from);
            }
            parent = component;
        }
        if container.pod_uid.is_none() {
            container.qos_class = None;
        }
        (!container.id.is_empty() || container.pod_uid.is_some()).then_some(container)
    }

    /// The first 12 digits of the id, as `docker ps` shows it.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

/// The QoS class a kubelet cgroup between `kubepods` and the pod stands for.
fn qos_class(component: &str) -> Option<&'static str> {
    let class = match component.find("kubepods-") {
        Some(at) => component[at + "kubepods-".len()..].split(['-', '.']).next().unwrap_or(""),
        None => component,
    };
    ["burstable", "besteffort"].into_iter().find(|&known| class == known)
}

/// The pod uid of a pod's cgroup: `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid with _>.slice`
/// (systemd). Static pods' uids are 32 hex digits, others UUIDs.
fn pod_uid(component: &str) -> Option<String> {
    let uid = match component.strip_suffix(".slice") {
        Some(unit) => unit.rsplit_once("-pod")?.1.replace('_', "-"),
        None => component.strip_prefix("pod")?.to_string(),
    };
    let is_uuid = uid.len() == 36
        && uid.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c.is_ascii_hexdigit() });
    let is_static_pod_hash = uid.len() == 32 && uid.chars().all(|c| c.is_ascii_hexdigit());
    (is_uuid || is_static_pod_hash).then_some(uid)
}

/// Runtimes by the prefix of the systemd scope (or cgroupfs directory) they create.
const RUNTIME_PREFIXES: [(&str, &str); 5] = [
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("docker-", "docker"),
    ("libpod-", "podman"),
    ("nerdctl-", "containerd"),
];

/// The container id a cgroup path component names, and the runtime where the layout says.
fn container_id<'a>(component: &'a str, parent: &str) -> Option<(&'a str, Option<&'static str>)> {
    let unit = component.strip_suffix(".scope").unwrap_or(component);
    if is_container_id(unit) {
        // A bare id: Docker's cgroupfs layout names its parent; the kubelet's does not.
        return Some((unit, (parent == "docker").then_some("docker")));
    }
    let (id, runtime) =
        RUNTIME_PREFIXES.iter().find_map(|&(prefix, runtime)| Some((unit.strip_prefix(prefix)?, runtime)))?;
    // `crio-conmon-<id>` and `libpod-conmon-<id>` are the runtime's monitor, not the container.
    is_container_id(id).then_some((id, Some(runtime)))
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4a5c3e09bd1f8c2e7a6b5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a";
    const UID: &str = "7d2b8c1e-5f3a-4b6c-9d0e-1a2b3c4d5e6f";

    fn parsed(path: &str) -> Option<Container> {
        Container::from_cgroup_path(path)
    }

    /// The container expected: id, runtime, pod uid, QoS class (an `Option`, as `parsed` gives).
    #[expect(clippy::unnecessary_wraps, reason = "compared with what the parser returns")]
    fn c(id: &str, runtime: Option<&str>, pod_uid: Option<&str>, qos_class: Option<&str>) -> Option<Container> {
        let owned = |s: Option<&str>| s.map(String::from);
        Some(Container {
            id: id.into(),
            runtime: owned(runtime),
            pod_uid: owned(pod_uid),
            qos_class: owned(qos_class),
            ..Default::default()
        })
    }

    #[test]
    fn kubelet_systemd_driver() {
        let uid_ = UID.replace('-', "_");
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            )),
            c(ID, Some("containerd"), Some(UID), Some("burstable"))
        );
        assert_eq!(
            parsed(&format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope")),
            c(ID, Some("cri-o"), Some(UID), Some("guaranteed"))
        );
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
            )),
            c(ID, Some("docker"), Some(UID), Some("besteffort"))
        );
    }

    #[test]
    fn kubelet_nested_in_a_container() {
        let uid_ = UID.replace('-', "_");
        let node = "1111111111111111111111111111111111111111111111111111111111111111";
        assert_eq!(
            parsed(&format!(
                "/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
            )),
            c(ID, Some("containerd"), Some(UID), Some("besteffort"))
        );
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        assert_eq!(parsed(&format!("/kubepods/burstable/pod{UID}/{ID}")), c(ID, None, Some(UID), Some("burstable")));
        assert_eq!(parsed(&format!("/kubepods/pod{UID}/{ID}")), c(ID, None, Some(UID), Some("guaranteed")));
        assert_eq!(
            parsed(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            c(ID, Some("cri-o"), Some(UID), Some("besteffort"))
        );
    }

    #[test]
    fn a_pods_own_cgroup_and_its_runtime_monitor_name_the_pod_only() {
        let static_pod = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            parsed(&format!("/kubepods/burstable/pod{static_pod}")),
            c("", None, Some(static_pod), Some("burstable"))
        );
        let uid_ = UID.replace('-', "_");
        assert_eq!(
            parsed(&format!("/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope")),
            c("", None, Some(UID), Some("guaranteed"))
        );
    }

    #[test]
    fn docker_podman_and_others_outside_kubernetes() {
        assert_eq!(parsed(&format!("/system.slice/docker-{ID}.scope")), c(ID, Some("docker"), None, None));
        assert_eq!(parsed(&format!("/docker/{ID}")), c(ID, Some("docker"), None, None));
        assert_eq!(parsed(&format!("/machine.slice/libpod-{ID}.scope")), c(ID, Some("podman"), None, None));
        assert_eq!(
            parsed(&format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container")),
            c(ID, Some("podman"), None, None)
        );
        assert_eq!(parsed(&format!("/machine.slice/libpod-conmon-{ID}.scope")), None);
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/nginx.service",
            "/process_api/85b71b02cb1e1dee045d4b5ee2c3f49e",
            &format!("/system.slice/docker-{}.scope", &ID[1..]),
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            // A pod-like name outside kubepods is someone else's.
            &format!("/pod{UID}"),
            "/kubepods/burstable/podnot-a-uid",
        ] {
            assert_eq!(parsed(path), None, "{path}");
        }
    }

    #[test]
    fn proc_cgroup_of_a_hybrid_host_prefers_the_hierarchy_that_names_the_container() {
        let uid_ = UID.replace('-', "_");
        let pod = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
        let text = format!(
            "12:memory:{pod}\n11:cpu,cpuacct:{pod}/cri-containerd-{ID}.scope\n1:name=systemd:/\n0::/init.scope\n"
        );
        let container = Container::from_proc_cgroup(&text).unwrap();
        assert_eq!((container.id.as_str(), container.pod_uid.as_deref()), (ID, Some(UID)));
        assert_eq!(container.short_id(), &ID[..12]);
        assert_eq!(Container::from_proc_cgroup(&format!("0::{pod}\n")).unwrap().id, "");
        assert_eq!(Container::from_proc_cgroup("0::/\n1:name=systemd:/user.slice\n"), None);
        assert_eq!(Container::from_proc_cgroup("garbage\n\n::\n"), None);
    }
}
