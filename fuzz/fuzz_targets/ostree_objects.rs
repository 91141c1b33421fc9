//! ostree commit and dirtree objects, read from the repo to prune the /usr diff and to find a
//! path's content checksum for the stale scan.
#![no_main]

use fastswitch::diff::repo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = repo::parse_commit_root(data);
    let _ = repo::parse_subdirs(data);
    let _ = repo::parse_files(data);
});
