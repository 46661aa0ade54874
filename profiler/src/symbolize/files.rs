//! Names of code in mapped files, by file offset, kept across processes: the thousandth python3 of
//! a build loop is named from what the first one cost, not parsed again.
//!
//! Without `--inline`, a function's name is in a symbol table: the file's own, else its debug
//! file's (found by build-id in a debug directory or from debuginfod). Only where no such debug
//! file can be read is DWARF read (blazesym, following the file's debug link). DWARF is what costs: Debian's
//! libc6-dbg ships libc's debug sections compressed, and reading them inflates 20 MB, which, done
//! for every interval that met a new libc address, was the recorder's peak memory and a sixth of
//! its CPU. With `--inline` the inlined frames are in DWARF only, so DWARF is read first.

use std::{collections::HashMap, path::PathBuf, time::UNIX_EPOCH};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Source},
};

use super::{
    debuginfod::Debuginfod,
    maps::{FileKey, OpenFile},
};
use crate::unwind::Unwinder;

/// A file no process maps any more keeps its names this many intervals: short-lived processes of
/// one program (a build loop) map it again and again with gaps between.
const KEEP_UNMAPPED_INTERVALS: u64 = 120;

/// What an address is called: the function, then with `--inline` the functions inlined into it
/// (outermost first). None: nothing names it.
pub type Names = Option<Vec<String>>;

pub struct FileNames {
    inline: bool,
    /// Where debug files of stripped binaries are looked for (by build-id and debug link).
    debug_dirs: Vec<PathBuf>,
    debuginfod: Option<Debuginfod>,
    files: HashMap<FileKey, Named>,
    interval: u64,
}

/// What one file's offsets are called.
struct Named {
    /// The file as it was named: an inode freed and reused by another file is not this one.
    identity: Identity,
    names: HashMap<u64, Names>,
    last_used: u64,
}

/// Size and modification time of an open file.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Identity(u64, u128);

fn identity(file: &OpenFile) -> Identity {
    let metadata = std::fs::metadata(file.fd_path()).ok();
    let modified = metadata.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(UNIX_EPOCH).ok());
    Identity(metadata.map_or(0, |m| m.len()), modified.unwrap_or_default().as_nanos())
}

impl FileNames {
    pub fn new(inline: bool, debug_dirs: Vec<PathBuf>) -> FileNames {
        FileNames { inline, debug_dirs, debuginfod: Debuginfod::from_env(), files: HashMap::new(), interval: 0 }
    }

