//! Micro-benchmarks of the userspace hot spots: percentiles from buckets, Prometheus bucket
//! coarsening, histogram merging, and folding stacks for a flamegraph.

use criterion::{Criterion, criterion_group, criterion_main};
use profiler::{
    analysis::histogram::percentiles,
    output::{
        flamegraph::{Selection, folded},
        prometheus::coarse_buckets,
    },
    recording::{LatencyHistogram, Recording, Stack, Stacks},
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
        })
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
            .map(|i| Stack { tgid: i % 20, tid: 0, frames: (0..30).map(|d| (i * 31 + d) % 1000).collect(), count: 1 })
            .collect(),
    };
    c.bench_function("fold 10k stacks of 30 frames", |b| b.iter(|| folded(&recording, &stacks, &Selection::default())));
}

criterion_group!(micro, benches);
criterion_main!(micro);
