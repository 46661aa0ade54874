//! Unwind tables for the profiler's eBPF unwinder, built from an ELF file's call frame information
//! (`.eh_frame`, found through `PT_GNU_EH_FRAME` when the section headers are gone, and
//! `.debug_frame` where it covers what `.eh_frame` does not).
//!
//! Each row of the CFI, as gimli evaluates it, becomes a compact rule (`profiler_common::unwind`):
//! where the CFA is (RSP or RBP plus an offset, a PLT stub's, a dereferenced RSP, a signal frame's),
//! where RBP was saved, or that the stack ends there. Gaps between functions get a row saying no
//! information covers them. Rows are then grouped in 64 KiB pages for the kernel.
//!
//! Pure code: no BPF, no process; tested on the system's own binaries.

mod elf;
mod rules;

use std::ops::Range;

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindContext, UnwindSection};
use profiler_common::unwind::{CFA_NONE, PAGE_BITS, PageRows, UnwindRow};

pub use elf::Segment;
pub use rules::Rule;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not an ELF file we read: {0}")]
    Elf(#[from] object::Error),
    #[error("no call frame information (.eh_frame, .debug_frame)")]
    NoFrameInfo,
    #[error("cannot read the call frame information: {0}")]
    Cfi(#[from] gimli::Error),
    #[error("{0}")]
    Layout(&'static str),
}

/// One FDE: the addresses it covers, and its rows.
type Fde = (Range<u64>, Vec<(u64, Rule)>);

/// One row: `rule` holds from `address` (a file address) to the next row's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub address: u64,
    pub rule: Rule,
}

/// The unwind table of one file.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Sorted by address; consecutive rows differ in rule.
    pub rows: Vec<Row>,
    /// Each function's (FDE's) addresses, sorted: frames that no symbol names are still one frame
    /// per function.
    pub functions: Vec<Range<u64>>,
    /// The file's loadable segments, to turn a mapping's file offset into a file address.
    pub segments: Vec<Segment>,
    /// FDEs that could not be read, left out.
    pub skipped: usize,
    /// The file's GNU build-id: one table serves every copy of a file.
    pub build_id: Option<Vec<u8>>,
}

/// A table in the kernel's layout: rows grouped by page, each page's rows starting with the row in
/// force at its first address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paged {
    pub rows: Vec<UnwindRow>,
    /// (page, rows of that page, indexing `rows`).
    pub pages: Vec<(u32, PageRows)>,
}

/// The GNU build-id of an ELF file, read without building its table.
pub fn build_id(data: &[u8]) -> Option<Vec<u8>> {
    elf::File::parse(data).ok()?.build_id()
}

/// Builds the table of an ELF file from its bytes.
pub fn build(data: &[u8]) -> Result<Table, Error> {
    let file = elf::File::parse(data)?;
    let mut fdes: Vec<Fde> = Vec::new();
    let mut skipped = 0;
    if let Some(eh) = file.eh_frame() {
        let mut section = EhFrame::new(eh.data, LittleEndian);
        section.set_address_size(8);
        let bases = file.bases(eh.address);
        skipped += read_fdes(&section, &bases, &mut fdes);
    }
    if let Some(debug) = file.debug_frame() {
        let mut section = gimli::DebugFrame::new(debug, LittleEndian);
        section.set_address_size(8);
        let mut extra = Vec::new();
        skipped += read_fdes(&section, &BaseAddresses::default(), &mut extra);
        // `.eh_frame` is what the program itself unwinds with: `.debug_frame` only fills gaps.
        fdes.sort_by_key(|(range, _)| range.start);
        extra.retain(|(range, _)| !overlaps(&fdes, range));
        fdes.extend(extra);
    }
    if fdes.is_empty() {
        return Err(Error::NoFrameInfo);
    }
    fdes.sort_by_key(|(range, _)| range.start);
    Ok(Table {
        rows: rows(&fdes),
        functions: fdes.iter().map(|(r, _)| r.clone()).collect(),
        build_id: file.build_id(),
        segments: file.segments,
        skipped,
    })
}

/// Whether `range` overlaps one of the sorted `fdes`.
fn overlaps(fdes: &[Fde], range: &Range<u64>) -> bool {
    let after = fdes.partition_point(|(r, _)| r.start < range.end);
    after > 0 && fdes[after - 1].0.end > range.start
}

