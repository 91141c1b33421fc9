//! A signed composefs host (`composefs.signed` in `/run/ostree-booted`): the check
//! ostree-prepare-root makes before it mounts a signed root (`otcore_mount_rootfs` in ostree's
//! `src/libotcore/otcore-prepare-root.c`), made here for a target deployment before a live apply
//! mounts its composefs image:
//!
//! 1. the commit object's bytes carry a valid ed25519 signature (`ostree.sign.ed25519`, `aay`,
//!    in the commit's detached metadata `<commit>.commitmeta`) by one of the public keys of the
//!    key file `composefs.signed` names (base64, one key per line); one valid signature is
//!    enough;
//! 2. the commit's own metadata holds the composefs image's fs-verity digest
//!    (`ostree.composefs.digest.v0`, 32 bytes).
//!
//! The live executor then mounts the image only if its measured fs-verity digest is that one
//! ([`crate::system::composefs::mount`]), as libcomposefs does with `expected_fsverity_digest`.
//!
//! Parsing and verifying are pure ([`verify`]); [`check_deployment`] reads the three files.
//! Not done: bootc's fallback to the signature of a local commit's base commit.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use zvariant::{serialized::Data, OwnedValue, Value};

/// The detached-metadata key of ostree's ed25519 signatures (`OSTREE_SIGN_METADATA_ED25519_KEY`).
pub const SIGNATURES_KEY: &str = "ostree.sign.ed25519";
/// The commit-metadata key of the composefs image digest (`OSTREE_COMPOSEFS_DIGEST_KEY_V0`).
pub const DIGEST_KEY: &str = "ostree.composefs.digest.v0";

/// The outcome of checking a target deployment's commit on a signed composefs host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signature", rename_all = "snake_case")]
pub enum CommitSignature {
    /// Signed by a key of `key_file`; the image's fs-verity digest must be `composefs_digest`
    /// (hex).
    Valid {
        key_file: String,
        composefs_digest: String,
    },
    /// Not acceptable, and why (no signature, none valid, no digest, unreadable key file, …).
    Invalid { key_file: String, reason: String },
}

impl CommitSignature {
    /// The image digest a valid signature binds.
    pub fn digest(&self) -> Option<&str> {
        match self {
            CommitSignature::Valid {
                composefs_digest, ..
            } => Some(composefs_digest),
            CommitSignature::Invalid { .. } => None,
        }
    }
}

// See discover::state: zvariant's GVariant format is deprecated only in favour of a future crate.
#[allow(deprecated)]
fn ctxt() -> zvariant::serialized::Context {
    zvariant::serialized::Context::new_gvariant(zvariant::LE, 0)
}

/// Pure: the public keys of an ostree ed25519 key file: base64 of the 32-byte key, one per
/// line; empty lines are skipped, as ostree does.
pub fn parse_public_keys(text: &str) -> Result<Vec<VerifyingKey>, String> {
    use base64::Engine;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(line)
            .map_err(|e| format!("line {}: not base64: {e}", n + 1))?;
        let arr: [u8; 32] = raw.as_slice().try_into().map_err(|_| {
            format!(
                "line {}: {} bytes, an ed25519 public key has 32",
                n + 1,
                raw.len()
            )
        })?;
        keys.push(
            VerifyingKey::from_bytes(&arr)
                .map_err(|e| format!("line {}: not an ed25519 public key: {e}", n + 1))?,
        );
    }
    if keys.is_empty() {
        return Err("no public key in it".into());
    }
    Ok(keys)
}

fn bytes_of(v: &Value<'_>) -> Option<Vec<u8>> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::U8(b) => Some(*b),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn dict(bytes: &[u8], what: &str) -> Result<HashMap<String, OwnedValue>, String> {
    let (d, used): (HashMap<String, OwnedValue>, usize) = Data::new(bytes, ctxt())
        .deserialize()
        .map_err(|e| format!("the {what} is not a GVariant a{{sv}}: {e}"))?;
    if used != bytes.len() {
        return Err(format!(
            "the {what} has {} trailing bytes",
            bytes.len() - used
        ));
    }
    Ok(d)
}