    /// Names the offsets of `file` not named yet.
    pub fn name(&mut self, key: FileKey, file: &OpenFile, offsets: &[u64], unwinder: Option<&Unwinder>) {
        let identity = identity(file);
        let interval = self.interval;
        let named = self.files.entry(key).or_insert_with(|| Named { identity, names: HashMap::new(), last_used: 0 });
        if named.identity != identity {
            *named = Named { identity, names: HashMap::new(), last_used: 0 };
        }
        named.last_used = interval;
        let mut new: Vec<u64> = offsets.iter().copied().filter(|offset| !named.names.contains_key(offset)).collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return;
        }
        let path = file.fd_path();
        // A file blazesym cannot read now is tried again next interval.
        let Some(mut found) =
            self.symbolize(Elf { debug_syms: self.inline, ..Elf::new(&path) }, Input::FileOffset(&new))
        else {
            return;
        };
        let unnamed: Vec<u64> = new.iter().zip(&found).filter(|(_, names)| names.is_none()).map(|(o, _)| *o).collect();
        if !unnamed.is_empty() {
            let from_debug_file =
                self.debug_file(file).and_then(|debug| self.names_from_debug_file(debug, key, &unnamed, unwinder));
            // What no symbol table names, DWARF (and the debug link) may.
            let more = match from_debug_file {
                None if !self.inline => {
                    self.symbolize(Elf { debug_syms: true, ..Elf::new(&path) }, Input::FileOffset(&unnamed))
                }
                other => other,
            };
            let mut more = more.unwrap_or_default().into_iter();
            for names in found.iter_mut().filter(|names| names.is_none()) {
                *names = more.next().flatten();
            }
        }
        let named = self.files.get_mut(&key).expect("inserted above");
        named.names.extend(new.into_iter().zip(found));
    }

    /// What `offset` of file `key` is called, once named.
    pub fn get(&self, key: &FileKey, offset: u64) -> Option<&[String]> {
        self.files.get(key)?.names.get(&offset)?.as_deref()
    }

    /// Ends an interval: files no longer `mapped` are forgotten after a while.
    pub fn end_interval(&mut self, mapped: impl Fn(&FileKey) -> bool) {
        self.interval += 1;
        let interval = self.interval;
        self.files.retain(|key, named| mapped(key) || interval - named.last_used <= KEEP_UNMAPPED_INTERVALS);
    }

    /// Names at addresses of one source, in order; none if the source cannot be read. One
    /// symbolizer per call, so that what blazesym parsed for it is let go before the next source is
    /// parsed.
    fn symbolize(&self, elf: Elf, input: Input<&[u64]>) -> Option<Vec<Names>> {
        let len = input.as_inner_ref().len();
        let symbolizer = Symbolizer::builder()
            .enable_inlined_fns(self.inline)
            .enable_code_info(self.inline)
            .set_debug_dirs(Some(&self.debug_dirs))
            .build();
        let results = symbolizer.symbolize(&Source::Elf(elf), input).ok()?;
        let mut names: Vec<Names> = results.iter().map(|result| names(result, self.inline)).collect();
        names.resize(len, None);
        Some(names)
    }

    /// The debug file of a file, by its build-id: in a debug directory's `.build-id` tree, else
    /// from a debuginfod server.
    fn debug_file(&mut self, file: &OpenFile) -> Option<PathBuf> {
        let build_id = super::build_id(&file.fd_path())?;
        let (head, tail) = (build_id.get(..2)?, build_id.get(2..)?);
        let local = self.debug_dirs.iter().map(|dir| dir.join(".build-id").join(head).join(format!("{tail}.debug")));
        local.into_iter().find(|path| path.is_file()).or_else(|| self.debuginfod.as_mut()?.debug_file(&build_id))
    }

    /// Names from a debug file, at the offsets' file addresses (a debug file maps nothing); none if
    /// the addresses are unknown (the file has no unwind table) or the debug file cannot be read.
    fn names_from_debug_file(
        &self,
        debug_file: PathBuf,
        key: FileKey,
        offsets: &[u64],
        unwinder: Option<&Unwinder>,
    ) -> Option<Vec<Names>> {
        let unwinder = unwinder?;
        let addresses: Vec<Option<u64>> = offsets.iter().map(|&offset| unwinder.file_address(&key, offset)).collect();
        let known: Vec<u64> = addresses.iter().flatten().copied().collect();
        if known.is_empty() {
            return None;
        }
        let elf = Elf { debug_syms: self.inline, ..Elf::new(debug_file) };
        let mut found = self.symbolize(elf, Input::VirtOffset(&known))?.into_iter();
        Some(addresses.iter().map(|address| address.and_then(|_| found.next().flatten())).collect())
    }
}

/// Names for one address: the function and, with `--inline`, the functions inlined into it
/// (outermost first, as they appear going from root to leaf).
pub fn names(symbolized: &Symbolized<'_>, inline: bool) -> Names {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbolize::maps::MapsCache;

    #[inline(never)]
    fn a_function_of_this_test() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn names_are_kept_per_file_until_the_file_is_long_unmapped() {
        let mut maps = MapsCache::default();
        let me = std::process::id();
        maps.snapshot(me).unwrap();
        let addr = a_function_of_this_test as fn() -> u64 as usize as u64;
        let mapping = maps.find(me, addr).unwrap().clone();
        let key = mapping.file.unwrap();
        let offset = addr - mapping.start + mapping.file_offset;
        let mut files = FileNames::new(false, Vec::new());
        files.name(key, maps.file(&key).unwrap(), &[offset, offset], None);
        let named = files.get(&key, offset).expect("named from the symbol table");
        assert!(named[0].ends_with("a_function_of_this_test"), "{named:?}");
        assert_eq!(files.files[&key].names.len(), 1);

        for _ in 0..KEEP_UNMAPPED_INTERVALS {
            files.end_interval(|_| false);
        }
        assert!(files.get(&key, offset).is_some(), "kept a while after the file is unmapped");
        files.end_interval(|_| true);
        assert!(files.get(&key, offset).is_some(), "kept while mapped");
        files.end_interval(|_| false);
        assert!(files.get(&key, offset).is_none(), "forgotten");
    }
}
