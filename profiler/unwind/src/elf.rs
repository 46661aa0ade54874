//! What the tables need from an ELF file: its CFI sections (by section header, or through
//! `PT_GNU_EH_FRAME` when a stripped file has no section headers) and its loadable segments.

use gimli::BaseAddresses;
use object::{
    Endianness, Object as _, ObjectSection as _,
    elf::{PT_GNU_EH_FRAME, PT_LOAD},
    read::elf::{ElfFile64, ProgramHeader as _},
};

use crate::Error;

/// A loadable segment: `size` bytes of the file at `offset` are mapped at file address `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub size: u64,
    pub address: u64,
    pub executable: bool,
}

impl Segment {
    pub fn contains_offset(&self, offset: u64) -> bool {
        (self.offset..self.offset + self.size).contains(&offset)
    }

    fn contains_address(&self, address: u64) -> bool {
        (self.address..self.address + self.size).contains(&address)
    }
}

/// A section's bytes and its file address.
pub struct Located<'a> {
    pub data: &'a [u8],
    pub address: u64,
}

pub struct File<'a> {
    data: &'a [u8],
    elf: ElfFile64<'a, Endianness>,
    pub segments: Vec<Segment>,
}

impl<'a> File<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, Error> {
        let elf = ElfFile64::<Endianness>::parse(data)?;
        if elf.architecture() != object::Architecture::X86_64 {
            return Err(Error::Layout("not an x86-64 file"));
        }
        let endian = elf.endian();
        let segments = elf
            .elf_program_headers()
            .iter()
            .filter(|ph| ph.p_type(endian) == PT_LOAD)
            .map(|ph| Segment {
                offset: ph.p_offset(endian),
                size: ph.p_filesz(endian),
                address: ph.p_vaddr(endian),
                executable: ph.p_flags(endian) & object::elf::PF_X != 0,
            })
            .collect();
        Ok(File { data, elf, segments })
    }

    fn section(&self, name: &str) -> Option<Located<'a>> {
        let section = self.elf.section_by_name(name)?;
        let data = section.data().ok().filter(|d| !d.is_empty())?;
        Some(Located { data, address: section.address() })
    }

    /// `.eh_frame`: by its section header, or else from `PT_GNU_EH_FRAME`'s pointer to it, with the
    /// rest of its segment as its bytes (gimli stops at the terminating entry).
    pub fn eh_frame(&self) -> Option<Located<'a>> {
        self.section(".eh_frame").or_else(|| {
            let endian = self.elf.endian();
            let header = self.elf.elf_program_headers().iter().find(|ph| ph.p_type(endian) == PT_GNU_EH_FRAME)?;
            let hdr_address = header.p_vaddr(endian);
            let hdr = self.bytes_at(hdr_address)?;
            let address = eh_frame_pointer(hdr, hdr_address)?;
            Some(Located { data: self.bytes_at(address)?, address })
        })
    }

    pub fn build_id(&self) -> Option<Vec<u8>> {
        self.elf.build_id().ok().flatten().map(<[u8]>::to_vec)
    }

    pub fn debug_frame(&self) -> Option<&'a [u8]> {
        self.section(".debug_frame").map(|s| s.data)
    }

    /// The bytes from file address `address` to the end of its segment.
    fn bytes_at(&self, address: u64) -> Option<&'a [u8]> {
        let segment = self.segments.iter().find(|s| s.contains_address(address))?;
        let start = (segment.offset + (address - segment.address)) as usize;
        let end = (segment.offset + segment.size) as usize;
        self.data.get(start..end)
    }

    /// The bases that pointer encodings in `.eh_frame` at `eh_frame` are relative to.
    pub fn bases(&self, eh_frame: u64) -> BaseAddresses {
        let address = |name: &str| self.elf.section_by_name(name).map(|s| s.address());
        let mut bases = BaseAddresses::default().set_eh_frame(eh_frame);
        if let Some(text) = address(".text") {
            bases = bases.set_text(text);
        }
        if let Some(got) = address(".got") {
            bases = bases.set_got(got);
        }
        bases
    }
}

/// The address of `.eh_frame` from an `.eh_frame_hdr` at `hdr_address`: version 1, then the
/// pointer's encoding and the pointer (as linkers write it: pc-relative or absolute, 4 or 8 bytes).
fn eh_frame_pointer(hdr: &[u8], hdr_address: u64) -> Option<u64> {
    const PCREL: u8 = 0x10;
    let (&version, &encoding) = (hdr.first()?, hdr.get(1)?);
    if version != 1 {
        return None;
    }
    let field = hdr.get(4..)?;
    let value = match encoding & 0x0f {
        0x03 => u64::from(u32::from_le_bytes(field.get(..4)?.try_into().ok()?)),
        0x0b => i64::from(i32::from_le_bytes(field.get(..4)?.try_into().ok()?)) as u64,
        0x04 | 0x0c | 0x00 => u64::from_le_bytes(field.get(..8)?.try_into().ok()?),
        _ => return None,
    };
    match encoding & 0x70 {
        0 => Some(value),
        PCREL => Some((hdr_address + 4).wrapping_add(value)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eh_frame_pointer_encodings() {
        // version 1, pcrel|sdata4, then the fde count and table encodings, then -0x100.
        let hdr = [1, 0x1b, 0x03, 0x3b, 0x00, 0xff, 0xff, 0xff];
        assert_eq!(eh_frame_pointer(&hdr, 0x1000), Some(0x1000 + 4 - 0x100));
        let absolute = [1, 0x03, 0, 0, 0x00, 0x20, 0, 0];
        assert_eq!(eh_frame_pointer(&absolute, 0x1000), Some(0x2000));
        assert_eq!(eh_frame_pointer(&[2, 0x1b, 0, 0, 0, 0, 0, 0], 0), None, "unknown version");
    }
}
