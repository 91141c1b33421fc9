//! BLS entries (`boot/loader/entries/*.conf`), then the `ostree=` bootlink and `linux` path
//! helpers on whatever parsed.
#![no_main]

use fastswitch::discover::bls;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entry) = bls::parse_entry("x.conf", text) else {
        return;
    };
    let _ = entry.kargs();
    let stateroot = match entry.ostree_karg() {
        Some(value) => match bls::parse_bootlink(&value) {
            Ok(link) => link.stateroot,
            Err(_) => "debian".to_owned(),
        },
        None => "debian".to_owned(),
    };
    if let Some(linux) = entry.linux.as_deref() {
        let _ = bls::bootcsum_from_linux_path(linux, &stateroot);
    }
    // The version comparison that orders entries must be antisymmetric, or sorting is unsound.
    if let Some(version) = entry.version.as_deref() {
        let other = entry.title.as_deref().unwrap_or("");
        assert_eq!(
            bls::version_cmp(version, other),
            bls::version_cmp(other, version).reverse()
        );
    }
});
