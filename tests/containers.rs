//! Container and pod identity: a process in a cgroup laid out as a container runtime or the kubelet
//! lays its cgroups out is reported with that container id and pod uid, in the recording, `report`
//! (text and JSON), the pprof labels that `go tool pprof` reads and `serve`'s series and profiles;
//! `--container` and `--pod` record only theirs.

mod common;

use std::path::{Path, PathBuf};

use common::{
    Recorder, Server, TestCgroup, Workload, go_tool_pprof, go_tool_pprof_source, http_get, run_profiler, syscall_row,
    temp_dir,
};

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

/// A file of a container runtime's state, written where the runtime keeps it (no runtime runs
/// here); the directories it created are removed when dropped.
struct RuntimeFile {
    created: Option<PathBuf>,
}

impl RuntimeFile {
    fn write(path: &str, text: &str) -> RuntimeFile {
        let path = Path::new(path);
        let mut created = None;
        for ancestor in path.parent().unwrap().ancestors() {
            if ancestor.exists() {
                break;
            }
            created = Some(ancestor.to_path_buf());
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        RuntimeFile { created: created.or_else(|| Some(path.to_path_buf())) }
    }
}

impl Drop for RuntimeFile {
    fn drop(&mut self) {
        if let Some(path) = self.created.take() {
            let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        }
    }
}

#[test]
fn processes_carry_their_container_and_pod() {
    let dir = temp_dir();
    let layouts = layouts();
    // The names the runtimes keep: containerd's OCI config of the kubelet's container (as its CRI
    // plugin annotates it), Docker's config of its container.
    let _names = [
        RuntimeFile::write(
            &format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{}/config.json", layouts[0].id),
            r#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"container",
               "io.kubernetes.cri.container-name":"web","io.kubernetes.cri.sandbox-name":"web-0",
               "io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
        ),
        RuntimeFile::write(
            &format!("/var/lib/docker/containers/{}/config.v2.json", layouts[2].id),
            r#"{"ID":"x","Name":"/cache","Config":{"Labels":{}}}"#,
        ),
    ];
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
    let mut args = vec!["--probes", "cpu,syscalls,sched"];
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
    let names = |pid: &String| {
        let container = recording.processes[&pid.parse().unwrap()].container.clone().unwrap();
        (container.name, container.pod_name, container.namespace)
    };
    let some = |s: &str| Some(s.to_string());
    assert_eq!(names(&pids[0]), (some("web"), some("web-0"), some("shop")));
    assert_eq!(names(&pids[1]), (None, None, None), "no runtime state: the uid only");
    assert_eq!(names(&pids[2]), (some("cache"), None, None));

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
    assert!(text.contains(&format!("{} web containerd, pod shop/web-0 (burstable)", &layouts[0].id[..12])), "{text}");
    assert!(text.contains(&format!("{}, pod {OTHER_POD_UID} (besteffort)", &layouts[1].id[..12])), "{text}");
    assert!(text.contains(&format!("{} cache docker", &layouts[2].id[..12])), "{text}");

    // pprof: every sample of a container's process carries its labels, as `go tool pprof` reads them.
    let tags = go_tool_pprof(&rec, dir.path(), "-tags");
    for layout in &layouts {
        assert!(tags.contains(&layout.id), "{tags}");
    }
    for value in [POD_UID, OTHER_POD_UID, "containerd", "docker", "burstable", "besteffort", "web-0", "shop", "cache"] {
        assert!(tags.contains(value), "{value} in {tags}");
    }

    // Prometheus: the per-process run-queue series, told apart by container and pod when asked
    // (four busy processes on this machine's CPUs wait in its run queues).
    let result = run_profiler(&[
        "export",
        "prometheus",
        rec.to_str().unwrap(),
        "--top-processes",
        "10",
        "--labels",
        "container,pod",
    ]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let text = String::from_utf8_lossy(&result.stdout);
    common::promtool_accepts(&text);
    let (web, other, cache) = (&layouts[0].id, &layouts[1].id, &layouts[2].id);
    for labels in [
        format!(
            r#"comm="workload",container_id="{web}",container_name="web",pod_uid="{POD_UID}",pod_name="web-0",pod_namespace="shop""#
        ),
        format!(r#"comm="workload",container_id="{other}",pod_uid="{OTHER_POD_UID}""#),
        format!(r#"comm="workload",container_id="{cache}",container_name="cache""#),
    ] {
        let series = format!("profiler_process_runqueue_latency_seconds_count{{{labels}}}");
        assert!(text.contains(&series), "{series} in {text}");
    }
    // diff: containers compared by namespace and name where known, else by id.
    let result = run_profiler(&["diff", rec.to_str().unwrap(), rec.to_str().unwrap(), "--json"]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let json: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    let compared: Vec<&str> =
        json["containers"].as_array().unwrap().iter().filter_map(|c| c["container"].as_str()).collect();
    for expected in ["shop/web", "cache", &layouts[1].id[..12]] {
        assert!(compared.contains(&expected), "{expected} in {compared:?}");
    }
    let web = json["containers"].as_array().unwrap().iter().find(|c| c["container"] == "shop/web").unwrap();
    assert!(
        web["base_cpu_percent"].as_f64().unwrap() > 10.0 && web["base_cpu_percent"] == web["new_cpu_percent"],
        "{web}"
    );

    let result = run_profiler(&["export", "prometheus", rec.to_str().unwrap(), "--labels", "pod"]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(!result.status.success() && stderr.contains("add --top-processes N"), "{stderr}");
}

#[test]
fn container_and_pod_filters_record_only_theirs() {
    let dir = temp_dir();
    let layouts = layouts();
    // Two containers of one pod, a Docker container, and a process outside any.
    let first = TestCgroup::nested(&layouts[0].path);
    let second_id = "d".repeat(64);
    let second = first.sibling(&format!("cri-containerd-{second_id}.scope"));
    let docker = TestCgroup::nested(&layouts[2].path);
    const CALLS: u64 = 3000;
    let calls = CALLS.to_string();
    let mut workloads: Vec<Workload> =
        (0..4).map(|_| Workload::spawn(&["syscalls", "--getppid", &calls, "--fail-open", "0"])).collect();
    for (cgroup, workload) in [&first, &second, &docker].into_iter().zip(&workloads) {
        cgroup.add(workload.pid());
    }
    let pids: Vec<u32> = workloads.iter().map(Workload::pid).collect();
    // The pod by its uid; the Docker container by its short id; the pod's second container as
    // Kubernetes writes its id in the pod's status.
    let kubernetes_id = format!("containerd://{second_id}");
    let filters: [(&str, &str, Vec<u32>); 3] = [
        ("--pod", POD_UID, vec![pids[0], pids[1]]),
        ("--container", &layouts[2].id[..12], vec![pids[2]]),
        ("--container", &kubernetes_id, vec![pids[1]]),
    ];
    // Every probe with the pod's filter: each program's filter is loaded, and verified, here.
    let recorders: Vec<Recorder> = filters
        .iter()
        .enumerate()
        .map(|(i, (flag, value, _))| {
            let probes = if i == 0 { "sched,syscalls,cpu" } else { "syscalls" };
            Recorder::start(&dir.path().join(format!("{i}.rec")), &[flag, value, "--probes", probes])
        })
        .collect();
    workloads.iter_mut().for_each(Workload::go);
    workloads.into_iter().for_each(Workload::wait);
    for ((flag, value, expected), recorder) in filters.iter().zip(recorders) {
        let recording = recorder.finish();
        for pid in &pids {
            let seen = recording.processes.contains_key(pid);
            assert_eq!(seen, expected.contains(pid), "{flag} {value}: process {pid} seen: {seen}");
        }
        for &pid in expected {
            assert_eq!(syscall_row(&recording, pid, "getppid").count, CALLS, "{flag} {value}");
        }
    }

    // A filter that names nothing here is one clear line and a failure, before anything is loaded.
    for (args, message) in [
        (["--container", "12345"], "--container takes a container id"),
        (["--container", "feedfacefeedfacefeed"], "no cgroup v2 directory of container feedfacefeedfacefeed"),
        (["--pod", OTHER_POD_UID], "no cgroup v2 directory of pod"),
    ] {
        let result =
            run_profiler(&["record", "-d", "1", "-o", dir.path().join("x.rec").to_str().unwrap(), args[0], args[1]]);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert!(!result.status.success() && stderr.contains(message), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!dir.path().join("x.rec").exists());
    }
}

#[test]
fn serve_labels_its_series_and_profiles_with_container_and_pod() {
    let dir = temp_dir();
    let layouts = layouts();
    let _names = RuntimeFile::write(
        &format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{}/config.json", layouts[0].id),
        r#"{"annotations":{"io.kubernetes.cri.container-name":"web","io.kubernetes.cri.sandbox-name":"web-0",
           "io.kubernetes.cri.sandbox-namespace":"shop"}}"#,
    );
    let cgroup = TestCgroup::nested(&layouts[0].path);
    // Four busy threads on one CPU: they wait in its run queue, in the pod's container.
    let mut workload = Workload::spawn(&["spin", "--threads", "4", "--cpu", "0", "--seconds", "8"]);
    cgroup.add(workload.pid());
    let server = Server::start(&["--pod", POD_UID, "--top-processes", "5", "--labels", "container,pod"]);
    workload.go();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (status, page) = http_get(&server.addr, "/metrics", None);
    assert_eq!(status, 200);
    common::promtool_accepts(&page);
    let labels = format!(
        r#"comm="workload",container_id="{}",container_name="web",pod_uid="{POD_UID}",pod_name="web-0",pod_namespace="shop""#,
        layouts[0].id
    );
    let count = page
        .lines()
        .find(|l| l.starts_with(&format!("profiler_process_runqueue_latency_seconds_count{{{labels}}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("{labels} in {page}"));
    assert!(count > 10, "the spinning threads waited: {count}");
    // The pod's filter kept everything else out of the per-process series.
    let other_series =
        page.lines().filter(|l| l.starts_with("profiler_process_runqueue_latency_seconds_count{")).count();
    assert_eq!(other_series, 1, "{page}");

    // The profile served for the pod names it on every sample.
    let home = dir.path().join("pprof");
    std::fs::create_dir_all(&home).unwrap();
    let tags = go_tool_pprof_source(&format!("http://{}/debug/pprof/profile?seconds=2", server.addr), &home, "-tags");
    for value in
        [layouts[0].id.as_str(), POD_UID, "web-0", "shop", "web", "pod_name", "pod_namespace", "container_name"]
    {
        assert!(tags.contains(value), "{value} in {tags}");
    }
    assert!(server.stop().success());
    workload.wait();
}
