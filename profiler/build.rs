fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../profiler-ebpf");
    println!("cargo:rerun-if-changed=../profiler-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "profiler-ebpf",
            root_dir,
            // BPF v3 (Linux 5.1 on): 32-bit subregisters and jumps, so that u32 values (thread and
            // process ids, syscall numbers, buckets) need no zero-extending shift pair each; on
            // sys_enter and sys_exit, which run on every syscall, the v1 instructions cost 1 %.
            rustflags: &["-Ctarget-cpu=v3"],
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
