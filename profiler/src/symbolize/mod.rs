//! Turning raw stack addresses into named frames with blazesym: kernel addresses through kallsyms
//! (or vmlinux), user addresses through the process's mappings (captured while it lived) into
//! (file, file offset), symbolized against the ELF file with its DWARF when present. Frames that
//! cannot be named keep their module and offset.

mod debuginfod;
mod files;
pub mod maps;
mod perf_map;

use std::{collections::HashMap, path::PathBuf};

use blazesym::symbolize::{
    Input, Symbolizer,
    source::{Kernel, Source},
};

use crate::{
    recording::{Frame, Module, Stack, Stacks, wait_state_frame},
    unwind::Unwinder,
};
use files::{FileNames, names};
use maps::{FileKey, MapsCache};
use profiler_common::{offcpu::WaitState, unwind::StackEnd};

/// A sample's stacks as the kernel gave them: instruction pointers, leaf first, and why the user
/// stack ends where it does.
#[derive(Clone, Debug)]
pub struct RawStack {
    pub tgid: u32,
    pub tid: u32,
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
    pub end: StackEnd,
    /// Samples; off CPU, nanoseconds blocked.
    pub count: u64,
    /// Off CPU: times blocked.
    pub blocks: u64,
    /// Off CPU: the state the thread blocked in, drawn as the stack's leaf.
    pub wait: Option<WaitState>,
}

/// Builds interned frames and modules.
#[derive(Default)]
struct Interner {
    frames: Vec<Frame>,
    frame_ids: HashMap<Frame, u32>,
    modules: Vec<Module>,
    module_ids: HashMap<String, u32>,
}

impl Interner {
    fn module(&mut self, path: &str, build_id: impl FnOnce() -> Option<String>) -> u32 {
        if let Some(&id) = self.module_ids.get(path) {
            return id;
        }
        let id = self.modules.len() as u32;
        self.modules.push(Module { path: path.to_string(), build_id: build_id() });
        self.module_ids.insert(path.to_string(), id);
        id
    }

    fn frame(&mut self, frame: Frame) -> u32 {
        if let Some(&id) = self.frame_ids.get(&frame) {
            return id;
        }
        let id = self.frames.len() as u32;
        self.frames.push(frame.clone());
        self.frame_ids.insert(frame, id);
        id
    }
}

/// Names stacks, interval after interval: what an address is called is worked out once and kept
/// (per kernel address; per file and offset for user code, and per process and address, forgotten
/// when the process is).
pub struct StackSymbolizer {
    inline: bool,
    files: FileNames,
    /// Kept for the session: it holds kallsyms parsed (a few MB), where parsing it again for every
    /// interval's new kernel addresses was most of the recorder's CPU time.
    kernel: Symbolizer,
    interner: Interner,
    kernel_frames: HashMap<u64, Vec<u32>>,
    user_frames: HashMap<(u32, u64), Vec<u32>>,
}

