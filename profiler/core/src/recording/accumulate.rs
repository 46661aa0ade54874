//! Adding up intervals: the collector hands each interval's deltas (a partial `Recording`) to its
//! sinks; a sink that keeps a whole recording adds them up here, with indexes that make each
//! addition proportional to the delta, not to what was kept so far.

use std::{
    collections::{HashMap, hash_map::Entry},
    hash::{BuildHasher, RandomState},
};

use hashbrown::{HashTable, hash_table};

use super::{Frame, LatencyHistogram, Module, Process, Recording, RunqLatency, Stack, Stacks, Syscalls};

/// Synthetic ids of per-name totals start above any pid (pid_max is at most 2^22).
pub const FIRST_FOLDED_ID: u32 = 1 << 31;
/// Names kept apart at most; beyond, exited processes fold into "other".
const MAX_FOLDED_NAMES: usize = 4096;

/// The ids of per-name totals of exited processes, as `record` and `serve` fold them.
#[derive(Default)]
pub struct FoldedNames {
    ids: HashMap<String, u32>,
}

impl FoldedNames {
    /// The id of the total of exited processes called `name` (a `Process::fold_key`).
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let name = if self.ids.len() >= MAX_FOLDED_NAMES { "other" } else { name };
        let next = FIRST_FOLDED_ID + self.ids.len() as u32;
        *self.ids.entry(name.to_string()).or_insert(next)
    }
}

/// A recording built from deltas.
#[derive(Default)]
pub struct Accumulator {
    recording: Recording,
    syscall_rows: HashMap<(u32, u32), usize>,
    /// Indexes of `recording.stacks` (on CPU) and `recording.offcpu`.
    oncpu: StackIndexes,
    offcpu: StackIndexes,
}

/// What makes adding to one kept `Stacks` proportional to the delta: its frames, modules and
/// stacks by content.
#[derive(Default)]
struct StackIndexes {
    frame_ids: HashMap<Frame, u32>,
    module_ids: HashMap<Module, u32>,
    stack_ids: StackIndex,
    /// The frames of one stack being added, reused so that a stack already kept allocates nothing.
    frames_scratch: Vec<u32>,
}

impl StackIndexes {
    /// Adds `delta`'s stacks to `kept`, re-interning their frames.
    fn add(&mut self, kept: &mut Stacks, delta: &Stacks) {
        let mut interned = Interning { frame_ids: &mut self.frame_ids, module_ids: &mut self.module_ids, kept };
        let frame_map: Vec<u32> = delta.frames.iter().map(|frame| interned.frame(delta, frame)).collect();
        for stack in &delta.stacks {
            self.frames_scratch.clear();
            self.frames_scratch.extend(stack.frames.iter().filter_map(|&f| frame_map.get(f as usize).copied()));
            let kept = &mut interned.kept.stacks;
            match self.stack_ids.position_or_insert(kept, stack.tgid, stack.tid, &self.frames_scratch) {
                Some(index) => kept[index].absorb(stack),
                None => {
                    let frames = self.frames_scratch.clone();
                    kept.push(Stack {
                        tgid: stack.tgid,
                        tid: stack.tid,
                        frames,
                        count: stack.count,
                        blocks: stack.blocks,
                    });
                }
            }
        }
    }

    /// Moves the stacks of each process `from` to its `into` (see `Accumulator::fold`).
    fn fold(&mut self, stacks: &mut Stacks, moves: &HashMap<u32, u32>) {
        if !stacks.stacks.iter().any(|stack| moves.contains_key(&stack.tgid)) {
            return;
        }
        self.stack_ids.clear();
        let index = &mut self.stack_ids;
        stacks.stacks.iter_mut().for_each(|stack| stack.tgid = moves.get(&stack.tgid).copied().unwrap_or(stack.tgid));
        merge_in_place(
            &mut stacks.stacks,
            |kept, stack| index.position_or_insert(kept, stack.tgid, stack.tid, &stack.frames),
            |into, stack| into.absorb(stack),
        );
    }
}

impl Accumulator {
    /// Adds one interval. Metadata is the caller's (see `finish`); processes already known keep
    /// their first description.
    pub fn add(&mut self, delta: &Recording) {
        self.add_metrics(delta);
        self.add_stacks(delta);
    }

    /// Adds one interval's counters and histograms, leaving its stacks out (`serve`'s metrics
    /// keep no stacks: they would grow with every stack ever seen).
    pub fn add_metrics(&mut self, delta: &Recording) {
        let recording = &mut self.recording;
        recording.counters.add(&delta.counters);
        if let Some(runq) = &delta.runq {
            add_runq(recording.runq.get_or_insert_with(Default::default), runq);
        }
        if let Some(syscalls) = &delta.syscalls {
            let kept = recording.syscalls.get_or_insert_with(Default::default);
            add_syscalls(kept, &mut self.syscall_rows, syscalls);
        }
        self.add_processes(delta);
    }

