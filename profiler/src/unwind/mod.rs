//! Unwind tables in the kernel: for each executable file a sampled process maps, its table
//! (`profiler-unwind` builds it from the file's `.eh_frame`) is written once into the unwinder's
//! rows (keyed by build-id, so 500 processes of one binary cost one table), and each process's
//! mappings point at the tables of its files. What does not fit is counted, and walked with frame
//! pointers.

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, Map},
};
use profiler_common::unwind::{
    MAX_MAPPINGS, MAX_ROWS, Mapping, NO_TABLE, PROCESS_MAPPINGS, PageKey, PageRows, ProcessMappings, UNWIND_PAGES,
    UNWIND_ROWS, UnwindRow,
};
use profiler_unwind::Table;

use crate::symbolize::maps::{FileKey, MapsCache, OpenFile};

/// What the tables cost and what did not fit, for the summary and the benchmarks.
#[derive(Clone, Debug, Default)]
pub struct UnwindStats {
    pub tables: u32,
    pub rows: u32,
    pub row_capacity: u32,
    /// Files whose table did not fit in the rows left.
    pub no_room: u32,
    /// Files without call frame information, or whose information could not be read.
    pub no_table: u32,
    /// Processes with more executable mappings than the unwinder keeps.
    pub mappings_cut: u32,
    pub build_time: Duration,
    /// Bytes of the files whose tables were built.
    pub bytes_read: u64,
}

/// A file's table in the kernel: its id, and what symbolization needs of it.
struct Loaded {
    id: u32,
    table: Table,
}

/// The tables loaded and the process mappings written.
pub struct Unwinder {
    rows: RowsMapping,
    next_row: u32,
    /// By build-id and by file identity; `None`: the file has no table.
    by_build_id: HashMap<Vec<u8>, usize>,
    by_file: HashMap<FileKey, Option<usize>>,
    loaded: Vec<Loaded>,
    /// What the kernel holds for each process.
    processes: HashMap<u32, Vec<Mapping>>,
    pub stats: UnwindStats,
}

/// `UNWIND_ROWS`, written in place through a mapping of just the pages a table's rows cover, not
/// by a syscall each. The mapping lasts one write: the kernel maps every page of a mapped range at
/// once, so a mapping of the whole map would count its 32 MiB in our RSS for as long as it lived,
/// though the memory is the map's (counted as such, in the kernel).
struct RowsMapping {
    map: std::os::fd::OwnedFd,
    rows: u32,
}

impl RowsMapping {
    fn new(ebpf: &Ebpf) -> Result<Self> {
        let Some(Map::Array(data)) = ebpf.map(UNWIND_ROWS) else {
            bail!("map {UNWIND_ROWS} missing from the eBPF object")
        };
        let map = data.fd().as_fd().try_clone_to_owned().context("cannot hold the unwind rows")?;
        Ok(RowsMapping { map, rows: MAX_ROWS })
    }

