//! End-to-end tests of the on-CPU sampler, symbolization and flamegraphs, with workloads whose hot
//! functions are known.

mod common;

use std::{collections::BTreeSet, path::Path};

use common::{Recorder, Workload, record_workload, run_profiler, temp_dir};
use profiler::{
    analysis::{
        fold::{Selection, folded},
        hotpaths::HotPaths,
    },
    recording::{Recording, Stacks},
};

fn stacks(recording: &Recording) -> &Stacks {
    recording.stacks.as_ref().expect("stack data")
}

/// Share (percent of the recording's samples) of stacks that contain `function` anywhere.
fn total_percent(recording: &Recording, function: &str) -> f64 {
    let hot = HotPaths::new(recording, stacks(recording), usize::MAX);
    hot.by_total.iter().find(|f| f.function == function).map_or(0.0, |f| f.total_percent)
}

fn assert_well_formed_xml(svg: &str) {
    let mut reader = quick_xml::Reader::from_str(svg);
    let mut depth = 0i32;
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(_) => depth += 1,
            quick_xml::events::Event::End(_) => depth -= 1,
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "every element closed");
}

#[test]
fn hot_functions_get_their_share_and_appear_in_the_flamegraph() {
    let dir = temp_dir();
    let (pid, recording) =
        record_workload(&dir.path().join("hot.rec"), &["hot", "--seconds", "4"], &["--probes", "cpu"]);

    let samples: u64 = stacks(&recording).stacks.iter().map(|s| s.count).sum();
    assert!(samples >= 250, "4 s at 99 Hz should give about 400 samples, got {samples}");
    let seventy = total_percent(&recording, "workload::hot_seventy");
    let thirty = total_percent(&recording, "workload::hot_thirty");
    eprintln!("hot_seventy {seventy:.1}%, hot_thirty {thirty:.1}%");
    assert!((seventy - 70.0).abs() <= 5.0, "hot_seventy {seventy:.1}%");
    assert!((thirty - 30.0).abs() <= 5.0, "hot_thirty {thirty:.1}%");
    let hot = HotPaths::new(&recording, stacks(&recording), 10);
    assert_eq!(hot.idle_percent, None, "no machine idle share in a filtered recording");
    assert_eq!(hot.processes[0].tgid, pid);

    // The SVG is well-formed and names both functions.
    let svg_path = dir.path().join("hot.svg");
    let rec_path = dir.path().join("hot.rec");
    let result = run_profiler(&["flamegraph", rec_path.to_str().unwrap(), "-o", svg_path.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert_well_formed_xml(&svg);
    assert!(svg.contains("workload::hot_seventy") && svg.contains("workload::hot_thirty"));

    // Folded output parses back into the same counts.
    let result = run_profiler(&["flamegraph", rec_path.to_str().unwrap(), "--folded"]);
    let text = String::from_utf8(result.stdout).unwrap();
    let mut total = 0;
    for line in text.lines() {
        let (path, count) = line.rsplit_once(' ').expect("`path count`");
        assert!(path.starts_with("workload;"), "root frame is the process name: {line}");
        total += count.parse::<u64>().expect("a count");
    }
    assert_eq!(total, samples);
    assert_eq!(text.lines().collect::<Vec<_>>(), folded(&recording, stacks(&recording), &Selection::default()));
}

#[test]
fn syscall_heavy_workload_shows_the_syscall_entry_path() {
    let dir = temp_dir();
    let (_, recording) =
        record_workload(&dir.path().join("zero.rec"), &["read-zero", "--seconds", "2"], &["--probes", "cpu"]);
    let entry = total_percent(&recording, "entry_SYSCALL_64").max(total_percent(&recording, "do_syscall_64"));
    assert!(entry >= 50.0, "only {entry:.1}% of samples under the syscall entry path");
    let stacks = stacks(&recording);
    let kernel_frames: BTreeSet<&str> =
        stacks.frames.iter().filter(|f| f.kernel).map(|f| f.function.as_str()).collect();
    assert!(kernel_frames.contains("do_syscall_64"), "{kernel_frames:?}");
    assert!(kernel_frames.iter().any(|f| f.contains("read")), "a read path: {kernel_frames:?}");
}

#[test]
fn short_lived_processes_are_symbolized() {
    let dir = temp_dir();
    let mut parent = Workload::spawn(&["short-lived", "--children", "20", "--millis", "100"]);
    let parent_pid = parent.pid();
    // Children are new processes: follow them through a cgroup, which they inherit.
    let cgroup = common::TestCgroup::new();
    cgroup.add(parent_pid);
    let recorder = Recorder::start(&dir.path().join("short.rec"), &["--cgroup", cgroup.path(), "--probes", "cpu"]);
    parent.go();
    parent.wait();
    let recording = recorder.finish();
    let stacks = stacks(&recording);
    let children: BTreeSet<u32> = stacks.stacks.iter().map(|s| s.tgid).filter(|&t| t != parent_pid).collect();
    assert!(children.len() >= 18, "samples from only {} children", children.len());
    let (mut named, mut total) = (0, 0);
    for stack in stacks.stacks.iter().filter(|s| children.contains(&s.tgid)) {
        total += stack.count;
        if stack.frames.iter().any(|&f| stacks.frame(f).is_some_and(|f| f.function == "workload::short_lived_spin")) {
            named += stack.count;
        }
    }
    let rate = named as f64 / total as f64;
    eprintln!("{named} of {total} child samples in short_lived_spin");
    assert!(total >= 100 && rate >= 0.9, "{named} of {total} child samples symbolized to short_lived_spin");
}

#[test]
fn a_recording_renders_after_its_binary_is_gone() {
    let dir = temp_dir();
    let binary = dir.path().join("vanishing-workload");
    std::fs::copy(common::workload_bin(), &binary).unwrap();
    let mut workload = Workload::spawn_binary(&binary, &["hot", "--seconds", "2"]);
    let pid = workload.pid();
    let rec_path = dir.path().join("gone.rec");
    let recorder = Recorder::start(&rec_path, &["-p", &pid.to_string(), "--probes", "cpu"]);
    workload.go();
    workload.wait();
    // Delete the binary while the recorder still runs: it must already hold what it needs.
    std::fs::remove_file(&binary).unwrap();
    let recording = recorder.finish();
    assert!(total_percent(&recording, "workload::hot_seventy") > 50.0);
    let module = stacks(&recording).modules.iter().find(|m| m.path.ends_with("vanishing-workload")).expect("module");
    assert!(module.build_id.as_ref().is_some_and(|id| id.len() >= 16), "build-id kept: {module:?}");

    let svg = dir.path().join("gone.svg");
    let result = run_profiler(&["flamegraph", rec_path.to_str().unwrap(), "-o", svg.to_str().unwrap(), "--user-only"]);
    assert!(result.status.success());
    assert!(std::fs::read_to_string(&svg).unwrap().contains("workload::hot_seventy"));
}

/// The fill colours of the frames named `function` in an SVG, as (r, g, b).
fn fills(svg: &str, function: &str) -> Vec<(u8, u8, u8)> {
    svg.split(&format!("<title>{function} ("))
        .skip(1)
        .filter_map(|rest| {
            let fill = rest.split("fill=\"rgb(").nth(1)?.split(')').next()?;
            let rgb: Vec<u8> = fill.split(',').filter_map(|c| c.trim().parse().ok()).collect();
            (rgb.len() == 3).then(|| (rgb[0], rgb[1], rgb[2]))
        })
        .collect()
}

#[test]
fn record_writes_a_flamegraph_when_asked() {
    let dir = temp_dir();
    let svg = dir.path().join("all.svg");
    let rec = dir.path().join("all.rec");
    let workload = Workload::spawn(&["--no-wait", "read-zero", "--seconds", "3"]);
    let result =
        run_profiler(&["record", "-d", "2", "-q", "-o", rec.to_str().unwrap(), "--flamegraph", svg.to_str().unwrap()]);
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert_well_formed_xml(&text);
    // Kernel frames are coloured apart: inferno's palette draws them orange (no blue), user
    // frames yellow.
    let kernel = fills(&text, "do_syscall_64");
    let user = fills(&text, "workload::read_zero");
    assert!(!kernel.is_empty() && !user.is_empty(), "both frames drawn");
    assert!(kernel.iter().all(|&(r, g, b)| b == 0 && r > g), "kernel frames orange: {kernel:?}");
    assert!(user.iter().all(|&(_, _, b)| b > 0), "user frames not orange: {user:?}");
    workload.wait();
}

#[test]
fn inline_frames_come_from_dwarf() {
    let dir = temp_dir();
    let (_, recording) =
        record_workload(&dir.path().join("inline.rec"), &["hot", "--seconds", "2"], &["--probes", "cpu", "--inline"]);
    let stacks = stacks(&recording);
    // `burn_until` is #[inline(always)]: it has no symbol, only DWARF inline records.
    let inlined = stacks.frames.iter().find(|f| f.function == "workload::burn_until").expect("inlined frame named");
    assert!(inlined.inlined && !inlined.kernel);
    // It sits right above (leafward of) the function it was inlined into.
    let index = stacks.frames.iter().position(|f| f == inlined).unwrap() as u32;
    let stack = stacks.stacks.iter().find(|s| s.frames.contains(&index)).unwrap();
    let at = stack.frames.iter().position(|&f| f == index).unwrap();
    let outer = &stacks.frames[stack.frames[at + 1] as usize].function;
    assert!(outer == "workload::hot_seventy" || outer == "workload::hot_thirty", "inlined into {outer}");
}

#[test]
fn binaries_in_another_mount_namespace_are_symbolized() {
    // The workload runs from a tmpfs mounted only in its own mount namespace: the path in its maps
    // does not exist for the profiler, which must reach the file through /proc/PID/map_files.
    let dir = temp_dir();
    let mount_point = dir.path().join("private");
    std::fs::create_dir(&mount_point).unwrap();
    let script = format!(
        "mount -t tmpfs none {m} && cp {w} {m}/workload && exec {m}/workload hot --seconds 2",
        m = mount_point.display(),
        w = common::workload_bin().display()
    );
    let mut workload =
        Workload::spawn_binary(Path::new("unshare"), &["--mount", "--propagation", "private", "sh", "-c", &script]);
    let pid = workload.pid();
    let recorder = Recorder::start(&dir.path().join("ns.rec"), &["-p", &pid.to_string(), "--probes", "cpu"]);
    workload.go();
    workload.wait();
    let recording = recorder.finish();
    assert!(!mount_point.join("workload").exists(), "the binary is invisible from here");
    assert!(total_percent(&recording, "workload::hot_seventy") > 50.0);
}