const KERNEL_MODULE: &str = "[kernel.kallsyms]";
/// Where distributions install debug files (blazesym's defaults).
const SYSTEM_DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl StackSymbolizer {
    /// `debug_dirs` come before the system's (/usr/lib/debug, /lib/debug); debuginfod servers are
    /// asked when `DEBUGINFOD_URLS` names some.
    pub fn new(inline: bool, debug_dirs: &[PathBuf]) -> Self {
        let debug_dirs = debug_dirs.iter().cloned().chain(SYSTEM_DEBUG_DIRS.iter().map(PathBuf::from)).collect();
        Self {
            inline,
            files: FileNames::new(inline, debug_dirs),
            kernel: Symbolizer::builder().enable_inlined_fns(inline).enable_code_info(inline).build(),
            interner: Interner::default(),
            kernel_frames: HashMap::new(),
            user_frames: HashMap::new(),
        }
    }

    /// The stacks, named, with their own frame and module tables: samples of the same process and
    /// frames add up.
    pub fn symbolize(&mut self, raw: &[RawStack], maps: &MapsCache, unwinder: Option<&Unwinder>) -> Stacks {
        let raw: Vec<(RawStack, bool)> = raw.iter().map(|stack| without_junk(stack, maps)).collect();
        let (raw, cut): (Vec<RawStack>, Vec<bool>) = raw.into_iter().unzip();
        self.name_kernel_addresses(&raw);
        self.name_user_addresses(&raw, maps, unwinder);
        let mut merged: HashMap<(u32, u32, Vec<u32>), (u64, u64)> = HashMap::new();
        for (stack, cut) in raw.iter().zip(cut) {
            let mut frames = Vec::with_capacity(stack.kernel.len() + stack.user.len() + 2);
            if let Some(wait) = stack.wait {
                let function = wait_state_frame(wait).to_string();
                frames.push(self.interner.frame(Frame { function, module: None, kernel: false, inlined: false }));
            }
            // Off CPU, the kernel stack was taken in the switch's BPF program: its frames up to
            // __schedule are the tracing machinery, not where the thread waits.
            let tracing = if stack.wait.is_some() { self.tracing_frames(&stack.kernel) } else { 0 };
            for addr in &stack.kernel[tracing..] {
                frames.extend_from_slice(&self.kernel_frames[addr]);
            }
            for addr in &stack.user {
                frames.extend_from_slice(&self.user_frames[&(stack.tgid, *addr)]);
            }
            if let Some(function) = root_frame(stack.end, cut) {
                // The root of a cut or lost stack says why: the flamegraph shows it, and it is
                // never read as the process's outermost function.
                frames.push(self.interner.frame(Frame { function, module: None, kernel: false, inlined: false }));
            }
            let (count, blocks) = merged.entry((stack.tgid, stack.tid, frames)).or_default();
            *count += stack.count;
            *blocks += stack.blocks;
        }
        let mut tables = LocalTables::default();
        let mut stacks: Vec<Stack> = merged
            .into_iter()
            .map(|((tgid, tid, frames), (count, blocks))| {
                let frames = frames.iter().map(|&id| tables.frame(&self.interner, id)).collect();
                Stack { tgid, tid, frames, count, blocks }
            })
            .collect();
        stacks.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| (a.tgid, a.tid, &a.frames).cmp(&(b.tgid, b.tid, &b.frames)))
        });
        Stacks { frames: tables.frames, modules: tables.modules, stacks }
    }

    /// Ends an interval (after its stacks of every kind are named): what files no longer mapped
    /// are called is forgotten after a while.
    pub fn end_interval(&mut self, maps: &MapsCache) {
        self.files.end_interval(|key| maps.file(key).is_some());
    }

    /// How many of a kernel stack's leaf addresses are the tracing machinery that ran the BPF
    /// program that took it: all before the first `__schedule` (the program, `bpf_trace_run4`,
    /// `__bpf_trace_*`, `__traceiter_*`), or, when no frame is named `__schedule` (hidden kernel
    /// symbols), those named as the machinery.
    fn tracing_frames(&self, kernel: &[u64]) -> usize {
        const MACHINERY: [&str; 4] = ["bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_"];
        let name = |addr: &u64| {
            let first = self.kernel_frames[addr].first().and_then(|&id| self.interner.frames.get(id as usize));
            first.map_or("", |frame| frame.function.as_str())
        };
        kernel.iter().position(|addr| name(addr) == "__schedule").unwrap_or_else(|| {
            kernel.iter().take_while(|addr| MACHINERY.iter().any(|prefix| name(addr).starts_with(prefix))).count()
        })
    }

    /// Forgets what user addresses of these processes are called (they exited).
    pub fn forget(&mut self, tgids: &[u32]) {
        if !tgids.is_empty() {
            self.user_frames.retain(|(tgid, _), _| !tgids.contains(tgid));
        }
    }

    /// Names the kernel addresses not named yet: frames leaf first (inlined frames before the
    /// function they are in).
    fn name_kernel_addresses(&mut self, raw: &[RawStack]) {
        let mut addrs: Vec<u64> =
            raw.iter().flat_map(|s| s.kernel.iter().copied()).filter(|a| !self.kernel_frames.contains_key(a)).collect();
        addrs.sort_unstable();
        addrs.dedup();
        if addrs.is_empty() {
            return;
        }
        let source = Source::Kernel(Kernel::default());
        let results = self.kernel.symbolize(&source, Input::AbsAddr(&addrs)).unwrap_or_default();
        let (inline, interner) = (self.inline, &mut self.interner);
        let module = interner.module(KERNEL_MODULE, || None);
        let named: Vec<(u64, Vec<u32>)> = addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let names = results.get(i).and_then(|s| names(s, inline));
                let frames = match names {
                    Some(names) => frames_for(interner, names, module, true),
                    None => vec![interner.frame(Frame {
                        function: format!("{KERNEL_MODULE}+{addr:#x}"),
                        module: Some(module),
                        kernel: true,
                        inlined: false,
                    })],
                };
                (addr, frames)
            })
            .collect();
        self.kernel_frames.extend(named);
    }

    /// Names the (process, user address) pairs not named yet: frames leaf first.
    fn name_user_addresses(&mut self, raw: &[RawStack], maps: &MapsCache, unwinder: Option<&Unwinder>) {
        let mut pairs: Vec<(u32, u64)> = raw
            .iter()
            .flat_map(|s| s.user.iter().map(move |&a| (s.tgid, a)))
            .filter(|pair| !self.user_frames.contains_key(pair))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        if pairs.is_empty() {
            return;
        }

        // Group file-backed addresses by file so each file is symbolized in one batch.
        let mut by_file: HashMap<FileKey, Vec<u64>> = HashMap::new();
        let mut located: Vec<Located> = Vec::with_capacity(pairs.len());
        for &(tgid, addr) in &pairs {
            let place = match maps.find(tgid, addr) {
                Some(mapping) => {
                    let offset = addr - mapping.start + mapping.file_offset;
                    let file = mapping.file.filter(|k| maps.file(k).is_some());
                    if let Some(key) = file {
                        by_file.entry(key).or_default().push(offset);
                    }
                    let anonymous = mapping.path.is_empty();
                    Located { tgid, addr, file, offset: (!anonymous).then_some(offset), path: mapping.path.clone() }
                }
                None => Located { tgid, addr, file: None, offset: None, path: String::new() },
            };
            located.push(place);
        }
        for (key, offsets) in &by_file {
            if let Some(file) = maps.file(key) {
                self.files.name(*key, file, offsets, unwinder);
            }
        }

        let mut perf_maps = perf_map::PerfMaps::default();
        let (interner, files) = (&mut self.interner, &self.files);
        let named: Vec<((u32, u64), Vec<u32>)> = located
            .into_iter()
            .map(|Located { tgid, addr, file, offset, path }| {
                let module_path = if path.is_empty() { "[anon]".to_string() } else { path };
                let module = interner
                    .module(&module_path, || file.and_then(|key| maps.file(&key)).and_then(|f| build_id(&f.fd_path())));
                let names = match (file, offset) {
                    (Some(key), Some(offset)) => files.get(&key, offset).map(<[String]>::to_vec),
                    // Anonymous executable memory: JIT code, named in /tmp/perf-PID.map if the
                    // runtime writes one.
                    _ => perf_maps.lookup(tgid, addr).map(|name| vec![name]),
                };
                let frames = match names {
                    Some(names) => frames_for(interner, names, module, false),
                    None => {
                        // Offsets within a file are stable across runs; addresses are not. Where the
                        // unwind table knows the function's start, every address of the function
                        // is one frame.
                        let start = file
                            .zip(offset)
                            .zip(unwinder)
                            .and_then(|((key, offset), u)| u.function_start(&key, offset));
                        let offset = start.or(offset).unwrap_or(addr);
                        vec![interner.frame(Frame {
                            function: format!("{}+{offset:#x}", basename(&module_path)),
                            module: Some(module),
                            kernel: false,
                            inlined: false,
                        })]
                    }
                };
                ((tgid, addr), frames)
            })
            .collect();
        self.user_frames.extend(named);
    }
}