    /// Adds one interval's stacks only (a served profile's window).
    pub fn add_stacks(&mut self, delta: &Recording) {
        let recording = &mut self.recording;
        if let Some(stacks) = &delta.stacks {
            self.oncpu.add(recording.stacks.get_or_insert_with(Default::default), stacks);
        }
        if let Some(stacks) = &delta.offcpu {
            self.offcpu.add(recording.offcpu.get_or_insert_with(Default::default), stacks);
        }
        self.add_processes(delta);
    }

    fn add_processes(&mut self, delta: &Recording) {
        for (&tgid, process) in &delta.processes {
            self.describe(tgid, process);
        }
    }

    /// Describes a process unless it is described already (the first description stays).
    pub fn describe(&mut self, tgid: u32, process: &Process) {
        self.recording.processes.entry(tgid).or_insert_with(|| process.clone());
    }

    /// Moves everything of each process `from` to its `into`, merging with what `into` has: a
    /// process that exited folds into a per-name total, so what is kept follows the processes
    /// alive (or the names seen) and every total still only grows. One pass over what is kept,
    /// however many processes fold. `into` is described by the first `from` unless it has a
    /// description, and counts the processes folded into it.
    pub fn fold(&mut self, moves: &HashMap<u32, u32>) {
        if moves.is_empty() {
            return;
        }
        let target = |tgid: u32| moves.get(&tgid).copied();
        let recording = &mut self.recording;
        if let Some(runq) = recording.runq.as_mut() {
            for (&from, &into) in moves {
                if let Some(histogram) = runq.per_process.remove(&from) {
                    runq.per_process.entry(into).or_default().merge(&histogram);
                }
            }
        }
        // Merged in place, reusing the indexes' memory: rebuilding them copied every kept row and
        // stack at each interval in which a process exited.
        if let Some(syscalls) = recording.syscalls.as_mut()
            && syscalls.per_process.iter().any(|row| moves.contains_key(&row.tgid))
        {
            self.syscall_rows.clear();
            let rows = &mut self.syscall_rows;
            syscalls.per_process.iter_mut().for_each(|row| row.tgid = target(row.tgid).unwrap_or(row.tgid));
            merge_in_place(
                &mut syscalls.per_process,
                |kept, row| match rows.entry((row.tgid, row.nr)) {
                    Entry::Occupied(entry) => Some(*entry.get()),
                    Entry::Vacant(entry) => {
                        entry.insert(kept.len());
                        None
                    }
                },
                |into, row| into.absorb(row),
            );
        }
        if let Some(stacks) = recording.stacks.as_mut() {
            self.oncpu.fold(stacks, moves);
        }
        if let Some(stacks) = recording.offcpu.as_mut() {
            self.offcpu.fold(stacks, moves);
        }
        for (&from, &into) in moves {
            let Some(process) = recording.processes.remove(&from) else { continue };
            let folded = process.folded.max(1);
            let total = recording.processes.entry(into).or_insert(Process { cmdline: None, folded: 0, ..process });
            total.folded += folded;
        }
    }

    /// What has been added so far, readable while adding goes on.
    pub fn recording(&self) -> &Recording {
        &self.recording
    }

    /// The recording, with stacks commonest first and syscall rows by process.
    pub fn finish(self) -> Recording {
        let mut recording = self.recording;
        for stacks in recording.stacks.iter_mut().chain(recording.offcpu.iter_mut()) {
            stacks.stacks.sort_by(|a, b| {
                b.count.cmp(&a.count).then_with(|| (a.tgid, a.tid, &a.frames).cmp(&(b.tgid, b.tid, &b.frames)))
            });
        }
        if let Some(syscalls) = recording.syscalls.as_mut() {
            syscalls.per_process.sort_by_key(|row| (row.tgid, row.nr));
        }
        recording.derive_counts();
        recording
    }
}

/// Where each kept stack is, by (tgid, tid, frames), without a copy of its frames.
#[derive(Default)]
struct StackIndex {
    positions: HashTable<usize>,
    hasher: RandomState,
}

impl StackIndex {
    fn hash(hasher: &RandomState, tgid: u32, tid: u32, frames: &[u32]) -> u64 {
        hasher.hash_one((tgid, tid, frames))
    }

