//! ostree's runtime state files, which are GVariant `a{sv}` dictionaries:
//! `/run/ostree-booted` (written by ostree-prepare-root) and `/run/ostree/staged-deployment`
//! (written when a deployment is staged). Decoding uses zvariant's GVariant format, the same
//! wire format GLib writes (little-endian on the hosts we run on).

use serde::Serialize;
use std::collections::HashMap;
use zvariant::serialized::{Context, Data};
use zvariant::{OwnedValue, Value, LE};

/// Decoded `/run/ostree-booted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct BootedState {
    /// `backing-root-device-inode` `(tt)`: (st_dev, st_ino) of the booted deployment directory.
    /// Absent on older ostree (2022.7 writes an empty file); then the root is stat'ed instead.
    pub(crate) backing_root_device_inode: Option<(u64, u64)>,
    /// `root.transient`: `/` is an overlay with a tmpfs upper (prepare-root.conf `[root]
    /// transient=true`); writes anywhere in the root, `/usr` included, vanish at reboot.
    pub(crate) root_transient: bool,
    /// `transient-etc`: `/etc` is an overlay of `usr/etc` with its upper in this directory
    /// (prepare-root.conf `[etc] transient=true`); the admin's `/etc` vanishes at reboot.
    pub(crate) transient_etc: Option<String>,
    /// `composefs` (b): ostree-prepare-root mounted `/` as composefs (an overlay over the
    /// deployment's EROFS image `.ostree.cfs`, with the repo's objects as a data-only lower
    /// layer). ostree writes it only when the composefs mount succeeded.
    pub(crate) composefs: bool,
    /// `composefs.verity` (b): that mount required fs-verity (`verity=require`: every file's
    /// content is checked against the digest recorded in the image).
    pub(crate) composefs_verity: bool,
    /// `composefs.signed` (s): the public key file that verified the commit's signature (and
    /// thereby the image's expected digest); absent when the image is not signed.
    pub(crate) composefs_signed: Option<String>,
    /// `sysroot-ro` (b): `/sysroot` is mounted read-only (`sysroot.readonly`).
    pub(crate) sysroot_ro: bool,
    /// The mount at the running root, from the mount table (not from the file): filled by
    /// [`crate::discover::load`]; see [`crate::discover::composefs`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) root_mount: Option<super::composefs::RootMount>,
    /// Every key present, with its GVariant type signature, for diagnostics.
    pub(crate) keys: Vec<(String, String)>,
}

/// Decoded `/run/ostree/staged-deployment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StagedState {
    /// `target.name`: `<checksum>.<serial>`.
    pub(crate) name: String,
    pub(crate) osname: String,
    pub(crate) bootcsum: String,
    /// `kargs` override, when the stager gave one (`ostree admin deploy --stage --karg…`).
    pub(crate) kargs: Option<Vec<String>>,
    /// `merge-deployment.name`, when present.
    pub(crate) merge_deployment: Option<String>,
    pub(crate) overlay_initrds: Vec<String>,
    /// `locked`: finalization is locked (the staged deployment will not be finalized at shutdown).
    pub(crate) locked: bool,
}

// zvariant 5 marks its GVariant format deprecated in favour of a future separate crate; it is
// the real, tested GVariant encoding that ostree's files use, so keep it until that lands.
#[allow(deprecated)]
fn ctxt() -> Context {
    Context::new_gvariant(LE, 0)
}

/// An ostree commit object, `(a{sv}aya(say)sstayay)`: metadata, parent, related objects,
/// subject, body, timestamp, root dirtree and root dirmeta checksums.
pub(crate) type CommitVariant = (
    HashMap<String, OwnedValue>,
    Vec<u8>,
    Vec<(String, Vec<u8>)>,
    String,
    String,
    u64,
    Vec<u8>,
    Vec<u8>,
);

fn decode_dict(bytes: &[u8]) -> Result<HashMap<String, OwnedValue>, String> {
    let data = Data::new(bytes, ctxt());
    let (dict, used): (HashMap<String, OwnedValue>, usize) = data
        .deserialize()
        .map_err(|e| format!("not a GVariant a{{sv}} dictionary: {e}"))?;
    if used != bytes.len() {
        return Err(format!(
            "not a GVariant a{{sv}} dictionary: {} trailing bytes",
            bytes.len() - used
        ));
    }
    Ok(dict)
}

fn signature(v: &Value<'_>) -> String {
    v.value_signature().to_string()
}

