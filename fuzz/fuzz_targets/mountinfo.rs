//! `/proc/PID/mountinfo`, and the mount stack at each mount point it names.
#![no_main]

use fastswitch::system::mounts;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let all = mounts::parse_mountinfo(text);
    for entry in all.iter().take(8) {
        let _ = mounts::stack_at(&all, &entry.mount_point);
    }
    let _ = mounts::stack_at(&all, Path::new("/usr"));
});
