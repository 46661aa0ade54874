//! Micro-benchmarks of the userspace hot spots: percentiles from buckets, Prometheus bucket
//! coarsening, histogram merging, folding stacks for a flamegraph, and symbolizing user stacks.

use criterion::{Criterion, criterion_group, criterion_main};
use profiler::{
    analysis::{
        fold::{Selection, folded},
        histogram::percentiles,
    },
    output::prometheus::coarse_buckets,
    recording::{LatencyHistogram, Recording, Stack, Stacks},
    symbolize::{RawStack, StackSymbolizer, maps::MapsCache},
};
use profiler_common::histogram::{NUM_BUCKETS, bucket_index};

fn histogram() -> LatencyHistogram {
    let mut dense = vec![0u64; NUM_BUCKETS];
    for i in 0..100_000u64 {
        dense[bucket_index(1_000 + i * i % 10_000_000) as usize] += 1;
    }
    LatencyHistogram::from_dense(&dense)
}

fn benches(c: &mut Criterion) {
    let h = histogram();
    c.bench_function("percentiles of a 100k-sample histogram", |b| b.iter(|| percentiles(&h)));
    c.bench_function("prometheus coarse buckets", |b| b.iter(|| coarse_buckets(&h)));
    c.bench_function("merge two histograms", |b| {
        b.iter(|| {
            let mut merged = h.clone();
            merged.merge(&h);
            merged
        });
    });
    c.bench_function("bucket_index", |b| b.iter(|| (0..1000u64).map(|v| bucket_index(v * 7919)).sum::<u32>()));

    let recording = Recording::default();
    let frames: Vec<profiler::recording::Frame> = (0..1000)
        .map(|i| profiler::recording::Frame {
            function: format!("function_{i}"),
            module: None,
            kernel: i % 5 == 0,
            inlined: false,
        })
        .collect();
    let stacks = Stacks {
        frames,
        modules: Vec::new(),
        stacks: (0..10_000u32)
            .map(|i| Stack {
                tgid: i % 20,
                tid: 0,
                frames: (0..30).map(|d| (i * 31 + d) % 1000).collect(),
                count: 1,
                blocks: 0,
            })
            .collect(),
    };
    c.bench_function("fold 10k stacks of 30 frames", |b| b.iter(|| folded(&recording, &stacks, &Selection::default())));

    // Stacks of this very process: addresses inside its own code and libc's, as samples would be.
    let pid = std::process::id();
    let mut maps = MapsCache::default();
    maps.snapshot(pid).expect("own memory map");
    let code: [*const (); 4] =
        [percentiles as *const (), folded as *const (), libc::getppid as *const (), libc::malloc as *const ()];
    let raw: Vec<RawStack> = (0..100u64)
        .map(|i| RawStack {
            tgid: pid,
            tid: pid,
            kernel: Vec::new(),
            user: (0..20u64).map(|d| (code[(d % 4) as usize] as u64) + (i * 20 + d) % 64).collect(),
            end: profiler_common::unwind::StackEnd::Complete,
            count: 1,
            blocks: 0,
            wait: None,
        })
        .collect();
    // A fresh symbolizer each time: the first interval's cost, before anything is remembered.
    c.bench_function("symbolize 100 stacks of 20 user frames (own binary and libc)", |b| {
        b.iter(|| StackSymbolizer::new(false, &[]).symbolize(&raw, &maps, None));
    });
}

criterion_group!(micro, benches);
criterion_main!(micro);
