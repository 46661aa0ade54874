//! Container and pod identity: a process in a cgroup laid out as a container runtime or the kubelet
//! lays its cgroups out is reported with that container id and pod uid, in the recording, `report`
//! (text and JSON) and the pprof labels that `go tool pprof` reads.

mod common;

use common::{Recorder, TestCgroup, Workload, go_tool_pprof, run_profiler, temp_dir};

const POD_UID: &str = "7d2b8c1e-5f3a-4b6c-9d0e-1a2b3c4d5e6f";
const OTHER_POD_UID: &str = "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b";

/// One cgroup layout, and what the profiler should read from it.
struct Layout {
    path: String,
    id: String,
    runtime: Option<&'static str>,
    pod_uid: Option<&'static str>,
    qos_class: Option<&'static str>,
}

fn layouts() -> Vec<Layout> {
    let id = |digit: char| {
        std::iter::repeat_n(digit, 4).chain("0123456789abcdef".chars().cycle().take(60)).collect::<String>()
    };
    let (kubelet, cgroupfs, docker) = (id('a'), id('b'), id('c'));
    let pod_ = POD_UID.replace('-', "_");
    vec![
        Layout {
            path: format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_}.slice/cri-containerd-{kubelet}.scope"
            ),
            id: kubelet,
            runtime: Some("containerd"),
            pod_uid: Some(POD_UID),
            qos_class: Some("burstable"),
        },
        Layout {
            path: format!("kubepods/besteffort/pod{OTHER_POD_UID}/{cgroupfs}"),
            id: cgroupfs,
            runtime: None,
            pod_uid: Some(OTHER_POD_UID),
            qos_class: Some("besteffort"),
        },
        Layout {
            path: format!("system.slice/docker-{docker}.scope"),
            id: docker,
            runtime: Some("docker"),
            pod_uid: None,
            qos_class: None,
        },
    ]
}

#[test]
fn processes_carry_their_container_and_pod() {
    let dir = temp_dir();
    let layouts = layouts();
    let cgroups: Vec<TestCgroup> = layouts.iter().map(|layout| TestCgroup::nested(&layout.path)).collect();
    let mut workloads: Vec<Workload> = cgroups
        .iter()
        .map(|cgroup| {
            let workload = Workload::spawn(&["hot", "--seconds", "2"]);
            cgroup.add(workload.pid());
            workload
        })
        .collect();
    let outside = Workload::spawn(&["hot", "--seconds", "2"]);
    let pids: Vec<String> = workloads.iter().chain([&outside]).map(|w| w.pid().to_string()).collect();
    let mut args = vec!["--probes", "cpu,syscalls"];
    for pid in &pids {
        args.extend(["-p", pid.as_str()]);
    }
    let rec = dir.path().join("containers.rec");
    let recorder = Recorder::start(&rec, &args);
    let mut outside = outside;
    workloads.iter_mut().chain([&mut outside]).for_each(Workload::go);
    workloads.into_iter().chain([outside]).for_each(Workload::wait);
    let recording = recorder.finish();

    // The recording: each process with its container, the one outside with none.
    for (layout, pid) in layouts.iter().zip(&pids) {
        let process = &recording.processes[&pid.parse().unwrap()];
        let container =
            process.container.as_ref().unwrap_or_else(|| panic!("no container for {}: {process:?}", layout.path));
        assert_eq!(container.id, layout.id);
        assert_eq!(container.runtime.as_deref(), layout.runtime, "{}", layout.path);
        assert_eq!(container.pod_uid.as_deref(), layout.pod_uid, "{}", layout.path);
        assert_eq!(container.qos_class.as_deref(), layout.qos_class, "{}", layout.path);
    }
    assert_eq!(recording.processes[&pids[3].parse().unwrap()].container, None);

    // report --json: one entry per container, with its process and its samples.
    let result = run_profiler(&["report", rec.to_str().unwrap(), "--json"]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let json: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let containers = json["containers"].as_array().expect("a containers list");
    assert_eq!(containers.len(), layouts.len(), "{containers:#?}");
    for (layout, pid) in layouts.iter().zip(&pids) {
        let entry = containers.iter().find(|c| c["id"] == layout.id.as_str()).expect("the container");
        assert_eq!(entry["pod_uid"].as_str(), layout.pod_uid);
        assert_eq!(entry["processes"][0]["tgid"].to_string(), *pid);
        assert!(entry["cpu_samples"].as_u64().unwrap() > 20, "{entry}");
    }
    // The text report names each container by its short id, with its pod.
    let result = run_profiler(&["report", rec.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&result.stdout);
    assert!(text.contains(&format!("{} containerd, pod {POD_UID} (burstable)", &layouts[0].id[..12])), "{text}");
    assert!(text.contains(&format!("{} docker", &layouts[2].id[..12])), "{text}");

    // pprof: every sample of a container's process carries its labels, as `go tool pprof` reads them.
    let tags = go_tool_pprof(&rec, dir.path(), "-tags");
    for layout in &layouts {
        assert!(tags.contains(&layout.id), "{tags}");
    }
    for value in [POD_UID, OTHER_POD_UID, "containerd", "docker", "burstable", "besteffort"] {
        assert!(tags.contains(value), "{value} in {tags}");
    }
}