    /// The position in `kept` of the stack of `tgid`, `tid` and `frames`; if there is none, it is
    /// indexed as the next to be kept (at `kept.len()`).
    fn position_or_insert(&mut self, kept: &[Stack], tgid: u32, tid: u32, frames: &[u32]) -> Option<usize> {
        let hasher = &self.hasher;
        let same = |&i: &usize| kept[i].tgid == tgid && kept[i].tid == tid && kept[i].frames == frames;
        let rehash = |&i: &usize| Self::hash(hasher, kept[i].tgid, kept[i].tid, &kept[i].frames);
        match self.positions.entry(Self::hash(hasher, tgid, tid, frames), same, rehash) {
            hash_table::Entry::Occupied(entry) => Some(*entry.get()),
            hash_table::Entry::Vacant(entry) => {
                entry.insert(kept.len());
                None
            }
        }
    }

    fn clear(&mut self) {
        self.positions.clear();
    }
}

/// Merges each item into the first equal one before it, in place: `position_or_insert(kept, item)`
/// finds that one among the items kept so far, or notes `item` as the next kept (and says none).
fn merge_in_place<T>(
    items: &mut Vec<T>,
    mut position_or_insert: impl FnMut(&[T], &T) -> Option<usize>,
    merge: impl Fn(&mut T, &T),
) {
    let mut kept = 0;
    for i in 0..items.len() {
        let (before, rest) = items.split_at_mut(i);
        match position_or_insert(&before[..kept], &rest[0]) {
            Some(into) => merge(&mut before[into], &rest[0]),
            None => {
                items.swap(kept, i);
                kept += 1;
            }
        }
    }
    items.truncate(kept);
}

fn add_runq(kept: &mut RunqLatency, delta: &RunqLatency) {
    kept.system.merge(&delta.system);
    if kept.per_cpu.len() < delta.per_cpu.len() {
        kept.per_cpu.resize_with(delta.per_cpu.len(), LatencyHistogram::default);
    }
    for (cpu, histogram) in kept.per_cpu.iter_mut().zip(&delta.per_cpu) {
        cpu.merge(histogram);
    }
    for (tgid, histogram) in &delta.per_process {
        kept.per_process.entry(*tgid).or_default().merge(histogram);
    }
}

fn add_syscalls(kept: &mut Syscalls, rows: &mut HashMap<(u32, u32), usize>, delta: &Syscalls) {
    kept.counts_only |= delta.counts_only;
    for (nr, histogram) in &delta.latency {
        kept.latency.entry(*nr).or_default().merge(histogram);
    }
    for row in &delta.per_process {
        match rows.get(&(row.tgid, row.nr)) {
            Some(&index) => kept.per_process[index].absorb(row),
            None => {
                rows.insert((row.tgid, row.nr), kept.per_process.len());
                kept.per_process.push(row.clone());
            }
        }
    }
}

/// Frames and modules of a delta, re-interned into the kept stacks.
struct Interning<'a> {
    frame_ids: &'a mut HashMap<Frame, u32>,
    module_ids: &'a mut HashMap<Module, u32>,
    kept: &'a mut Stacks,
}