/// Parse `/run/ostree-booted`. An empty file is a valid empty dictionary.
pub fn parse_booted(bytes: &[u8]) -> Result<BootedState, String> {
    let dict = decode_dict(bytes)?;
    let mut keys: Vec<(String, String)> = dict
        .iter()
        .map(|(k, v)| (k.clone(), signature(v)))
        .collect();
    keys.sort();
    let backing_root_device_inode = match dict.get("backing-root-device-inode") {
        None => None,
        Some(v) => {
            let t: (u64, u64) = v
                .try_clone()
                .map_err(|e| e.to_string())?
                .try_into()
                .map_err(|_| {
                    format!(
                        "key backing-root-device-inode has type {}, expected (tt)",
                        signature(v)
                    )
                })?;
            Some(t)
        }
    };
    let root_transient = get_bool(&dict, "root.transient")?;
    let transient_etc = get_opt_str(&dict, "transient-etc")?;
    let composefs = get_bool(&dict, "composefs")?;
    let composefs_verity = get_bool(&dict, "composefs.verity")?;
    let composefs_signed = get_opt_str(&dict, "composefs.signed")?;
    let sysroot_ro = get_bool(&dict, "sysroot-ro")?;
    Ok(BootedState {
        backing_root_device_inode,
        root_transient,
        transient_etc,
        composefs,
        composefs_verity,
        composefs_signed,
        sysroot_ro,
        root_mount: None,
        keys,
    })
}

/// A boolean key of an `a{sv}`; absent is false, another type an error naming the key.
fn get_bool(dict: &HashMap<String, OwnedValue>, key: &str) -> Result<bool, String> {
    match dict.get(key).map(|v| &**v) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!(
            "key {key} has type {}, expected b",
            signature(other)
        )),
    }
}

/// A string key of an `a{sv}`; absent is `None`, another type an error naming the key.
fn get_opt_str(dict: &HashMap<String, OwnedValue>, key: &str) -> Result<Option<String>, String> {
    match dict.get(key).map(|v| &**v) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s.to_string())),
        Some(other) => Err(format!(
            "key {key} has type {}, expected s",
            signature(other)
        )),
    }
}

/// `/run/ostree/staged-deployment` with `locked` set to `locked`, every other key kept as it
/// was — what `ostree_sysroot_change_finalization()` (`ostree admin lock-finalization
/// [--unlock]`) writes.
pub fn with_locked(bytes: &[u8], locked: bool) -> Result<Vec<u8>, String> {
    parse_staged(bytes)?;
    with_key(bytes, "locked", Value::from(locked))
}

/// `/run/ostree-booted` pointing at another deployment directory: `backing-root-device-inode`
/// set to its (st_dev, st_ino), every other key kept. ostree picks the booted deployment by this
/// key, and `/run` survives a soft reboot, so it must name the new root before the switch.
pub(crate) fn with_backing_root(bytes: &[u8], dev: u64, ino: u64) -> Result<Vec<u8>, String> {
    parse_booted(bytes)?;
    with_key(bytes, "backing-root-device-inode", Value::from((dev, ino)))
}

/// Re-encode an `a{sv}` dictionary with one key set.
fn with_key(bytes: &[u8], key: &str, value: Value<'_>) -> Result<Vec<u8>, String> {
    let dict = decode_dict(bytes)?;
    let mut m: HashMap<&str, Value<'_>> = HashMap::new();
    for (k, v) in &dict {
        m.insert(
            k.as_str(),
            Value::from(v.try_clone().map_err(|e| e.to_string())?),
        );
    }
    m.insert(key, value);
    zvariant::to_bytes(ctxt(), &m)
        .map(|b| b.bytes().to_vec())
        .map_err(|e| format!("encoding the a{{sv}} dictionary: {e}"))
}

fn get_str(dict: &HashMap<String, OwnedValue>, key: &str, ctx: &str) -> Result<String, String> {
    let v = dict
        .get(key)
        .ok_or_else(|| format!("{ctx}: missing key `{key}`"))?;
    match &**v {
        Value::Str(s) => Ok(s.to_string()),
        other => Err(format!(
            "{ctx}: key `{key}` has type {}, expected s",
            signature(other)
        )),
    }
}

fn sub_dict(v: &OwnedValue, ctx: &str) -> Result<HashMap<String, OwnedValue>, String> {
    let c = v.try_clone().map_err(|e| e.to_string())?;
    HashMap::<String, OwnedValue>::try_from(c)
        .map_err(|_| format!("{ctx}: has type {}, expected a{{sv}}", signature(v)))
}

fn strv(v: &OwnedValue, key: &str) -> Result<Vec<String>, String> {
    let c = v.try_clone().map_err(|e| e.to_string())?;
    Vec::<String>::try_from(c)
        .map_err(|_| format!("key `{key}` has type {}, expected as", signature(v)))
}

