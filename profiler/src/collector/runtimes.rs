//! Container, pod and namespace names, which cgroup paths do not hold, from the state the container
//! runtimes keep on the host: each container's OCI config (containerd, CRI-O) or Docker's own
//! config, whose annotations or labels the kubelet fills (`io.kubernetes.pod.name` and kin). Read
//! through /proc/1/root where it can be read, so that a profiler in a DaemonSet pod with the host's
//! pid namespace reads the host's files (else through /); once per container, whose names never
//! change.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde_json::Value;

use crate::recording::Container;

/// The host's root, as PID 1 sees it.
const HOST_ROOT: &str = "/proc/1/root";
/// containerd's per-task bundles, `<namespace>/<id>/config.json` (namespace k8s.io for the
/// kubelet, moby for Docker, default for nerdctl).
const CONTAINERD_TASKS: &str = "run/containerd/io.containerd.runtime.v2.task";
/// CRI-O's (and rootful Podman's) containers, `<id>/userdata/config.json`.
const CRIO_CONTAINERS: &str = "run/containers/storage/overlay-containers";
/// Docker's containers, `<id>/config.v2.json`.
const DOCKER_CONTAINERS: &str = "var/lib/docker/containers";
/// Containers remembered at most; past that the cache starts again (a long `serve` on a busy node).
const MAX_CACHED: usize = 4096;

/// The names found for one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Names {
    container: Option<String>,
    pod: Option<String>,
    namespace: Option<String>,
}

pub struct RuntimeNames {
    /// /proc/1/root, or / where PID 1's root cannot be read (a sandbox's init).
    root: PathBuf,
    cache: HashMap<String, Names>,
}

impl Default for RuntimeNames {
    fn default() -> Self {
        let host = Path::new(HOST_ROOT);
        let root = if std::fs::read_dir(host).is_ok() { host.to_path_buf() } else { PathBuf::from("/") };
        RuntimeNames { root, cache: HashMap::new() }
    }
}

impl RuntimeNames {
    /// Adds to `container` the names its runtime's state gives, if any.
    pub fn name(&mut self, container: &mut Container) {
        if container.id.is_empty() {
            return;
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        let root = &self.root;
        let names = self.cache.entry(container.id.clone()).or_insert_with(|| read_names(root, &container.id));
        container.name.clone_from(&names.container);
        container.pod_name.clone_from(&names.pod);
        container.namespace.clone_from(&names.namespace);
    }
}

/// The names of container `id` from the first runtime state under `root` that has it.
fn read_names(root: &Path, id: &str) -> Names {
    let containerd = root.join(CONTAINERD_TASKS);
    let namespaces = std::fs::read_dir(&containerd).into_iter().flatten().flatten().map(|entry| entry.path());
    let candidates = namespaces
        .map(|namespace| namespace.join(id).join("config.json"))
        .chain([root.join(CRIO_CONTAINERS).join(id).join("userdata/config.json")])
        .chain([root.join(DOCKER_CONTAINERS).join(id).join("config.v2.json")]);
    // Docker keeps a containerd bundle too (namespace moby), without names: the first state that
    // names the container wins.
    for path in candidates {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        match serde_json::from_str::<Value>(&text) {
            Ok(config) => {
                let names = names_in(&config);
                if names != Names::default() {
                    return names;
                }
            }
            Err(error) => tracing::debug!("cannot read {}: {error}", path.display()),
        }
    }
    Names::default()
}

/// The names in an OCI config's annotations (containerd's CRI plugin, CRI-O) or a Docker config's
/// labels (the kubelet through cri-dockerd) and name.
fn names_in(config: &Value) -> Names {
    let annotations = config.get("annotations").or_else(|| config.pointer("/Config/Labels"));
    let get = |keys: &[&str]| {
        keys.iter().find_map(|key| annotations?.get(*key)?.as_str()).filter(|value| !value.is_empty()).map(String::from)
    };
    let docker_name = config.get("Name").and_then(Value::as_str).map(|name| name.trim_start_matches('/').to_string());
    Names {
        container: get(&["io.kubernetes.cri.container-name", "io.kubernetes.container.name"]).or(docker_name),
        pod: get(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        namespace: get(&["io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a";

    fn write(root: &Path, path: &str, text: &str) {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[test]
    fn containerd_cri_annotations() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &format!("{CONTAINERD_TASKS}/k8s.io/{ID}/config.json"),
            r#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container",
               "io.kubernetes.cri.container-name":"web","io.kubernetes.cri.sandbox-name":"web-7d4b9c-x2x9q",
               "io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
        );
        let names = read_names(root.path(), ID);
        assert_eq!(names.container.as_deref(), Some("web"));
        assert_eq!(names.pod.as_deref(), Some("web-7d4b9c-x2x9q"));
        assert_eq!(names.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn crio_annotations_and_docker_labels() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            &format!("{CRIO_CONTAINERS}/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.kubernetes.container.name":"db","io.kubernetes.pod.name":"db-0",
               "io.kubernetes.pod.namespace":"data"}}"#,
        );
        assert_eq!(
            read_names(root.path(), ID),
            Names { container: Some("db".into()), pod: Some("db-0".into()), namespace: Some("data".into()) }
        );
        // Docker also keeps a containerd bundle, without names.
        let docker = tempfile::tempdir().unwrap();
        write(docker.path(), &format!("{CONTAINERD_TASKS}/moby/{ID}/config.json"), r#"{"annotations":{}}"#);
        write(
            docker.path(),
            &format!("{DOCKER_CONTAINERS}/{ID}/config.v2.json"),
            r#"{"Name":"/cache","Config":{"Labels":{}}}"#,
        );
        assert_eq!(read_names(docker.path(), ID), Names { container: Some("cache".into()), ..Default::default() });
    }

    #[test]
    fn nothing_readable_names_nothing() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_names(root.path(), ID), Names::default());
        write(root.path(), &format!("{DOCKER_CONTAINERS}/{ID}/config.v2.json"), "{not json");
        assert_eq!(read_names(root.path(), ID), Names::default());
    }
}
