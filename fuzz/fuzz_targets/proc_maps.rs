//! `/proc/PID/maps` lines and `/proc/PID/cgroup`.
#![no_main]

use fastswitch::services::stale;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Some(entry) = stale::parse_maps_line(line) {
            let _ = entry.executable();
            let _ = entry.file();
        }
    }
    let _ = stale::parse_cgroup(text);
});
