//! Deployment origin files (GLib key files).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(origin) = fastswitch::discover::origin::parse_origin(text) {
        let _ = origin.pinned();
        let _ = origin.unlocked();
    }
});
