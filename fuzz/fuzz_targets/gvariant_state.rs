//! ostree's GVariant state files: `/run/ostree-booted` and `/run/ostree/staged-deployment`.
#![no_main]

use fastswitch::discover::state;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = state::parse_booted(data);
    let _ = state::parse_staged(data);
});
