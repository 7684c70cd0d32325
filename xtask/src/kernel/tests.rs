use super::*;

#[test]
fn the_image_package_is_read_from_the_meta_packages_depends() {
    let show = "Package: linux-image-cloud-amd64\nVersion: 6.12.95-1~bpo12+1\n\
                Depends: linux-image-6.12.95+deb12-cloud-amd64 (= 6.12.95-1~bpo12+1)\n";
    assert_eq!(
        image_dependency(show).as_deref(),
        Some("linux-image-6.12.95+deb12-cloud-amd64")
    );
    assert_eq!(
        image_dependency(
            "Depends: initramfs-tools | linux-initramfs-tool, linux-image-6.1.0-56-cloud-amd64\n"
        )
        .as_deref(),
        Some("linux-image-6.1.0-56-cloud-amd64")
    );
    assert_eq!(image_dependency("Package: x\n"), None);
}

#[test]
fn kernels_are_known_by_name_and_unknown_ones_are_named_in_the_error() {
    assert_eq!(Kernel::named("6.12").unwrap().name, "6.12");
    let error = Kernel::named("5.10").unwrap_err().to_string();
    assert_eq!(
        error,
        "unknown kernel \"5.10\": expected one of 6.1, 6.12, 6.12-no-ia32"
    );
}

#[test]
fn auto_is_expected_to_pick_the_cheapest_mode_the_kernel_has() {
    let mut kernel = KERNELS[0];
    kernel.modes = &[Mode::Tracepoint, Mode::Kprobe];
    assert_eq!(kernel.auto_picks(), Mode::Kprobe);
    kernel.modes = &[Mode::Kprobe, Mode::Fentry, Mode::Tracepoint];
    assert_eq!(kernel.auto_picks(), Mode::Fentry);
    kernel.modes = &[Mode::Tracepoint];
    assert_eq!(kernel.auto_picks(), Mode::Tracepoint);
}
