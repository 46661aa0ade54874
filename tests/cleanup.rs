//! No eBPF program stays loaded after the profiler exits. Alone in its own test binary, so that no
//! other test's profiler runs at the same time.

mod common;

use std::time::Duration;

use common::{Recorder, our_programs_loaded, programs_left_after_exit, temp_dir};

use profiler::probes::{Probe, program_count};

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
        assert_eq!(programs_left_after_exit(), 0, "programs left after signal {signal}");
    }
    assert_eq!(all_programs_loaded(), before);
}