/// Parse `/run/ostree/staged-deployment`.
pub fn parse_staged(bytes: &[u8]) -> Result<StagedState, String> {
    let dict = decode_dict(bytes)?;
    let target = sub_dict(
        dict.get("target").ok_or("missing key `target`")?,
        "key `target`",
    )?;
    let name = get_str(&target, "name", "target")?;
    let osname = get_str(&target, "osname", "target")?;
    let bootcsum = get_str(&target, "bootcsum", "target")?;
    let merge_deployment = match dict.get("merge-deployment") {
        Some(v) => Some(get_str(
            &sub_dict(v, "key `merge-deployment`")?,
            "name",
            "merge-deployment",
        )?),
        None => None,
    };
    let kargs = dict.get("kargs").map(|v| strv(v, "kargs")).transpose()?;
    let overlay_initrds = dict
        .get("overlay-initrds")
        .map(|v| strv(v, "overlay-initrds"))
        .transpose()?
        .unwrap_or_default();
    let locked = match dict.get("locked") {
        None => false,
        Some(v) => match &**v {
            Value::Bool(b) => *b,
            other => {
                return Err(format!(
                    "key `locked` has type {}, expected b",
                    signature(other)
                ))
            }
        },
    };
    Ok(StagedState {
        name,
        osname,
        bootcsum,
        kargs,
        merge_deployment,
        overlay_initrds,
        locked,
    })
}

/// Encoders, used by tests and fixtures to write state files exactly as ostree does.
pub mod encode {
    use super::*;

    fn to_bytes(m: &HashMap<&str, Value<'_>>) -> Vec<u8> {
        zvariant::to_bytes(ctxt(), m)
            .expect("a{sv} of basic types always encodes")
            .bytes()
            .to_vec()
    }

    /// `/run/ostree-booted` with `backing-root-device-inode`.
    pub fn booted(dev: u64, ino: u64) -> Vec<u8> {
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("backing-root-device-inode", Value::from((dev, ino)));
        to_bytes(&m)
    }

    /// `/run/ostree-booted` as ostree-prepare-root writes it with `root.transient` and/or
    /// `etc.transient` configured.
    pub fn booted_transient(
        dev: u64,
        ino: u64,
        root_transient: bool,
        transient_etc: Option<&str>,
    ) -> Vec<u8> {
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("backing-root-device-inode", Value::from((dev, ino)));
        if root_transient {
            m.insert("root.transient", Value::from(true));
        }
        if let Some(d) = transient_etc {
            m.insert("transient-etc", Value::from(d));
        }
        to_bytes(&m)
    }

    /// `/run/ostree-booted` as ostree-prepare-root writes it after mounting a composefs root
    /// (`otcore_mount_rootfs` and `main` in ostree's `ostree-prepare-root.c`): the backing
    /// directory, `root.transient`/`root.transient-ro` false, `composefs` true,
    /// `composefs.verity`, `composefs.signed` (the key file) when the commit was signed, and
    /// `sysroot-ro`.
    pub fn booted_composefs(dev: u64, ino: u64, verity: bool, signed: Option<&str>) -> Vec<u8> {
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("backing-root-device-inode", Value::from((dev, ino)));
        m.insert("root.transient", Value::from(false));
        m.insert("root.transient-ro", Value::from(false));
        if let Some(key) = signed {
            m.insert("composefs.signed", Value::from(key));
        }
        m.insert("composefs", Value::from(true));
        m.insert("composefs.verity", Value::from(verity));
        m.insert("sysroot-ro", Value::from(true));
        to_bytes(&m)
    }

