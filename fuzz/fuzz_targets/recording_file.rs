//! Arbitrary bytes as a recording file: the reader must answer with a recording or an error.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = profiler::recording::read(data);
});
