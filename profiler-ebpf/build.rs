// Rebuild the eBPF object when bpf-linker changes (it is the linker for bpfel-unknown-none).
fn main() {
    let bpf_linker = which::which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
