//! Kernel images: x86 bzImage setup headers and UKI (PE) section tables.
#![no_main]

use fastswitch::kernel_image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(image) = kernel_image::inspect(data) {
        let _ = image.max_cmdline_len();
        let _ = image.check_cmdline("root=/dev/vda rw quiet");
        if let Some(uki) = &image.uki {
            // inspect() promises every span it returns lies inside the inspected bytes.
            assert!(uki.linux.slice(data).is_some(), "UKI .linux span outside the file");
            for span in &uki.initrds {
                assert!(span.slice(data).is_some(), "UKI initrd span outside the file");
            }
        }
    }
    let _ = kernel_image::check_initramfs(data);
});
