//! Turning raw stack addresses into named frames with blazesym: kernel addresses through kallsyms
//! (or vmlinux), user addresses through the process's mappings (captured while it lived) into
//! (file, file offset), symbolized against the ELF file with its DWARF when present. Frames that
//! cannot be named keep their module and offset.

pub mod maps;
mod perf_map;

use std::collections::HashMap;

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use crate::recording::{Frame, Module, Stack, Stacks};
use maps::{FileKey, MapsCache};

/// A sample's stacks as the kernel gave them: instruction pointers, leaf first.
#[derive(Clone, Debug, Default)]
pub struct RawStack {
    pub tgid: u32,
    pub tid: u32,
    pub kernel: Vec<u64>,
    pub user: Vec<u64>,
    pub count: u64,
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

pub struct StackSymbolizer {
    inline: bool,
}

const KERNEL_MODULE: &str = "[kernel.kallsyms]";

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Names for one address: the function and, with `--inline`, the functions inlined into it
/// (outermost first, as they appear going from root to leaf).
fn names(symbolized: &Symbolized<'_>, inline: bool) -> Option<Vec<String>> {
    match symbolized {
        Symbolized::Sym(sym) => {
            let mut names = vec![sym.name.to_string()];
            if inline {
                names.extend(sym.inlined.iter().map(|f| f.name.to_string()));
            }
            Some(names)
        }
        Symbolized::Unknown(_) => None,
    }
}

impl StackSymbolizer {
    pub fn new(inline: bool) -> Self {
        Self { inline }
    }

    /// A symbolizer for one source. blazesym keeps what it parsed (kallsyms, a file's symbols and
    /// DWARF, libc's debug file among them) for as long as the symbolizer lives: one per source
    /// lets each go before the next is parsed, so memory peaks at the largest one, not their sum.
    fn symbolizer(&self) -> Symbolizer {
        Symbolizer::builder().enable_inlined_fns(self.inline).enable_code_info(self.inline).build()
    }

    pub fn symbolize(&self, raw: &[RawStack], maps: &MapsCache) -> Stacks {
        let mut interner = Interner::default();
        let kernel_frames = self.kernel_frames(raw, &mut interner);
        let user_frames = self.user_frames(raw, maps, &mut interner);
        let mut merged: HashMap<(u32, u32, Vec<u32>), u64> = HashMap::new();
        for stack in raw {
            let mut frames = Vec::with_capacity(stack.kernel.len() + stack.user.len());
            for addr in &stack.kernel {
                frames.extend_from_slice(&kernel_frames[addr]);
            }
            for addr in &stack.user {
                frames.extend_from_slice(&user_frames[&(stack.tgid, *addr)]);
            }
            *merged.entry((stack.tgid, stack.tid, frames)).or_default() += stack.count;
        }
        let mut stacks: Vec<Stack> =
            merged.into_iter().map(|((tgid, tid, frames), count)| Stack { tgid, tid, frames, count }).collect();
        stacks.sort_by(|a, b| {
            b.count.cmp(&a.count).then_with(|| (a.tgid, a.tid, &a.frames).cmp(&(b.tgid, b.tid, &b.frames)))
        });
        Stacks { frames: interner.frames, modules: interner.modules, stacks }
    }

    /// Frames of each kernel address, leaf first (inlined frames before the function they are in).
    fn kernel_frames(&self, raw: &[RawStack], interner: &mut Interner) -> HashMap<u64, Vec<u32>> {
        let mut addrs: Vec<u64> = raw.iter().flat_map(|s| s.kernel.iter().copied()).collect();
        addrs.sort_unstable();
        addrs.dedup();
        let source = Source::Kernel(Kernel::default());
        let symbolizer = self.symbolizer();
        let results = symbolizer.symbolize(&source, Input::AbsAddr(&addrs)).unwrap_or_default();
        let module = interner.module(KERNEL_MODULE, || None);
        addrs
            .iter()
            .enumerate()
            .map(|(i, &addr)| {
                let names = results.get(i).and_then(|s| names(s, self.inline));
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
            .collect()
    }

    /// Frames of each (process, user address), leaf first.
    fn user_frames(
        &self,
        raw: &[RawStack],
        maps: &MapsCache,
        interner: &mut Interner,
    ) -> HashMap<(u32, u64), Vec<u32>> {
        let mut pairs: Vec<(u32, u64)> = raw.iter().flat_map(|s| s.user.iter().map(move |&a| (s.tgid, a))).collect();
        pairs.sort_unstable();
        pairs.dedup();

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
        let mut names_by_offset: HashMap<(FileKey, u64), Vec<String>> = HashMap::new();
        for (key, offsets) in &mut by_file {
            offsets.sort_unstable();
            offsets.dedup();
            let Some(file) = maps.file(key) else { continue };
            let source = Source::Elf(Elf::new(file.fd_path()));
            let symbolizer = self.symbolizer();
            let results = symbolizer.symbolize(&source, Input::FileOffset(offsets)).unwrap_or_default();
            for (offset, result) in offsets.iter().zip(&results) {
                if let Some(names) = names(result, self.inline) {
                    names_by_offset.insert((*key, *offset), names);
                }
            }
        }

        let mut perf_maps = perf_map::PerfMaps::default();
        located
            .into_iter()
            .map(|Located { tgid, addr, file, offset, path }| {
                let module_path = if path.is_empty() { "[anon]".to_string() } else { path };
                let module = interner
                    .module(&module_path, || file.and_then(|key| maps.file(&key)).and_then(|f| build_id(&f.fd_path())));
                let names = match (file, offset) {
                    (Some(key), Some(offset)) => names_by_offset.get(&(key, offset)).cloned(),
                    // Anonymous executable memory: JIT code, named in /tmp/perf-PID.map if the
                    // runtime writes one.
                    _ => perf_maps.lookup(tgid, addr).map(|name| vec![name]),
                };
                let frames = match names {
                    Some(names) => frames_for(interner, names, module, false),
                    None => {
                        // Offsets within a file are stable across runs; addresses are not.
                        let offset = offset.unwrap_or(addr);
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
            .collect()
    }
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
