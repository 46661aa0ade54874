//! Draining a kernel hash map of per-process counters: each interval, the growth of every entry
//! since the last look, and the entries of processes that have exited taken out of the kernel, so
//! the map holds live processes only however many come and go. A map may keep one value per CPU
//! (which the kernel updates without atomic instructions): its values are summed here.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    hash::Hash,
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuHashMap, PerCpuValues},
};
use profiler_common::{counters::Counter, histogram::NUM_BUCKETS};

use crate::recording::LatencyHistogram;

/// Values the kernel only ever adds to.
pub trait Growth: Copy + Default {
    /// What was added since `before`.
    fn since(self, before: Self) -> Self;
    /// Both together (one CPU's value and another's).
    fn plus(self, other: Self) -> Self;
    fn is_zero(&self) -> bool;
}

impl Growth for u64 {
    fn since(self, before: u64) -> u64 {
        self.saturating_sub(before)
    }

    fn plus(self, other: u64) -> u64 {
        self.saturating_add(other)
    }

    fn is_zero(&self) -> bool {
        *self == 0
    }
}

/// Bucket by bucket, what `now` added to `before` (an empty `before`: nothing was there).
pub fn dense_growth(now: &[u64], before: &[u64]) -> Vec<u64> {
    now.iter().enumerate().map(|(i, n)| n.saturating_sub(before.get(i).copied().unwrap_or(0))).collect()
}

/// Histograms by `K` from (key, bucket, count) entries of a map that counts each non-empty bucket.
pub fn histograms<K: Ord>(entries: impl IntoIterator<Item = (K, u32, u64)>) -> BTreeMap<K, LatencyHistogram> {
    let mut dense: BTreeMap<K, Vec<u64>> = BTreeMap::new();
    for (key, bucket, count) in entries {
        if let Some(slot) = dense.entry(key).or_insert_with(|| vec![0; NUM_BUCKETS]).get_mut(bucket as usize) {
            *slot += count;
        }
    }
    dense.into_iter().map(|(key, counts)| (key, LatencyHistogram::from_dense(&counts))).collect()
}

/// Which processes have exited, asked of /proc once per process and drain round.
#[derive(Default)]
pub struct Exits {
    known: HashMap<u32, bool>,
}

impl Exits {
    /// Whether process `tgid` no longer exists.
    pub fn exited(&mut self, tgid: u32) -> bool {
        *self.known.entry(tgid).or_insert_with(|| !Path::new(&format!("/proc/{tgid}")).exists())
    }

    /// The processes found exited this round, and a fresh start for the next.
    pub fn take_exited(&mut self) -> Vec<u32> {
        let exited = self.known.iter().filter(|(_, exited)| **exited).map(|(tgid, _)| *tgid).collect();
        self.known.clear();
        exited
    }
}

/// How the kernel keeps a counter map's values.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// One per key, added to atomically.
    Shared,
    /// One per key and CPU (`BPF_MAP_TYPE_PERCPU_HASH`).
    PerCpu,
}

/// A kernel hash map as the drain reads it, whichever way it keeps its values.
trait CountingMap<K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>, MapError>;
    /// The key's value, then the key taken out of the map.
    fn take(&mut self, key: &K) -> Option<V>;
}

impl<K: Pod, V: Pod> CountingMap<K, V> for BpfHashMap<&mut MapData, K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>, MapError> {
        self.iter().collect()
    }

    fn take(&mut self, key: &K) -> Option<V> {
        let last = self.get(key, 0).ok()?;
        self.remove(key).ok().map(|()| last)
    }
}

fn sum<V: Pod + Growth>(values: &PerCpuValues<V>) -> V {
    values.iter().fold(V::default(), |sum, value| sum.plus(*value))
}

impl<K: Pod, V: Pod + Growth> CountingMap<K, V> for PerCpuHashMap<&mut MapData, K, V> {
    fn entries(&self) -> Result<Vec<(K, V)>, MapError> {
        self.iter().map(|entry| entry.map(|(key, values)| (key, sum(&values)))).collect()
    }

    fn take(&mut self, key: &K) -> Option<V> {
        let last = sum(&self.get(key, 0).ok()?);
        self.remove(key).ok().map(|()| last)
    }
}

