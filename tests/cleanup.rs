//! No eBPF program stays loaded after the profiler exits. Alone in its own test binary, so that no
//! other test's profiler runs at the same time.

mod common;

use std::time::Duration;

use common::{Recorder, temp_dir};

use profiler::probes::{Probe, program_count, program_names};

fn our_programs_loaded() -> usize {
    let ours = program_names(&Probe::all());
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        // The kernel keeps the first 15 bytes of a program's name.
        .filter(|p| p.name_as_str().is_some_and(|name| ours.iter().any(|ours| &ours[..ours.len().min(15)] == name)))
        .count()
}

fn all_programs_loaded() -> usize {
    aya::programs::loaded_programs().count()
}

#[test]
fn programs_are_gone_after_every_kind_of_exit() {
    let before = all_programs_loaded();
    assert_eq!(our_programs_loaded(), 0, "a profiler is already running");
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
        let dir = temp_dir();
        let recorder = Recorder::start(&dir.path().join("x.rec"), &[]);
        assert_eq!(
            our_programs_loaded(),
            program_count(&Probe::defaults()),
            "the check sees our programs while recording"
        );
        std::thread::sleep(Duration::from_millis(200));
        let _ = recorder.stop_with(signal);
        // The kernel frees programs asynchronously (RCU) after the last reference goes.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while our_programs_loaded() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(our_programs_loaded(), 0, "programs left after signal {signal}");
    }
    assert_eq!(all_programs_loaded(), before);
}
