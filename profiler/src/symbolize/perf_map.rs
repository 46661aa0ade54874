//! /tmp/perf-PID.map: the symbol files that JIT runtimes (the JVM with perf-map-agent, Node with
//! --perf-basic-prof, LuaJIT, ...) write for perf. Each line: `START SIZE name`, hex.

use std::collections::HashMap;

#[derive(Default)]
pub struct PerfMaps {
    /// Per process: (start, end, name), sorted by start; empty when the process has no map.
    loaded: HashMap<u32, Vec<(u64, u64, String)>>,
}

pub fn parse(text: &str) -> Vec<(u64, u64, String)> {
    let mut entries: Vec<(u64, u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            let size = u64::from_str_radix(parts.next()?.trim_start_matches("0x"), 16).ok()?;
            Some((start, start.checked_add(size)?, parts.next()?.trim().to_string()))
        })
        .collect();
    entries.sort_by_key(|e| e.0);
    entries
}

impl PerfMaps {
    pub fn lookup(&mut self, tgid: u32, addr: u64) -> Option<String> {
        let entries = self.loaded.entry(tgid).or_insert_with(|| {
            std::fs::read_to_string(format!("/tmp/perf-{tgid}.map")).map(|text| parse(&text)).unwrap_or_default()
        });
        let index = entries.partition_point(|e| e.0 <= addr).checked_sub(1)?;
        let (_, end, name) = &entries[index];
        (addr < *end).then(|| name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds_jit_symbols() {
        let entries = parse("7f0000001000 40 LazyCompile:*fib /app.js:1\n7f0000000000 100 Interpreter\nbad line\n");
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0], (0x7f0000000000, 0x7f0000000100, "Interpreter".to_string()));
        let mut maps = PerfMaps::default();
        maps.loaded.insert(7, entries);
        assert_eq!(maps.lookup(7, 0x7f0000001010).as_deref(), Some("LazyCompile:*fib /app.js:1"));
        assert_eq!(maps.lookup(7, 0x7f0000000500), None);
        assert_eq!(maps.lookup(7, 0x100), None);
    }
}
