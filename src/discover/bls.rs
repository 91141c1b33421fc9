//! Boot Loader Specification entries as ostree writes them (`boot/loader/entries/*.conf`).
//!
//! Parsing is pure: [`parse_entry`] takes the file text. [`sort_entries`] orders entries the way
//! libostree does (highest `version` first), and [`parse_bootlink`] splits the `ostree=` karg.

use serde::Serialize;

/// One BLS entry. Unknown keys are kept in `extra` so nothing is silently lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BootEntry {
    /// File name of the entry, e.g. `ostree-1-debian.conf`.
    pub(crate) file: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub linux: Option<String>,
    /// `initrd` may repeat (overlay initrds follow the main one).
    pub(crate) initrd: Vec<String>,
    pub(crate) options: Option<String>,
    pub(crate) devicetree: Option<String>,
    pub(crate) extra: Vec<(String, String)>,
}

impl BootEntry {
    /// Kernel arguments, split on whitespace, in order.
    pub fn kargs(&self) -> Vec<String> {
        self.options
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// The value of the `ostree=` kernel argument, if any.
    pub fn ostree_karg(&self) -> Option<String> {
        self.kargs()
            .into_iter()
            .find_map(|a| a.strip_prefix("ostree=").map(str::to_owned))
    }
}

/// Parse the text of one BLS entry. Lines are `key value`; `#` starts a comment.
pub fn parse_entry(file: &str, text: &str) -> Result<BootEntry, String> {
    let mut e = BootEntry {
        file: file.to_owned(),
        ..Default::default()
    };
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((k, v)) => (k, v.trim()),
            None => (line, ""),
        };
        if key.chars().any(|c| c.is_control()) || value.contains('\0') {
            return Err(format!("line {}: control characters in entry", n + 1));
        }
        match key {
            "title" => e.title = Some(value.to_owned()),
            "version" => e.version = Some(value.to_owned()),
            "linux" => e.linux = Some(value.to_owned()),
            "initrd" => e.initrd.push(value.to_owned()),
            "options" => e.options = Some(value.to_owned()),
            "devicetree" => e.devicetree = Some(value.to_owned()),
            _ => e.extra.push((key.to_owned(), value.to_owned())),
        }
    }
    Ok(e)
}

/// Order entries as libostree does: by `version`, highest first (versions compared like
/// `strverscmp`, so "10" sorts above "9"); ties broken by file name.
pub(crate) fn sort_entries(entries: &mut [BootEntry]) {
    entries.sort_by(|a, b| {
        let va = a.version.as_deref().unwrap_or("");
        let vb = b.version.as_deref().unwrap_or("");
        version_cmp(vb, va).then_with(|| b.file.cmp(&a.file))
    });
}

/// A `strverscmp`-like comparison: digit runs compare numerically.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let la = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let lb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let na = std::str::from_utf8(&a[..la])
                    .unwrap_or("0")
                    .trim_start_matches('0');
                let nb = std::str::from_utf8(&b[..lb])
                    .unwrap_or("0")
                    .trim_start_matches('0');
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[la..];
                b = &b[lb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// The parts of an `ostree=/ostree/boot.N/<stateroot>/<bootcsum>/<bootserial>` bootlink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bootlink {
    pub(crate) bootversion: u8,
    pub stateroot: String,
    pub(crate) bootcsum: String,
    pub(crate) bootserial: u32,
}

