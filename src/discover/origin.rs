//! Deployment origin files (`<checksum>.<serial>.origin`), which are GLib key files.
//!
//! We keep every group and key (rpm-ostree and bootc add their own) and pull out the few that
//! matter: the `refspec` or `container-image-reference`, and ostree's pin flag.

use serde::Serialize;
use std::collections::BTreeMap;

/// A parsed origin file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Origin {
    /// `[origin] refspec=` for plain ostree deployments.
    pub(crate) refspec: Option<String>,
    /// `[origin] container-image-reference=` for bootc / rpm-ostree container deployments.
    pub(crate) container_image_reference: Option<String>,
    /// Every group → key → raw value, including the two above.
    pub(crate) groups: BTreeMap<String, BTreeMap<String, String>>,
}

impl Origin {
    /// `[libostree-transient] pinned=true`, as written by `ostree admin pin`.
    pub fn pinned(&self) -> bool {
        self.get("libostree-transient", "pinned") == Some("true")
    }

    /// `[origin] unlocked=` (e.g. `hotfix`).
    pub fn unlocked(&self) -> Option<&str> {
        self.get("origin", "unlocked")
    }

    pub(crate) fn get(&self, group: &str, key: &str) -> Option<&str> {
        self.groups.get(group)?.get(key).map(String::as_str)
    }
}

/// Parse GKeyFile text. Errors give the line number; the caller adds the path.
pub fn parse_origin(text: &str) -> Result<Origin, String> {
    let mut groups: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest
                .trim_end()
                .strip_suffix(']')
                .ok_or_else(|| format!("line {}: unterminated group header", n + 1))?;
            if name.is_empty() || name.contains(['[', ']']) || name.chars().any(char::is_control) {
                return Err(format!("line {}: invalid group name {name:?}", n + 1));
            }
            groups.entry(name.to_owned()).or_default();
            current = Some(name.to_owned());
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected `key=value` or `[group]`", n + 1))?;
        let key = key.trim_end();
        if key.is_empty()
            || key
                .chars()
                .any(|c| c.is_control() || c == '[' && !key.ends_with(']'))
        {
            return Err(format!("line {}: invalid key {key:?}", n + 1));
        }
        let group = current
            .as_ref()
            .ok_or_else(|| format!("line {}: key {key:?} before any [group]", n + 1))?;
        groups
            .get_mut(group)
            .expect("group inserted on header")
            .insert(key.to_owned(), unescape(value.trim_start()));
    }
    let get = |k: &str| groups.get("origin").and_then(|g| g.get(k)).cloned();
    Ok(Origin {
        refspec: get("refspec"),
        container_image_reference: get("container-image-reference"),
        groups,
    })
}

/// GKeyFile string escapes: `\s \n \t \r \\`.
fn unescape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut it = v.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('s') => out.push(' '),
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('\\') => out.push('\\'),
            Some(o) => {
                out.push('\\');
                out.push(o);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_refspec_and_unknown_keys_kept() {
        let o = parse_origin("[origin]\nrefspec=debian/bookworm/x86_64\n\n[packages]\nrequested=vim\\sgit\n[libostree-transient]\npinned=true\n").unwrap();
        assert_eq!(o.refspec.as_deref(), Some("debian/bookworm/x86_64"));
        assert_eq!(o.get("packages", "requested"), Some("vim git"));
        assert!(o.pinned());
    }

    #[test]
    fn container_reference() {
        let o = parse_origin(
            "[origin]\ncontainer-image-reference=ostree-unverified-registry:quay.io/x:latest\n",
        )
        .unwrap();
        assert_eq!(
            o.container_image_reference.as_deref(),
            Some("ostree-unverified-registry:quay.io/x:latest")
        );
        assert!(!o.pinned());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_origin("refspec=x\n")
            .unwrap_err()
            .contains("before any [group]"));
        assert!(parse_origin("[origin\n")
            .unwrap_err()
            .contains("unterminated"));
        assert!(parse_origin("[origin]\n\u{1}\u{2}garbage\n").is_err());
    }
}
