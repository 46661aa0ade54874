//! The CPU stacks as a pprof profile (profile.proto, gzipped), which `go tool pprof`, Pyroscope and
//! Parca read. Frames are already symbolized, so each frame becomes a location with one line and a
//! function; each module a mapping with its build-id. Samples carry the process as labels.

use std::{collections::HashMap, io::Write as _};

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use crate::recording::{Container, Recording, Stacks};

/// The messages of profile.proto that we write.
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}

/// pprof's string table: index 0 is the empty string.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        Self { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }

    fn get(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The gzipped profile.
pub fn encode(recording: &Recording, stacks: &Stacks) -> Vec<u8> {
    gzip(&build(recording, stacks, Kind::Cpu))
}

/// The off-CPU stacks as a gzipped pprof profile: one sample type, `off_cpu` in nanoseconds, and
/// the state each thread blocked in as its sample's `thread_state` label (not as a frame).
pub fn encode_off_cpu(recording: &Recording, stacks: &Stacks) -> Vec<u8> {
    gzip(&build(recording, stacks, Kind::OffCpu))
}

/// What a profile's samples count.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Cpu,
    OffCpu,
}

fn gzip(profile: &proto::Profile) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec()).expect("writing into memory cannot fail");
    gz.finish().expect("writing into memory cannot fail")
}