impl Interning<'_> {
    fn frame(&mut self, from: &Stacks, frame: &Frame) -> u32 {
        let module = frame.module.and_then(|m| from.modules.get(m as usize)).map(|module| self.module(module));
        let frame = Frame { module, ..frame.clone() };
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.kept.frames.len() as u32;
        self.kept.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }

    fn module(&mut self, module: &Module) -> u32 {
        if let Some(&id) = self.module_ids.get(module) {
            return id;
        }
        let id = self.kept.modules.len() as u32;
        self.kept.modules.push(module.clone());
        self.module_ids.insert(module.clone(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recording::{Counters, ProcessSyscall};

    fn delta(function: &str, count: u64, latency_ns: u64) -> Recording {
        let stacks = Stacks {
            frames: vec![Frame { function: function.into(), module: Some(0), ..Default::default() }],
            modules: vec![Module { path: "/bin/app".into(), build_id: None }],
            stacks: vec![Stack { tgid: 7, tid: 0, frames: vec![0], count, blocks: 0 }],
        };
        let syscalls = Syscalls {
            latency: [(39, LatencyHistogram::from_values([latency_ns]))].into(),
            per_process: vec![ProcessSyscall {
                tgid: 7,
                nr: 39,
                count: 1,
                errors: 1,
                total_ns: latency_ns,
                errnos: vec![(2, 1)],
                latency: Some(LatencyHistogram::from_values([latency_ns])),
            }],
            counts_only: false,
        };
        Recording {
            counters: Counters { cpu_samples: count, ..Default::default() },
            syscalls: Some(syscalls),
            stacks: Some(stacks),
            processes: [(7, Process { comm: format!("app-{function}"), ..Default::default() })].into(),
            ..Default::default()
        }
    }

    #[test]
    fn intervals_add_up_to_one_recording() {
        let mut accumulator = Accumulator::default();
        accumulator.add(&delta("main", 3, 100));
        accumulator.add(&delta("main", 4, 200));
        accumulator.add(&delta("work", 5, 300));
        let recording = accumulator.finish();
        let stacks = recording.stacks.as_ref().unwrap();
        assert_eq!(stacks.modules.len(), 1, "one module, interned once");
        let counts: Vec<(&str, u64)> =
            stacks.stacks.iter().map(|s| (stacks.frames[s.frames[0] as usize].function.as_str(), s.count)).collect();
        assert_eq!(counts, [("main", 7), ("work", 5)]);
        assert_eq!(recording.counters.cpu_samples, 12);
        let syscalls = recording.syscalls.as_ref().unwrap();
        assert_eq!(syscalls.per_process.len(), 1);
        let row = &syscalls.per_process[0];
        assert_eq!((row.count, row.errors, row.total_ns, row.errnos.clone()), (3, 3, 600, vec![(2, 3)]));
        assert_eq!(syscalls.latency[&39].count(), 3);
        assert_eq!(row.latency.as_ref().map(LatencyHistogram::count), Some(3), "the process's histogram too");
        assert_eq!(recording.counters.syscalls, 3, "derived from the rows");
        assert_eq!(recording.processes[&7].comm, "app-main", "a process keeps its first description");
    }

    #[test]
    fn an_exited_process_folds_into_a_total() {
        let mut accumulator = Accumulator::default();
        let into = FIRST_FOLDED_ID;
        accumulator.add(&delta("main", 3, 100));
        accumulator.fold(&[(7, into)].into());
        // Pid 7 again, a new process of the same name.
        accumulator.add(&delta("main", 2, 100));
        accumulator.fold(&[(7, into)].into());
        let recording = accumulator.finish();
        let stacks = recording.stacks.as_ref().unwrap();
        assert_eq!(stacks.stacks.len(), 1);
        assert_eq!((stacks.stacks[0].tgid, stacks.stacks[0].count), (into, 5));
        let rows = &recording.syscalls.as_ref().unwrap().per_process;
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].tgid, rows[0].count, rows[0].errnos.clone()), (into, 2, vec![(2, 2)]));
        assert_eq!(rows[0].latency.as_ref().map(LatencyHistogram::count), Some(2));
        assert_eq!(recording.processes.keys().collect::<Vec<_>>(), [&into]);
        assert_eq!((recording.processes[&into].comm.as_str(), recording.processes[&into].folded), ("app-main", 2));
    }

    #[test]
    fn folding_compacts_in_place_and_keeps_the_others_apart() {
        let of = |tgid: u32, function: &str, count: u64| {
            let mut delta = delta(function, count, 100);
            delta.stacks.as_mut().unwrap().stacks[0].tgid = tgid;
            delta.syscalls.as_mut().unwrap().per_process[0].tgid = tgid;
            delta.processes = [(tgid, Process { comm: "app".into(), ..Default::default() })].into();
            delta
        };
        let mut accumulator = Accumulator::default();
        for (tgid, function, count) in [(7, "main", 1), (8, "main", 2), (9, "main", 4), (9, "work", 8), (8, "work", 16)]
        {
            accumulator.add(&of(tgid, function, count));
        }
        let into = FIRST_FOLDED_ID;
        accumulator.fold(&[(7, into), (9, into)].into());
        // Added after the fold: found through the rebuilt index, not pushed twice.
        accumulator.add(&of(into, "work", 32));
        accumulator.add(&of(8, "main", 64));
        let recording = accumulator.finish();
        let stacks = recording.stacks.as_ref().unwrap();
        let mut counts: Vec<(u32, &str, u64)> = stacks
            .stacks
            .iter()
            .map(|s| (s.tgid, stacks.frames[s.frames[0] as usize].function.as_str(), s.count))
            .collect();
        counts.sort();
        assert_eq!(counts, [(8, "main", 66), (8, "work", 16), (into, "main", 5), (into, "work", 40)]);
        let rows: Vec<(u32, u64)> =
            recording.syscalls.as_ref().unwrap().per_process.iter().map(|row| (row.tgid, row.count)).collect();
        assert_eq!(rows, [(8, 3), (into, 4)]);
        assert_eq!(recording.processes[&into].folded, 2);
    }
}
