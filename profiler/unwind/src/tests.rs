//! Tables of the system's own binaries (Debian's, stripped, without frame pointers) and of a C
//! program compiled here, checked against what x86-64 code must look like.

use std::{path::Path, process::Command};

use profiler_common::unwind::{CFA_END, CFA_NONE, CFA_PLT, CFA_RBP, CFA_RSP, CFA_SIGNAL, PAGE_BITS, RBP_SAVED};

use super::*;

const GZIP: &str = "/usr/bin/gzip";
const LIBC: &str = "/lib/x86_64-linux-gnu/libc.so.6";

fn table(path: &str) -> Table {
    build(&std::fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Looks a file address up the way the kernel does: its page, then the last row at or before it.
fn lookup(paged: &Paged, address: u64) -> Option<Rule> {
    let page = (address >> PAGE_BITS) as u32;
    let (_, range) = paged.pages.iter().find(|(p, _)| *p == page)?;
    let rows = &paged.rows[range.first as usize..(range.first + range.count) as usize];
    let low = (address & ((1 << PAGE_BITS) - 1)) as u16;
    let index = rows.partition_point(|r| r.pc_low <= low).checked_sub(1)?;
    let row = rows[index];
    Some(Rule { cfa: row.cfa, cfa_offset: row.cfa_offset, rbp: row.rbp, rbp_offset: row.rbp_offset })
}

#[test]
fn every_function_starts_with_the_return_address_on_top() {
    let gzip = table(GZIP);
    assert!(gzip.functions.len() > 100 && gzip.rows.len() > gzip.functions.len(), "{} rows", gzip.rows.len());
    let entry = Rule { cfa: CFA_RSP, cfa_offset: 8, ..Rule::default() };
    let at_entry = gzip.functions.iter().filter(|f| gzip.rule_at(f.start) == Some(entry)).count();
    // PLT stubs and hand-written entry code (_start) are the exceptions.
    assert!(at_entry * 100 >= gzip.functions.len() * 95, "{at_entry} of {} functions", gzip.functions.len());
    assert_eq!(gzip.skipped, 0);
}

#[test]
fn the_rules_real_code_needs_are_found() {
    let gzip = table(GZIP);
    let has = |table: &Table, cfa: u8| table.rows.iter().any(|r| r.rule.cfa == cfa);
    assert!(has(&gzip, CFA_PLT), "ld's unwind info for the PLT");
    assert!(has(&gzip, CFA_END), "_start: the return address is undefined");
    assert!(gzip.rows.iter().any(|r| r.rule.rbp == RBP_SAVED), "functions that save RBP");
    let libc = table(LIBC);
    assert!(has(&libc, CFA_SIGNAL), "__restore_rt, the signal trampoline");
    assert!(has(&libc, CFA_RBP), "functions that address their frame through RBP");
}

#[test]
fn pages_give_the_rule_of_every_address() {
    let libc = table(LIBC);
    let paged = libc.paged();
    assert_eq!(paged.pages.windows(2).filter(|w| w[0].0 >= w[1].0).count(), 0, "pages sorted, each once");
    let (first, last) = (libc.rows[0].address, libc.rows.last().unwrap().address);
    let mut checked = 0;
    for address in (first..last).step_by(97) {
        let expected = libc.rule_at(address).unwrap();
        if expected.cfa == CFA_NONE {
            continue;
        }
        assert_eq!(lookup(&paged, address), Some(expected), "address {address:#x}");
        checked += 1;
    }
    assert!(checked > 10_000);
}

#[test]
fn a_file_without_section_headers_has_the_same_table() {
    let mut data = std::fs::read(GZIP).unwrap();
    // e_shoff, e_shnum and e_shstrndx of an ELF64 header: as if `strip` had removed the headers.
    data[0x28..0x30].fill(0);
    data[0x3c..0x40].fill(0);
    let headerless = build(&data).unwrap();
    let whole = table(GZIP);
    assert_eq!(headerless.rows, whole.rows);
    assert_eq!(headerless.functions, whole.functions);
    let function = &whole.functions[whole.functions.len() / 2];
    assert_eq!(whole.function_start(function.start + 1), Some(function.start));
    assert_eq!(
        whole.function_start(function.end),
        whole.functions.iter().find(|f| f.start == function.end).map(|f| f.start)
    );
}

#[test]
fn mappings_find_their_file_addresses() {
    let gzip = table(GZIP);
    let text = gzip.segments.iter().find(|s| s.offset > 0).expect("a segment past the headers");
    assert_eq!(gzip.file_address(text.offset + 16), Some(text.address + 16));
    assert_eq!(gzip.file_offset(text.address + 16), Some(text.offset + 16));
    assert_eq!(gzip.build_id.as_ref().map(Vec::len), Some(20), "Debian's binaries carry a build-id");
    let code = gzip.segments.iter().find(|s| s.executable).unwrap();
    let page = code.offset & !0xfff;
    assert_eq!(gzip.mapping_address(page, 0x1000), Some(page + code.address - code.offset));
    assert_eq!(gzip.file_address(u64::MAX / 2), None);
}

/// gcc -O2 -fomit-frame-pointer: after `push`es and `sub rsp`, the CFA moves with RSP; no RBP.
#[test]
fn omitted_frame_pointers_move_the_cfa_with_the_stack_pointer() {
    let dir = std::env::temp_dir().join(format!("profiler-unwind-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("deep.c");
    std::fs::write(
        &source,
        "#include <stdio.h>\n\
         __attribute__((noinline)) long work(long n) { volatile long a[64]; long s = 0;\n\
           for (long i = 0; i < n; i++) { a[i & 63] = i; s += a[(i * 7) & 63]; } return s; }\n\
         int main(int argc, char **argv) { printf(\"%ld\\n\", work(argc * 1000)); return 0; }\n",
    )
    .unwrap();
    let binary = dir.join("deep");
    let status = Command::new("gcc")
        .args(["-O2", "-fomit-frame-pointer", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("gcc");
    assert!(status.success());
    let deep = table(binary.to_str().unwrap());
    let offsets: Vec<u16> = deep.rows.iter().filter(|r| r.rule.cfa == CFA_RSP).map(|r| r.rule.cfa_offset).collect();
    // `work` keeps a 512-byte array on the stack, 128 bytes of it in the red zone below RSP: the
    // CFA is hundreds of bytes above RSP inside it.
    assert!(offsets.iter().any(|&o| o > 256), "{offsets:?}");
    assert!(!deep.rows.iter().any(|r| r.rule.cfa == CFA_RBP), "no frame pointer anywhere");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(Path::new(GZIP).exists());
}