/// Pure: check `commit` (the commit object's bytes, `(a{sv}aya(say)sstayay)`) against its
/// detached metadata `commitmeta` (`a{sv}`, `None` when the commit has none) and `keys`, and
/// return the composefs image digest the commit records.
pub fn verify(
    commit: &[u8],
    commitmeta: Option<&[u8]>,
    keys: &[VerifyingKey],
) -> Result<[u8; 32], String> {
    let meta = dict(
        commitmeta.ok_or("the commit has no detached metadata (no signature)")?,
        "detached metadata",
    )?;
    let sigs: Vec<Vec<u8>> = match meta.get(SIGNATURES_KEY).map(|v| &**v) {
        None => return Err(format!("the commit has no {SIGNATURES_KEY} signature")),
        Some(Value::Array(a)) => a
            .iter()
            .map(bytes_of)
            .collect::<Option<_>>()
            .ok_or(format!("{SIGNATURES_KEY} is not of type aay"))?,
        Some(other) => {
            return Err(format!(
                "{SIGNATURES_KEY} has type {}, expected aay",
                other.value_signature()
            ))
        }
    };
    let valid = sigs.iter().any(|s| {
        <[u8; 64]>::try_from(s.as_slice())
            .map(|b| Signature::from_bytes(&b))
            .is_ok_and(|sig| keys.iter().any(|k| k.verify_strict(commit, &sig).is_ok()))
    });
    if !valid {
        return Err(format!(
            "none of the commit's {} ed25519 signature(s) is valid for the {} key(s)",
            sigs.len(),
            keys.len()
        ));
    }
    // Only now is the commit trusted enough to read.
    let (c, used): (super::state::CommitVariant, usize) =
        Data::new(commit, ctxt())
            .deserialize()
            .map_err(|e| format!("the commit object is not a GVariant commit: {e}"))?;
    if used != commit.len() {
        return Err("the commit object has trailing bytes".into());
    }
    let digest =
        c.0.get(DIGEST_KEY)
            .and_then(|v| bytes_of(v))
            .ok_or(format!("the signed commit records no {DIGEST_KEY}"))?;
    <[u8; 32]>::try_from(digest.as_slice())
        .map_err(|_| format!("{DIGEST_KEY} has {} bytes, expected 32", digest.len()))
}

/// Check the commit of the deployment directory `deploy` (`…/deploy/<commit>.<serial>`) in the
/// repository `objects` against `key_file` (read in the running root `root`).
pub fn check_deployment(
    root: &Path,
    objects: &Path,
    commit: &str,
    key_file: &str,
) -> CommitSignature {
    let invalid = |reason: String| CommitSignature::Invalid {
        key_file: key_file.to_owned(),
        reason,
    };
    let key_path = root.join(key_file.trim_start_matches('/'));
    let keys = match std::fs::read_to_string(&key_path) {
        Ok(t) => match parse_public_keys(&t) {
            Ok(k) => k,
            Err(e) => return invalid(format!("{}: {e}", key_path.display())),
        },
        Err(e) => {
            return invalid(format!(
                "reading {}: {e} (ostree-prepare-root reads it in the initramfs; the running root needs the same file)",
                key_path.display()
            ))
        }
    };
    let object = |ext: &str| {
        objects
            .join(&commit[..2])
            .join(format!("{}.{ext}", &commit[2..]))
    };
    let read = |ext: &str| {
        crate::system::files::read_opt(&object(ext), crate::system::files::Follow::No)
            .map_err(|e| format!("{e:#}"))
    };
    let commit_bytes = match read("commit") {
        Ok(Some(b)) => b,
        Ok(None) => return invalid(format!("{} is missing", object("commit").display())),
        Err(e) => return invalid(e),
    };
    let meta = match read("commitmeta") {
        Ok(m) => m,
        Err(e) => return invalid(e),
    };
    match verify(&commit_bytes, meta.as_deref(), &keys) {
        Ok(d) => CommitSignature::Valid {
            key_file: key_file.to_owned(),
            composefs_digest: d.iter().map(|b| format!("{b:02x}")).collect(),
        },
        Err(e) => invalid(format!("commit {commit}: {e}")),
    }
}

