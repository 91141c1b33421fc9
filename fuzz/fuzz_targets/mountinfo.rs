//! `/proc/PID/mountinfo`, the mount stack at each mount point it names, and the composefs
//! reading of its mount lines.
#![no_main]

use fastswitch::discover::composefs;
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
    // The composefs detection's own reading of a mount line (source and filesystem options).
    for entry in all.iter().take(8) {
        if let Some(m) = composefs::parse_mount(text, entry.mount_id as u64) {
            let _ = (m.looks_composefs(), m.requires_verity());
        }
    }
});