fn build(recording: &Recording, stacks: &Stacks, kind: Kind) -> proto::Profile {
    let mut strings = Strings::new();
    let (sample_type, period_type, period) = match kind {
        Kind::Cpu => {
            let frequency = recording.meta.options.frequency_hz.max(1);
            let samples_type = proto::ValueType { r#type: strings.get("samples"), unit: strings.get("count") };
            let cpu_type = proto::ValueType { r#type: strings.get("cpu"), unit: strings.get("nanoseconds") };
            (vec![samples_type, cpu_type.clone()], cpu_type, 1_000_000_000 / i64::from(frequency))
        }
        Kind::OffCpu => {
            let off_cpu_type = proto::ValueType { r#type: strings.get("off_cpu"), unit: strings.get("nanoseconds") };
            (vec![off_cpu_type.clone()], off_cpu_type, 1)
        }
    };

    let mapping = main_first(stacks)
        .into_iter()
        .map(|i| {
            let m = &stacks.modules[i];
            proto::Mapping {
                id: i as u64 + 1,
                filename: strings.get(&m.path),
                build_id: strings.get(m.build_id.as_deref().unwrap_or("")),
                has_functions: true,
            }
        })
        .collect();
    // One function and one location per interned frame: ids are frame index + 1.
    let mut function = Vec::with_capacity(stacks.frames.len());
    let mut location = Vec::with_capacity(stacks.frames.len());
    for (i, frame) in stacks.frames.iter().enumerate() {
        let id = i as u64 + 1;
        let name = strings.get(&frame.function);
        let filename = stacks.module(frame).map_or(0, |m| strings.get(&m.path));
        function.push(proto::Function { id, name, system_name: name, filename });
        location.push(proto::Location {
            id,
            mapping_id: frame.module.map_or(0, |m| u64::from(m) + 1),
            line: vec![proto::Line { function_id: id }],
        });
    }
    let (pid_key, comm_key, thread_key) = (strings.get("pid"), strings.get("comm"), strings.get("thread id"));
    let state_key = strings.get("thread_state");
    let sample = stacks
        .stacks
        .iter()
        .map(|stack| {
            let mut label =
                vec![proto::Label { key: comm_key, str: strings.get(recording.process_name(stack.tgid)), num: 0 }];
            // A total of exited processes has no pid of its own.
            if stack.tgid < crate::recording::FIRST_FOLDED_ID {
                label.push(proto::Label { key: pid_key, str: 0, num: i64::from(stack.tgid) });
            }
            if stack.tid != 0 {
                label.push(proto::Label { key: thread_key, str: 0, num: i64::from(stack.tid) });
            }
            let container = recording.processes.get(&stack.tgid).and_then(|p| p.container.as_ref());
            for (key, value) in container.map(container_labels).into_iter().flatten() {
                label.push(proto::Label { key: strings.get(key), str: strings.get(value), num: 0 });
            }
            let count = i64::try_from(stack.count).unwrap_or(i64::MAX);
            let (frames, value) = match kind {
                Kind::Cpu => (&stack.frames[..], vec![count, count.saturating_mul(period)]),
                Kind::OffCpu => {
                    // The leaf is the state the thread blocked in: a label, not code.
                    let state = stack.frames.first().and_then(|&f| stacks.frame(f)).map_or("", |f| &f.function);
                    let state = state.trim_start_matches('[').trim_end_matches(']');
                    label.push(proto::Label { key: state_key, str: strings.get(state), num: 0 });
                    (stack.frames.get(1..).unwrap_or_default(), vec![count])
                }
            };
            proto::Sample {
                // Leaf first, as in our stacks.
                location_id: frames.iter().map(|&f| u64::from(f) + 1).collect(),
                value,
                label,
            }
        })
        .collect();
    proto::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        string_table: strings.table,
        time_nanos: i64::try_from(recording.meta.start_unix_ns).unwrap_or(0),
        duration_nanos: i64::try_from(recording.meta.duration_ns).unwrap_or(0),
        period_type: Some(period_type),
        period,
    }
}

/// Module indices in the order pprof wants mappings: its tools take the first as the main binary
/// (`go tool pprof` titles the profile with it), so user modules come first, led by the one that
/// holds the outermost user frame of most samples (`_start`, Go's `runtime.goexit`: the program,
/// not libc, which is in as many stacks), and the kernel's last.
fn main_first(stacks: &Stacks) -> Vec<usize> {
    let mut roots = vec![0u64; stacks.modules.len()];
    let mut kernel = vec![false; stacks.modules.len()];
    for frame in &stacks.frames {
        if let Some(m) = frame.module.and_then(|m| kernel.get_mut(m as usize)) {
            *m |= frame.kernel;
        }
    }
    for stack in &stacks.stacks {
        // Leaf first: the outermost user frame with a module is the last one.
        let root = stack.frames.iter().rev().filter_map(|&f| stacks.frame(f)).find(|f| !f.kernel && f.module.is_some());
        if let Some(n) = root.and_then(|f| f.module).and_then(|m| roots.get_mut(m as usize)) {
            *n += stack.count;
        }
    }
    let mut order: Vec<usize> = (0..stacks.modules.len()).collect();
    order.sort_by_key(|&m| (kernel[m], std::cmp::Reverse(roots[m]), m));
    order
}

/// The labels that name a sample's container and pod, as Parca and the OpenTelemetry profiler
/// label theirs (`go tool pprof -tagfocus pod_uid=...`).
fn container_labels(container: &Container) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("container_id", Some(container.id.as_str()).filter(|id| !id.is_empty())),
        ("container_runtime", container.runtime.as_deref()),
        ("container_name", container.name.as_deref()),
        ("pod_uid", container.pod_uid.as_deref()),
        ("pod_name", container.pod_name.as_deref()),
        ("pod_namespace", container.namespace.as_deref()),
        ("qos_class", container.qos_class.as_deref()),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value?)))
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::recording::{Frame, Module, Stack, WAIT_STATE_FRAMES};

    #[test]
    fn off_cpu_profiles_carry_nanoseconds_and_the_state_as_a_label() {
        let frame = |name: &str| Frame { function: name.into(), module: Some(0), kernel: false, inlined: false };
        let stacks = Stacks {
            frames: vec![frame("main"), frame("read"), Frame { module: None, ..frame(WAIT_STATE_FRAMES[1]) }],
            modules: vec![Module { path: "/bin/app".into(), build_id: None }],
            stacks: vec![Stack { tgid: 9, tid: 0, frames: vec![2, 1, 0], count: 1_500_000, blocks: 0 }],
        };
        let profile = build(&Recording::default(), &stacks, Kind::OffCpu);
        let text = |i: i64| profile.string_table[i as usize].as_str();
        assert_eq!(profile.sample_type.len(), 1);
        assert_eq!(
            (text(profile.sample_type[0].r#type), text(profile.sample_type[0].unit)),
            ("off_cpu", "nanoseconds")
        );
        let sample = &profile.sample[0];
        assert_eq!(sample.value, vec![1_500_000]);
        let leaf = &profile.function[sample.location_id[0] as usize - 1];
        assert_eq!(text(leaf.name), "read", "the state is no frame");
        let state = sample.label.iter().find(|l| text(l.key) == "thread_state").unwrap();
        assert_eq!(text(state.str), "D uninterruptible");
    }

    #[test]
    fn round_trips_through_protobuf() {
        let frame = |name: &str| Frame { function: name.into(), module: Some(0), kernel: false, inlined: false };
        let stacks = Stacks {
            frames: vec![frame("main"), frame("work")],
            modules: vec![Module { path: "/bin/app".into(), build_id: Some("abcd".into()) }],
            stacks: vec![Stack { tgid: 9, tid: 0, frames: vec![1, 0], count: 3, blocks: 0 }],
        };
        let mut recording = Recording::default();
        recording.meta.options.frequency_hz = 100;
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(encode(&recording, &stacks).as_slice()).read_to_end(&mut raw).unwrap();
        let profile = proto::Profile::decode(raw.as_slice()).unwrap();
        assert_eq!(profile.string_table[0], "");
        assert_eq!(profile.period, 10_000_000);
        assert_eq!(profile.sample[0].value, vec![3, 30_000_000]);
        let leaf = profile.sample[0].location_id[0];
        let function = &profile.function[leaf as usize - 1];
        assert_eq!(profile.string_table[function.name as usize], "work");
        assert_eq!(profile.string_table[profile.mapping[0].build_id as usize], "abcd");
    }

    /// A Go program's stacks: the kernel module was interned first (its frames were named first)
    /// and libc is in as many stacks, yet the main mapping must be the program's.
    #[test]
    fn the_main_mapping_is_the_busiest_user_module() {
        let frame =
            |name: &str, module, kernel| Frame { function: name.into(), module: Some(module), kernel, inlined: false };
        let stacks = Stacks {
            frames: vec![
                frame("do_syscall_64", 0, true),
                frame("runtime.futex", 1, false),
                frame("write", 2, false),
                frame("main.main", 1, false),
            ],
            modules: vec![
                Module { path: "[kernel.kallsyms]".into(), build_id: None },
                Module { path: "/usr/bin/server".into(), build_id: None },
                Module { path: "/usr/lib/libc.so.6".into(), build_id: None },
            ],
            stacks: vec![
                Stack { tgid: 9, tid: 0, frames: vec![0, 1, 3], count: 50, blocks: 0 },
                Stack { tgid: 9, tid: 0, frames: vec![2, 3], count: 10, blocks: 0 },
                Stack { tgid: 9, tid: 0, frames: vec![0, 2], count: 5, blocks: 0 },
            ],
        };
        let profile = build(&Recording::default(), &stacks, Kind::Cpu);
        let paths: Vec<&str> =
            profile.mapping.iter().map(|m| profile.string_table[m.filename as usize].as_str()).collect();
        assert_eq!(paths, ["/usr/bin/server", "/usr/lib/libc.so.6", "[kernel.kallsyms]"]);
        assert_eq!(profile.mapping[0].id, 2, "ids stay the modules' own, as the locations name them");
    }
}