/// Detached metadata `a{sv}` holding `signatures` as `ostree.sign.ed25519` — what `ostree sign`
/// writes to `<commit>.commitmeta` (for fixtures: this machine's ostree has no ed25519 support).
pub fn encode_commitmeta(signatures: &[Vec<u8>]) -> Vec<u8> {
    let mut m: HashMap<&str, Value<'_>> = HashMap::new();
    m.insert(SIGNATURES_KEY, Value::from(signatures.to_vec()));
    zvariant::to_bytes(ctxt(), &m)
        .expect("a{sv} of byte arrays always encodes")
        .bytes()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    /// A commit object with `digest` in its metadata, encoded by zvariant.
    fn commit(digest: Option<&[u8]>) -> Vec<u8> {
        let mut meta: HashMap<String, Value<'_>> = HashMap::new();
        meta.insert("version".into(), Value::from("42"));
        if let Some(d) = digest {
            meta.insert(DIGEST_KEY.into(), Value::from(d.to_vec()));
        }
        let c = (
            meta,
            Vec::<u8>::new(),
            Vec::<(String, Vec<u8>)>::new(),
            "subject".to_owned(),
            String::new(),
            0u64,
            vec![1u8; 32],
            vec![2u8; 32],
        );
        zvariant::to_bytes(ctxt(), &c).unwrap().bytes().to_vec()
    }

    #[test]
    fn public_key_files() {
        use base64::Engine;
        let b64 = |k: &SigningKey| {
            base64::engine::general_purpose::STANDARD.encode(k.verifying_key().to_bytes())
        };
        let text = format!("{}\n\n{}\n", b64(&key(1)), b64(&key(2)));
        let keys = parse_public_keys(&text).unwrap();
        assert_eq!(keys, [key(1).verifying_key(), key(2).verifying_key()]);
        assert!(parse_public_keys("\n")
            .unwrap_err()
            .contains("no public key"));
        assert!(parse_public_keys("!!\n")
            .unwrap_err()
            .contains("line 1: not base64"));
        assert!(parse_public_keys("AAAA\n").unwrap_err().contains("3 bytes"));
    }

    #[test]
    fn signature_and_digest() {
        let digest = [7u8; 32];
        let c = commit(Some(&digest));
        let good = key(1).sign(&c).to_bytes().to_vec();
        let other = key(2).sign(&c).to_bytes().to_vec();
        let keys = [key(1).verifying_key()];
        // One valid signature among others is enough.
        let meta = encode_commitmeta(&[other.clone(), good.clone()]);
        assert_eq!(verify(&c, Some(&meta), &keys).unwrap(), digest);
        // Signed by another key only.
        let e = verify(&c, Some(&encode_commitmeta(&[other])), &keys).unwrap_err();
        assert!(
            e.contains("none of the commit's 1 ed25519 signature(s)"),
            "{e}"
        );
        // A signature over other bytes (a changed commit) fails.
        let mut changed = c.clone();
        *changed.last_mut().unwrap() ^= 1;
        assert!(verify(&changed, Some(&meta), &keys).is_err());
        // No detached metadata, no signature key, a wrong type, a truncated signature.
        assert!(verify(&c, None, &keys)
            .unwrap_err()
            .contains("no detached metadata"));
        let empty = zvariant::to_bytes(ctxt(), &HashMap::<&str, Value<'_>>::new())
            .unwrap()
            .bytes()
            .to_vec();
        assert!(verify(&c, Some(&empty), &keys)
            .unwrap_err()
            .contains("no ostree.sign.ed25519"));
        let mut m: HashMap<&str, Value<'_>> = HashMap::new();
        m.insert(SIGNATURES_KEY, Value::from("x"));
        let wrong = zvariant::to_bytes(ctxt(), &m).unwrap().bytes().to_vec();
        assert!(verify(&c, Some(&wrong), &keys)
            .unwrap_err()
            .contains("expected aay"));
        let short = encode_commitmeta(&[good[..63].to_vec()]);
        assert!(verify(&c, Some(&short), &keys).is_err());
        // Signed, but no digest (or a short one) in the commit.
        for d in [None, Some(&digest[..31])] {
            let c = commit(d);
            let meta = encode_commitmeta(&[key(1).sign(&c).to_bytes().to_vec()]);
            let e = verify(&c, Some(&meta), &keys).unwrap_err();
            assert!(e.contains(DIGEST_KEY), "{e}");
        }
    }
}