    fn write(&mut self, at: u32, rows: &[UnwindRow]) -> Result<()> {
        const PAGE: u64 = 4096;
        let size = size_of::<UnwindRow>() as u64;
        let start = u64::from(at) * size;
        let first_page = start / PAGE * PAGE;
        let len = (start + size_of_val(rows) as u64 - first_page) as usize;
        // SAFETY: a shared mapping of pages inside the map's memory (rows end below MAX_ROWS, so
        // within its size); only this process writes the map, and the mapping ends with this call.
        let mut memory =
            unsafe { memmap2::MmapOptions::new().offset(first_page).len(len).map_mut(self.map.as_raw_fd()) }
                .context("cannot map the unwind rows")?;
        // SAFETY: UnwindRow is repr(C) integers without padding: its bytes are its value.
        let bytes = unsafe { std::slice::from_raw_parts(rows.as_ptr().cast::<u8>(), size_of_val(rows)) };
        let offset = (start - first_page) as usize;
        memory[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
}

impl Unwinder {
    pub fn new(ebpf: &Ebpf) -> Result<Self> {
        Ok(Unwinder {
            rows: RowsMapping::new(ebpf)?,
            // Row 0 is never used: an empty page points nowhere.
            next_row: 1,
            by_build_id: HashMap::new(),
            by_file: HashMap::new(),
            loaded: Vec::new(),
            processes: HashMap::new(),
            stats: UnwindStats { row_capacity: MAX_ROWS, ..Default::default() },
        })
    }

    /// Points the kernel at the tables of `tgid`'s current mappings, building the tables it lacks.
    /// Nothing changes if the mappings are the same as last time.
    pub fn load_process(&mut self, ebpf: &mut Ebpf, tgid: u32, maps: &MapsCache) -> Result<()> {
        let Some(snapshot) = maps.latest(tgid) else { return Ok(()) };
        let mut mappings = Vec::with_capacity(snapshot.len());
        for mapping in snapshot {
            let file = mapping.file.and_then(|key| maps.file(&key).map(|open| (key, open)));
            let table = file.and_then(|(key, open)| self.table_for(ebpf, key, open));
            let size = mapping.end - mapping.start;
            let address = |t: usize| self.loaded[t].table.mapping_address(mapping.file_offset, size);
            let (table, bias) = match table.and_then(|t| Some((t, address(t)?))) {
                Some((index, address)) => (self.loaded[index].id, mapping.start.wrapping_sub(address)),
                None => (NO_TABLE, 0),
            };
            mappings.push(Mapping { start: mapping.start, end: mapping.end, bias, table, _pad: 0 });
        }
        mappings.sort_by_key(|m| m.start);
        if self.processes.get(&tgid) == Some(&mappings) {
            return Ok(());
        }
        if mappings.len() > MAX_MAPPINGS {
            self.stats.mappings_cut += 1;
        }
        let mut value = ProcessMappings { count: 0, _pad: 0, mappings: [Mapping::default(); MAX_MAPPINGS] };
        for (slot, mapping) in value.mappings.iter_mut().zip(&mappings) {
            *slot = *mapping;
            value.count += 1;
        }
        let mut map: BpfHashMap<_, u32, ProcessMappings> = BpfHashMap::try_from(map_mut(ebpf, PROCESS_MAPPINGS)?)?;
        map.insert(tgid, value, 0).with_context(|| format!("cannot give process {tgid} its unwind tables"))?;
        self.processes.insert(tgid, mappings);
        Ok(())
    }

    /// Forgets processes that exited.
    pub fn forget(&mut self, ebpf: &mut Ebpf, tgids: &[u32]) -> Result<()> {
        let mut map: BpfHashMap<_, u32, ProcessMappings> = BpfHashMap::try_from(map_mut(ebpf, PROCESS_MAPPINGS)?)?;
        for tgid in tgids {
            if self.processes.remove(tgid).is_some() {
                let _ = map.remove(tgid);
            }
        }
        Ok(())
    }

    /// The file address that `file_offset` of file `key` is loaded at, from its table's segments.
    pub fn file_address(&self, key: &FileKey, file_offset: u64) -> Option<u64> {
        self.loaded[(*self.by_file.get(key)?)?].table.file_address(file_offset)
    }

    /// The file offset where the function holding `file_offset` of file `key` starts, from its
    /// table: frames no symbol names still add up per function.
    pub fn function_start(&self, key: &FileKey, file_offset: u64) -> Option<u64> {
        let table = &self.loaded[(*self.by_file.get(key)?)?].table;
        table.file_offset(table.function_start(table.file_address(file_offset)?)?)
    }

    /// The index in `loaded` of the table of a file, built and written if need be.
    fn table_for(&mut self, ebpf: &mut Ebpf, key: FileKey, file: &OpenFile) -> Option<usize> {
        if let Some(known) = self.by_file.get(&key) {
            return *known;
        }
        let built = self.build(ebpf, file);
        let index =
            built.inspect_err(|error| tracing::debug!("no unwind table for {}: {error:#}", file.path)).ok().flatten();
        self.by_file.insert(key, index);
        index
    }

    fn build(&mut self, ebpf: &mut Ebpf, file: &OpenFile) -> Result<Option<usize>> {
        let started = std::time::Instant::now();
        let handle = std::fs::File::open(file.fd_path())?;
        // SAFETY: a read-only private mapping of a file we hold open; a file changed under us at
        // worst gives a wrong table, not a fault in our memory.
        let data = unsafe { memmap2::Mmap::map(&handle) }.with_context(|| format!("cannot map {}", file.path))?;
        if let Some(&index) = profiler_unwind::build_id(&data).and_then(|id| self.by_build_id.get(&id)) {
            return Ok(Some(index));
        }
        let table = match profiler_unwind::build(&data) {
            Ok(table) => table,
            Err(error) => {
                self.stats.no_table += 1;
                return Err(error.into());
            }
        };
        self.stats.bytes_read += data.len() as u64;
        let paged = table.paged();
        if u64::from(self.next_row) + paged.rows.len() as u64 > u64::from(self.rows.rows) {
            self.stats.no_room += 1;
            bail!("no room left for its {} rows", paged.rows.len());
        }
        let id = self.loaded.len() as u32 + 1;
        let first = self.next_row;
        self.rows.write(first, &paged.rows)?;
        let mut pages: BpfHashMap<_, PageKey, PageRows> = BpfHashMap::try_from(map_mut(ebpf, UNWIND_PAGES)?)?;
        for (page, rows) in &paged.pages {
            let rows = PageRows { first: first + rows.first, count: rows.count };
            pages.insert(PageKey { table: id, page: *page }, rows, 0).context("the unwind pages map is full")?;
        }
        self.next_row += paged.rows.len() as u32;
        self.stats.rows = self.next_row - 1;
        self.stats.tables += 1;
        self.stats.build_time += started.elapsed();
        let index = self.loaded.len();
        if let Some(build_id) = table.build_id.clone() {
            self.by_build_id.insert(build_id, index);
        }
        // The rows are in the kernel now: keep what symbolization needs.
        self.loaded.push(Loaded { id, table: Table { rows: Vec::new(), ..table } });
        Ok(Some(index))
    }
}

fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Map> {
    ebpf.map_mut(name).with_context(|| format!("map {name} missing from the eBPF object"))
}
