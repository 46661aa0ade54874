fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../profiler-ebpf");
    println!("cargo:rerun-if-changed=../profiler-common/src");
    aya_build::build_ebpf(
        [aya_build::Package { name: "profiler-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