/// Counters of a map's keys that the kernel keeps outside the map as well (a cache of the hottest
/// keys in front of it): the drain adds them to the map's.
pub trait Beside<K, V> {
    /// Every value kept here, with its key (a key may come more than once).
    fn entries(&mut self) -> Result<Vec<(K, V)>>;
    /// The last values of the keys `gone` selects, then those taken out.
    fn take(&mut self, gone: &dyn Fn(&K) -> bool) -> Result<Vec<(K, V)>>;
}

/// Nothing beside the map.
impl<K, V> Beside<K, V> for () {
    fn entries(&mut self) -> Result<Vec<(K, V)>> {
        Ok(Vec::new())
    }

    fn take(&mut self, _: &dyn Fn(&K) -> bool) -> Result<Vec<(K, V)>> {
        Ok(Vec::new())
    }
}

fn add_to<K: Eq + Hash, V: Growth>(totals: &mut HashMap<K, V>, entries: Vec<(K, V)>) {
    for (key, value) in entries {
        let total = totals.entry(key).or_default();
        *total = total.plus(value);
    }
}

/// One per-process hash map of the kernel, with what it held at the last look.
pub struct CounterMap<K, V> {
    name: &'static str,
    values: Values,
    capacity: u32,
    /// The kernel's count of the entries it created in the map.
    created: Counter,
    /// Entries taken out of the kernel map so far.
    removed: u64,
    /// Entries in the kernel map at the last look.
    in_map: usize,
    tgid: fn(&K) -> u32,
    previous: HashMap<K, V>,
}

impl<K: Pod + Eq + Hash, V: Pod + Growth> CounterMap<K, V> {
    pub fn new(name: &'static str, values: Values, capacity: u32, created: Counter, tgid: fn(&K) -> u32) -> Self {
        Self { name, values, capacity, created, removed: 0, in_map: 0, tgid, previous: HashMap::new() }
    }

    /// How full the map was at the last look.
    pub fn fill(&self) -> (&'static str, f64) {
        (self.name, self.in_map as f64 / f64::from(self.capacity))
    }

    /// How full the map is now, from the kernel's count of entries created (`counters`, indexed
    /// by `Counter`) and ours of those removed: no walk needed.
    pub fn fill_now(&self, counters: &[u64]) -> f64 {
        let created = counters.get(self.created as usize).copied().unwrap_or(0);
        created.saturating_sub(self.removed) as f64 / f64::from(self.capacity)
    }

    /// Each key's growth since the last call, in the map and `beside` it (keys that did not grow are
    /// left out). Both are read once; which of their processes exited is settled after that, and
    /// only then are their keys read again and taken out: a process that exits during the walk
    /// keeps what it added after the walk passed its key, and a key it creates after the walk is
    /// taken next time.
    pub fn drain(&mut self, ebpf: &mut Ebpf, exits: &mut Exits, beside: &mut dyn Beside<K, V>) -> Result<Vec<(K, V)>> {
        let map = ebpf.map_mut(self.name).with_context(|| format!("map {} missing from the eBPF object", self.name))?;
        let mut map: Box<dyn CountingMap<K, V> + '_> = match self.values {
            Values::Shared => Box::new(BpfHashMap::<_, K, V>::try_from(map)?),
            Values::PerCpu => Box::new(PerCpuHashMap::<_, K, V>::try_from(map)?),
        };
        let entries = map.entries().with_context(|| format!("cannot read map {}", self.name))?;
        let in_map = entries.len();
        let mut now: HashMap<K, V> = entries.into_iter().collect();
        add_to(&mut now, beside.entries()?);
        let gone: HashSet<K> = now.keys().filter(|key| exits.exited((self.tgid)(key))).copied().collect();
        let mut last = HashMap::with_capacity(gone.len());
        for key in &gone {
            if let Some(value) = map.take(key) {
                last.insert(*key, value);
            }
        }
        let taken_from_map = last.len();
        add_to(&mut last, beside.take(&|key| gone.contains(key))?);
        now.extend(last.iter().map(|(key, value)| (*key, *value)));
        let mut growth: Vec<(K, V)> = now
            .iter()
            .map(|(key, value)| (*key, value.since(self.previous.get(key).copied().unwrap_or_default())))
            .collect();
        self.removed += taken_from_map as u64;
        self.in_map = in_map - taken_from_map;
        for key in last.keys() {
            now.remove(key);
        }
        growth.retain(|(_, value)| !value.is_zero());
        self.previous = now;
        Ok(growth)
    }
}
