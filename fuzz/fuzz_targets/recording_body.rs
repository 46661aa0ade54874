//! Arbitrary bytes as the body of a well-framed file (valid header and checksum), so the fuzzer
//! reaches the decoder and everything that analyses a decoded recording.
#![no_main]

use profiler::{
    analysis::{diff, summary::Summary},
    output::{self, report},
    recording,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = recording::read(&recording::frame(data)) {
        let summary = Summary::new(&decoded, 10);
        let _ = report::text(&summary);
        let _ = report::histograms(&decoded, 10);
        let options = diff::DiffOptions { threshold_percent: 10.0, confidence: 0.99, top: 10 };
        let _ = output::diff::text(&diff::diff(&decoded, &decoded, &options));
        assert_eq!(recording::read(&recording::write(&decoded)).unwrap(), decoded);
    }
});