/// Every FDE of a section, with its rows; returns how many could not be read.
fn read_fdes<'a, S: UnwindSection<gimli::EndianSlice<'a, LittleEndian>>>(
    section: &S,
    bases: &BaseAddresses,
    out: &mut Vec<Fde>,
) -> usize {
    let mut context = UnwindContext::new();
    let mut entries = section.entries(bases);
    let mut skipped = 0;
    loop {
        let entry = match entries.next() {
            Ok(Some(entry)) => entry,
            Ok(None) => break,
            // A broken entry ends the walk: its length cannot be trusted to find the next one.
            Err(_) => {
                skipped += 1;
                break;
            }
        };
        let CieOrFde::Fde(partial) = entry else { continue };
        let Ok(fde) = partial.parse(S::cie_from_offset) else {
            skipped += 1;
            continue;
        };
        let range = fde.initial_address()..fde.end_address();
        if range.is_empty() {
            continue;
        }
        match rules::fde_rows(section, bases, &mut context, &fde) {
            Ok(rows) => out.push((range, rows)),
            Err(_) => skipped += 1,
        }
    }
    skipped
}

/// All FDEs' rows in one sorted list, a no-information row at the end of each FDE that the next
/// does not start at, and consecutive equal rules merged.
fn rows(fdes: &[Fde]) -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    for (i, (range, fde_rows)) in fdes.iter().enumerate() {
        // An FDE inside the previous one (rare) starts where that one's rows stop.
        let floor = rows.last().map_or(0, |r| r.address);
        for &(address, rule) in fde_rows {
            if address >= floor && address < range.end {
                rows.push(Row { address, rule });
            }
        }
        let next_start = fdes.get(i + 1).map(|(r, _)| r.start);
        if next_start != Some(range.end) {
            rows.push(Row { address: range.end, rule: Rule::NONE });
        }
    }
    rows.sort_by_key(|r| r.address);
    // Two rows at one address: the later wins (an FDE that starts where the last one's gap was).
    let mut merged: Vec<Row> = Vec::with_capacity(rows.len());
    for row in rows {
        match merged.last_mut() {
            Some(last) if last.address == row.address => last.rule = row.rule,
            Some(last) if last.rule == row.rule => {}
            _ => merged.push(row),
        }
    }
    merged
}

impl Table {
    /// The file address that byte `file_offset` of the file is loaded at.
    pub fn file_address(&self, file_offset: u64) -> Option<u64> {
        self.segments.iter().find(|s| s.contains_offset(file_offset)).map(|s| s.address + (file_offset - s.offset))
    }

    /// The file address an executable mapping of `size` bytes at `file_offset` starts at. The
    /// mapping's offset is page-aligned, so it may lie in the segment before the code (as lld lays
    /// segments out, not page-aligned in the file): the executable segment it maps decides.
    pub fn mapping_address(&self, file_offset: u64, size: u64) -> Option<u64> {
        let segment = self
            .segments
            .iter()
            .find(|s| s.executable && s.offset < file_offset + size && file_offset < s.offset + s.size)?;
        Some(file_offset.wrapping_add(segment.address.wrapping_sub(segment.offset)))
    }

    /// The file offset that file address `address` is loaded from.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|s| (s.address..s.address + s.size).contains(&address))
            .map(|s| s.offset + (address - s.address))
    }

    /// The start of the function (FDE) that holds file address `address`.
    pub fn function_start(&self, address: u64) -> Option<u64> {
        let index = self.functions.partition_point(|f| f.start <= address).checked_sub(1)?;
        let function = &self.functions[index];
        function.contains(&address).then_some(function.start)
    }

    /// The rule in force at file address `address`.
    pub fn rule_at(&self, address: u64) -> Option<Rule> {
        let index = self.rows.partition_point(|r| r.address <= address).checked_sub(1)?;
        Some(self.rows[index].rule)
    }

    /// The table in pages of `1 << PAGE_BITS` bytes of code, as the kernel keeps it.
    pub fn paged(&self) -> Paged {
        let mut paged = Paged::default();
        let Some(last) = self.rows.last() else { return paged };
        let mut index = 0;
        let mut in_force: Option<Rule> = None;
        let first_page = self.rows[0].address >> PAGE_BITS;
        for page in first_page..=(last.address >> PAGE_BITS) {
            let page_start = page << PAGE_BITS;
            let first = paged.rows.len() as u32;
            if let Some(rule) = in_force.filter(|_| self.rows.get(index).is_none_or(|r| r.address > page_start)) {
                paged.rows.push(rule.row(0));
            }
            while let Some(row) = self.rows.get(index).filter(|r| r.address >> PAGE_BITS == page) {
                paged.rows.push(row.rule.row((row.address - page_start) as u16));
                in_force = Some(row.rule);
                index += 1;
            }
            let count = paged.rows.len() as u32 - first;
            // A page where no code is has only the no-information row: it needs no entry.
            let only_gap = count == 1 && paged.rows[first as usize].cfa == CFA_NONE;
            if only_gap {
                paged.rows.truncate(first as usize);
            } else if count > 0 {
                paged.pages.push((page as u32, PageRows { first, count }));
            }
        }
        paged
    }
}

#[cfg(test)]
mod tests;