/// Parse an `ostree=` value with the same shape libostree's generator accepts:
/// `^/ostree/boot.([01])/([^/]+)/([^/]+)/([0-9]+)$`.
pub fn parse_bootlink(value: &str) -> Result<Bootlink, String> {
    let bad = || {
        format!("`ostree={value}` is not a bootlink of the form /ostree/boot.N/<stateroot>/<bootcsum>/<serial>")
    };
    let rest = value.strip_prefix("/ostree/boot.").ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.len() != 4 {
        return Err(bad());
    }
    let bootversion = match parts[0] {
        "0" => 0,
        "1" => 1,
        _ => return Err(bad()),
    };
    let valid = |s: &str| !s.is_empty() && s != "." && s != "..";
    if !valid(parts[1]) || !valid(parts[2]) {
        return Err(bad());
    }
    if parts[3].is_empty() || !parts[3].bytes().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    Ok(Bootlink {
        bootversion,
        stateroot: parts[1].to_owned(),
        bootcsum: parts[2].to_owned(),
        bootserial: parts[3].parse().map_err(|_| bad())?,
    })
}

/// Extract the boot checksum from a BLS `linux` path `/…/ostree/<stateroot>-<bootcsum>/vmlinuz-…`.
pub fn bootcsum_from_linux_path(linux: &str, stateroot: &str) -> Option<String> {
    let mut comps = linux.rsplit('/');
    comps.next()?; // vmlinuz-<kver>
    let dir = comps.next()?;
    let csum = dir.strip_prefix(stateroot)?.strip_prefix('-')?;
    (csum.len() == 64 && csum.bytes().all(|c| c.is_ascii_hexdigit())).then(|| csum.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ostree_entry() {
        let text = "title Debian (ostree:0)\nversion 2\noptions root=/dev/vda rw ostree=/ostree/boot.1/debian/abc/0\nlinux /ostree/debian-abc/vmlinuz-6.1\ninitrd /ostree/debian-abc/initramfs-6.1.img\ninitrd /ostree/overlay.img\nx-extension yes\n";
        let e = parse_entry("ostree-2-debian.conf", text).unwrap();
        assert_eq!(e.version.as_deref(), Some("2"));
        assert_eq!(e.initrd.len(), 2);
        assert_eq!(
            e.kargs(),
            ["root=/dev/vda", "rw", "ostree=/ostree/boot.1/debian/abc/0"]
        );
        assert_eq!(
            e.ostree_karg().as_deref(),
            Some("/ostree/boot.1/debian/abc/0")
        );
        assert_eq!(e.extra, [("x-extension".to_owned(), "yes".to_owned())]);
    }

    #[test]
    fn sorts_highest_version_first() {
        let mk = |f: &str, v: &str| BootEntry {
            file: f.into(),
            version: Some(v.into()),
            ..Default::default()
        };
        let mut v = vec![mk("a", "9"), mk("b", "10"), mk("c", "2")];
        sort_entries(&mut v);
        let files: Vec<_> = v.iter().map(|e| e.file.as_str()).collect();
        assert_eq!(files, ["b", "a", "c"]);
    }

    #[test]
    fn bootlinks() {
        let b = parse_bootlink("/ostree/boot.1/debian/abc/3").unwrap();
        assert_eq!(
            (
                b.bootversion,
                b.stateroot.as_str(),
                b.bootcsum.as_str(),
                b.bootserial
            ),
            (1, "debian", "abc", 3)
        );
        for bad in [
            "/ostree/deploy/debian/deploy/abc.0",
            "/ostree/boot.2/debian/abc/0",
            "/ostree/boot.0/../abc/0",
            "/ostree/boot.0/debian/abc/x",
            "/ostree/boot.0/debian/abc/0/extra",
            "",
        ] {
            assert!(parse_bootlink(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bootcsum_from_path() {
        let c = "ff6d610a0f0d84602d9e2878eb3a16a850f2d31faa2f14108006723892a17899";
        assert_eq!(
            bootcsum_from_linux_path(&format!("/ostree/demo-{c}/vmlinuz-6.1"), "demo").as_deref(),
            Some(c)
        );
        assert_eq!(
            bootcsum_from_linux_path(&format!("/boot/ostree/demo-{c}/vmlinuz-6.1"), "demo")
                .as_deref(),
            Some(c)
        );
        assert_eq!(bootcsum_from_linux_path("/vmlinuz", "demo"), None);
    }
}