/// The frame and module tables of one `Stacks`, taken from the symbolizer's own as they are used.
#[derive(Default)]
struct LocalTables {
    frames: Vec<Frame>,
    modules: Vec<Module>,
    frame_ids: HashMap<u32, u32>,
    module_ids: HashMap<u32, u32>,
}

impl LocalTables {
    fn frame(&mut self, interner: &Interner, global: u32) -> u32 {
        if let Some(&local) = self.frame_ids.get(&global) {
            return local;
        }
        let mut frame = interner.frames[global as usize].clone();
        frame.module = frame.module.map(|m| {
            *self.module_ids.entry(m).or_insert_with(|| {
                self.modules.push(interner.modules[m as usize].clone());
                self.modules.len() as u32 - 1
            })
        });
        let local = self.frames.len() as u32;
        self.frames.push(frame);
        self.frame_ids.insert(global, local);
        local
    }
}

/// The frame that says why a stack is cut short or lost; none for a whole stack. A frame-pointer
/// walk is cut where junk was cut off it (`cut`).
fn root_frame(end: StackEnd, cut: bool) -> Option<String> {
    match end {
        StackEnd::Complete | StackEnd::NoUserStack => None,
        StackEnd::FramePointers if !cut => None,
        StackEnd::Lost => Some(LOST_FRAME.to_string()),
        other => Some(format!("[truncated: {}]", crate::probes::oncpu::stack_end_name(other))),
    }
}

/// The root of a sample whose stack could not be kept (its frame map was full): counted and
/// drawn, never shown as an empty stack.
pub const LOST_FRAME: &str = "[lost]";

/// A stack the kernel walked by frame pointers (before the process's tables were loaded) may run
/// into junk, a register that holds no frame pointer in code built without them: it ends at its
/// first address in no executable mapping. Returns whether it was cut.
fn without_junk(stack: &RawStack, maps: &MapsCache) -> (RawStack, bool) {
    let mut stack = stack.clone();
    let junk = match stack.end {
        StackEnd::FramePointers => stack.user.iter().position(|&addr| maps.find(stack.tgid, addr).is_none()),
        _ => None,
    };
    if let Some(junk) = junk {
        stack.user.truncate(junk);
    }
    (stack, junk.is_some())
}

/// Where a user address lies: its file (when we hold it open), its offset in the mapped file
/// (not for anonymous memory), and the mapping's path.
struct Located {
    tgid: u32,
    addr: u64,
    file: Option<FileKey>,
    offset: Option<u64>,
    path: String,
}

/// Interns an address's frames: `names` is outermost first; the result is leaf first.
fn frames_for(interner: &mut Interner, names: Vec<String>, module: u32, kernel: bool) -> Vec<u32> {
    let outermost = 0;
    let mut frames: Vec<u32> = names
        .into_iter()
        .enumerate()
        .map(|(i, function)| interner.frame(Frame { function, module: Some(module), kernel, inlined: i != outermost }))
        .collect();
    frames.reverse();
    frames
}

fn build_id(path: &std::path::Path) -> Option<String> {
    let id = blazesym::helper::read_elf_build_id(&path).ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}
