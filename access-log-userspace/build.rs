//! Builds the eBPF programs (access-log-ebpf) with the nightly toolchain and bpf-linker, and puts
//! the object in OUT_DIR for `include_bytes!`.

#[cfg(not(feature = "kernel"))]
fn main() {}

#[cfg(feature = "kernel")]
fn main() -> anyhow::Result<()> {
    use anyhow::{anyhow, Context as _};
    use aya_build::{Package, Toolchain};

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("the userspace crate has no parent directory"))?
        .join("access-log-ebpf");
    let root = root
        .to_str()
        .context("the eBPF crate's path is not UTF-8")?
        .to_owned();
    aya_build::build_ebpf(
        [Package {
            name: "access-log-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
