//! Builds the eBPF object with the nightly toolchain (aya-build) and leaves it
//! in OUT_DIR, where `src/kernel/hooks/objects.rs` embeds it.
fn main() -> aya_build::Result<()> {
    let root = env!("CARGO_MANIFEST_DIR");
    // The eBPF crate reads the ABI from mirror-common; rebuild when it changes.
    println!("cargo:rerun-if-changed={root}/../mirror-common/src");
    let ebpf_dir = format!("{root}/../mirror-ebpf");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mirror-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}
