//! systemd unit files; when the input holds a NUL, the two halves are parsed as the old and new
//! unit and compared.
#![no_main]

use fastswitch::units::{compare, parse::Unit};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (first, second) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], Some(&data[nul + 1..])),
        None => (data, None),
    };
    let parse = |bytes: &[u8]| {
        let text = std::str::from_utf8(bytes).ok()?;
        Unit::parse(text, Path::new("fuzz.service")).ok()
    };
    let Some(old) = parse(first) else {
        return;
    };
    let _ = old.words("Service", "ExecStart");
    let _ = old.bool("Unit", "RefuseManualStop");
    let new = match second {
        Some(bytes) => match parse(bytes) {
            Some(new) => new,
            None => return,
        },
        None => old.clone(),
    };
    let _ = compare::compare_units(&old, &new).is_equal();
});
