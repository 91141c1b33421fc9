//! Parser for `ostree admin status` (ostree 2022.7 has no JSON output), used to
//! cross-check fastswitch against ostree's own view of the guest.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub stateroot: String,
    pub checksum: String,
    pub serial: u32,
    pub booted: bool,
    pub staged: bool,
    pub pending: bool,
    pub rollback: bool,
    pub pinned: bool,
    pub refspec: Option<String>,
}

impl Deployment {
    /// `<checksum>.<serial>`, the deployment directory name.
    pub fn id(&self) -> String {
        format!("{}.{}", self.checksum, self.serial)
    }
}

/// Parse the output of `ostree admin status`, in its order (staged first,
/// then the bootloader order).
pub fn parse_admin_status(text: &str) -> Result<Vec<Deployment>, String> {
    let mut out: Vec<Deployment> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("* ").or_else(|| line.strip_prefix("  ")) {
            if !rest.starts_with(' ') {
                let booted = line.starts_with('*');
                let mut words = rest.split_whitespace();
                let (Some(stateroot), Some(id)) = (words.next(), words.next()) else {
                    return Err(format!("bad deployment line {line:?}"));
                };
                let (checksum, serial) = id
                    .rsplit_once('.')
                    .ok_or_else(|| format!("bad deployment id in {line:?}"))?;
                if checksum.len() != 64 || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("bad checksum in {line:?}"));
                }
                let flags: Vec<&str> = words.collect();
                let flag = |f: &str| flags.iter().any(|w| w.trim_matches(['(', ')']) == f);
                out.push(Deployment {
                    stateroot: stateroot.to_string(),
                    checksum: checksum.to_string(),
                    serial: serial
                        .parse()
                        .map_err(|_| format!("bad serial in {line:?}"))?,
                    booted,
                    staged: flag("staged"),
                    pending: flag("pending"),
                    rollback: flag("rollback"),
                    pinned: false,
                    refspec: None,
                });
                continue;
            }
        }
        let detail = line.trim();
        if let Some(d) = out.last_mut() {
            if let Some(r) = detail.strip_prefix("origin refspec:") {
                d.refspec = Some(r.trim().to_string());
            } else if detail == "Pinned: yes" {
                d.pinned = true;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_status() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let c = "c".repeat(64);
        let text = format!(
            "  debian {a}.0 (staged)\n    origin refspec: test/layered\n* debian {b}.0\n    origin refspec: debian/bookworm/x86_64\n  debian {c}.1 (rollback)\n    origin refspec: x\n    Pinned: yes\n"
        );
        let d = parse_admin_status(&text).unwrap();
        assert_eq!(d.len(), 3);
        assert!(d[0].staged && !d[0].booted);
        assert_eq!(d[0].refspec.as_deref(), Some("test/layered"));
        assert!(d[1].booted && !d[1].staged);
        assert_eq!(d[1].id(), format!("{b}.0"));
        assert!(d[2].rollback && d[2].pinned && d[2].serial == 1);
        assert!(parse_admin_status("* debian nothex.0\n").is_err());
    }
}