    /// `/run/ostree/staged-deployment` for a target `<checksum>.<serial>`.
    pub fn staged(
        name: &str,
        osname: &str,
        bootcsum: &str,
        kargs: Option<&[&str]>,
        locked: bool,
    ) -> Vec<u8> {
        let mut target: HashMap<&str, Value<'_>> = HashMap::new();
        target.insert("name", Value::from(name));
        target.insert("osname", Value::from(osname));
        target.insert("bootcsum", Value::from(bootcsum));
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("target", Value::from(target));
        if let Some(k) = kargs {
            m.insert("kargs", Value::from(k.to_vec()));
        }
        if locked {
            m.insert("locked", Value::from(true));
        }
        to_bytes(&m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booted_roundtrip_and_empty() {
        let b = parse_booted(&encode::booted(2049, 1234)).unwrap();
        assert_eq!(b.backing_root_device_inode, Some((2049, 1234)));
        assert_eq!(parse_booted(b"").unwrap().backing_root_device_inode, None);
    }

    #[test]
    fn staged_roundtrip() {
        let bytes = encode::staged("abc.0", "debian", "ff", Some(&["quiet", "x=1"]), true);
        let s = parse_staged(&bytes).unwrap();
        assert_eq!(s.name, "abc.0");
        assert_eq!(s.osname, "debian");
        assert_eq!(
            s.kargs.as_deref(),
            Some(&["quiet".to_owned(), "x=1".to_owned()][..])
        );
        assert!(s.locked);
        let s = parse_staged(&encode::staged("abc.1", "d", "ff", None, false)).unwrap();
        assert_eq!((s.kargs, s.locked), (None, false));
    }

    #[test]
    fn transient_keys() {
        let b = parse_booted(&encode::booted_transient(
            1,
            2,
            true,
            Some("/run/ostree/transient-etc.x"),
        ))
        .unwrap();
        assert!(b.root_transient);
        assert_eq!(
            b.transient_etc.as_deref(),
            Some("/run/ostree/transient-etc.x")
        );
        let b = parse_booted(&encode::booted(1, 2)).unwrap();
        assert!(!b.root_transient && b.transient_etc.is_none());
    }

    #[test]
    fn unlock_keeps_every_other_key() {
        let locked = encode::staged("abc.0", "debian", "ff", Some(&["quiet"]), true);
        let unlocked = with_locked(&locked, false).unwrap();
        let s = parse_staged(&unlocked).unwrap();
        assert!(!s.locked);
        assert_eq!(
            (s.name.as_str(), s.osname.as_str(), s.bootcsum.as_str()),
            ("abc.0", "debian", "ff")
        );
        assert_eq!(s.kargs, Some(vec!["quiet".to_owned()]));
        assert!(
            parse_staged(&with_locked(&unlocked, true).unwrap())
                .unwrap()
                .locked
        );
        assert!(with_locked(b"garbage", false).is_err());
    }

    #[test]
    fn backing_root_is_replaced_and_other_keys_kept() {
        let b = encode::booted_transient(1, 2, true, Some("/run/x"));
        let n = parse_booted(&with_backing_root(&b, 7, 9).unwrap()).unwrap();
        assert_eq!(n.backing_root_device_inode, Some((7, 9)));
        assert!(n.root_transient);
        assert_eq!(n.transient_etc.as_deref(), Some("/run/x"));
        // An empty file (ostree 2022.7) gains the key.
        let n = parse_booted(&with_backing_root(b"", 3, 4).unwrap()).unwrap();
        assert_eq!(n.backing_root_device_inode, Some((3, 4)));
    }

    #[test]
    fn composefs_keys() {
        let b = parse_booted(&encode::booted_composefs(
            5,
            6,
            true,
            Some("/etc/ostree/initramfs-root-binding.key"),
        ))
        .unwrap();
        assert_eq!(b.backing_root_device_inode, Some((5, 6)));
        assert!(b.composefs && b.composefs_verity && b.sysroot_ro);
        assert!(!b.root_transient);
        assert_eq!(
            b.composefs_signed.as_deref(),
            Some("/etc/ostree/initramfs-root-binding.key")
        );
        let b = parse_booted(&encode::booted_composefs(5, 6, false, None)).unwrap();
        assert!(b.composefs && !b.composefs_verity && b.composefs_signed.is_none());
        // ostree 2022.7 (an empty file) and a plain bind-mounted root: none of it.
        let b = parse_booted(&encode::booted(5, 6)).unwrap();
        assert!(!b.composefs && !b.composefs_verity && b.composefs_signed.is_none());
        // Keys of the wrong type are errors naming the key, not silently "off".
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("composefs.verity", Value::from("yes"));
        let bytes = zvariant::to_bytes(ctxt(), &m).unwrap().bytes().to_vec();
        let e = parse_booted(&bytes).unwrap_err();
        assert!(
            e.contains("composefs.verity") && e.contains("expected b"),
            "{e}"
        );
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("composefs.signed", Value::from(true));
        let bytes = zvariant::to_bytes(ctxt(), &m).unwrap().bytes().to_vec();
        assert!(parse_booted(&bytes)
            .unwrap_err()
            .contains("composefs.signed"));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse_booted(b"\xff\xfe garbage that is not gvariant \x01").is_err());
        assert!(parse_staged(b"").unwrap_err().contains("target"));
        assert!(parse_staged(b"\x00\x01\x02\x03\x04").is_err());
        // a valid dictionary with the wrong type for backing-root-device-inode
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert("backing-root-device-inode", Value::from("nope"));
        let bytes = zvariant::to_bytes(ctxt(), &m).unwrap().bytes().to_vec();
        assert!(parse_booted(&bytes).unwrap_err().contains("expected (tt)"));
    }
}
