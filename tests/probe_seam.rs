//! A probe defined here, outside the registry, runs in a session like the built-in ones: a new
//! probe is its programs, its drain and a registry line, and nothing in the loader or the session
//! changes for it. This one counts wakeups with the run-queue probe's wakeup program.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use aya::maps::PerCpuArray;
use common::Workload;
use profiler::{
    collector::{Interval, Session, SessionConfig, Sink},
    probes::{
        Drain, Drained, Feature, Kernel, Probe, ProbeOptions, ProbeSelection, ProbeSpec,
        program::{Alternatives, Program, TASK, tracepoint},
    },
};
use profiler_common::counters::{COUNTERS, Counter};

/// Wakeups counted by the drain, over the whole session.
static WAKEUPS_SEEN: AtomicU64 = AtomicU64::new(0);

struct Wakeups;

impl ProbeSpec for Wakeups {
    fn name(&self) -> &'static str {
        "wakeups"
    }

    fn about(&self) -> &'static str {
        "task wakeups"
    }

    fn requires(&self) -> &'static [Feature] {
        &[Feature::BtfTracepoints]
    }

    fn programs(&self) -> &'static [Alternatives] {
        const PROGRAMS: &[Alternatives] =
            &[&[Program { name: "runq_sched_wakeup", attach: tracepoint("sched", "sched_wakeup", &[TASK]) }]];
        PROGRAMS
    }

    fn own_maps(&self) -> &'static [&'static str] {
        &[]
    }

    fn drain(&self, _options: &ProbeOptions) -> Box<dyn Drain> {
        Box::new(WakeupDrain { last: 0 })
    }
}

struct WakeupDrain {
    last: u64,
}

impl Drain for WakeupDrain {
    fn drain(&mut self, kernel: &mut Kernel<'_>, _interval: &mut Drained) -> Result<()> {
        let counters: PerCpuArray<_, u64> = PerCpuArray::try_from(kernel.ebpf.map(COUNTERS).expect("COUNTERS"))?;
        let now: u64 = counters.get(&(Counter::Wakeups as u32), 0)?.iter().sum();
        WAKEUPS_SEEN.fetch_add(now - self.last, Ordering::Relaxed);
        self.last = now;
        Ok(())
    }
}

/// Keeps the counters of every interval it is handed.
struct Intervals(Arc<Mutex<Vec<u64>>>);

impl Sink for Intervals {
    fn interval(&mut self, interval: &Interval<'_>) -> Result<()> {
        self.0.lock().unwrap().push(interval.delta.counters.wakeups);
        Ok(())
    }
}

static WAKEUPS: Wakeups = Wakeups;

#[test]
fn a_probe_from_outside_the_registry_runs_in_a_session() {
    const SLEEPS: u64 = 300;
    let mut sleeper =
        Workload::spawn(&["sleep", "--cpu", "0", "--count", &SLEEPS.to_string(), "--interval-us", "1000"]);
    // A second target that outlives the session: a recording ends when all its targets have.
    let mut idle = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    let config = SessionConfig {
        probes: ProbeSelection { probes: vec![Probe(&WAKEUPS)], named: true },
        options: ProbeOptions { pids: vec![sleeper.pid(), idle.id()], frequency_hz: 99, ..Default::default() },
        duration: Some(Duration::from_secs(3)),
        interval: Duration::from_millis(500),
        inline: false,
        debug_dirs: Vec::new(),
        progress: false,
    };
    let intervals = Arc::new(Mutex::new(Vec::new()));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let meta = runtime
        .block_on(async {
            let session = Session::start(config).await?;
            assert_eq!(session.probes().programs_attached(), 1);
            sleeper.go();
            let mut sink = Intervals(intervals.clone());
            session.run(&mut [&mut sink]).await
        })
        .unwrap();
    sleeper.wait();
    let _ = idle.kill();
    let _ = idle.wait();

    assert_eq!(meta.options.probes, ["wakeups"]);
    let seen = WAKEUPS_SEEN.load(Ordering::Relaxed);
    assert!(seen >= SLEEPS, "the probe's own drain saw {seen} wakeups of {SLEEPS} sleeps");
    let intervals = intervals.lock().unwrap();
    assert!(intervals.len() >= 5, "3 s at 500 ms intervals, and the last: {} intervals", intervals.len());
    assert_eq!(intervals.iter().sum::<u64>(), seen, "the session's counters and the probe's drain agree");
}
