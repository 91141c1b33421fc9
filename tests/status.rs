//! `fastswitch status --json` on sysroots made by the real ostree CLI, compared with
//! `ostree admin status --sysroot` and the BLS entries ostree wrote.

mod common;
use common::*;
use serde_json::Value;

fn deployments(v: &Value) -> &Vec<Value> {
    v["deployments"].as_array().expect("deployments array")
}

/// Every deployment ostree lists appears in the same order with the same id, stateroot,
/// refspec and pin; and nothing else is listed (staged ones are invisible to ostree on an
/// unbooted sysroot, so they are skipped in the comparison).
fn assert_matches_ostree(s: &Sysroot, v: &Value) {
    assert_eq!(v["schema_version"], 1);
    let truth = parse_ostree_status(&s.ostree_status());
    let ours: Vec<&Value> = deployments(v)
        .iter()
        .filter(|d| d["staged"] == false)
        .collect();
    assert_eq!(
        ours.len(),
        truth.len(),
        "ostree says:\n{}\nwe say:\n{v:#}",
        s.ostree_status()
    );
    for (o, t) in ours.iter().zip(&truth) {
        assert_eq!(o["id"], t.id.as_str());
        assert_eq!(o["stateroot"], t.stateroot.as_str());
        assert_eq!(o["origin"]["refspec"].as_str(), t.refspec.as_deref());
        assert_eq!(o["pinned"], t.pinned);
        let (csum, serial) = t.id.rsplit_once('.').unwrap();
        assert_eq!(o["checksum"], csum);
        assert_eq!(o["serial"], serial.parse::<u64>().unwrap());
    }
}

/// The boot digest we compute equals the bootcsum ostree put in the BLS `linux` path.
fn assert_digest_matches_bls(s: &Sysroot, v: &Value) {
    let entries = s.path().join("boot/loader/entries");
    for d in deployments(v).iter().filter(|d| d["staged"] == false) {
        let file = d["boot_entry"]
            .as_str()
            .expect("written deployment has a BLS entry");
        let text = std::fs::read_to_string(entries.join(file)).unwrap();
        let linux = text.lines().find_map(|l| l.strip_prefix("linux ")).unwrap();
        let stateroot = d["stateroot"].as_str().unwrap();
        let csum = linux
            .split('/')
            .find_map(|c| c.strip_prefix(&format!("{stateroot}-")))
            .unwrap();
        assert_eq!(d["kernel"]["boot_digest"], csum, "{linux}");
        let options = text
            .lines()
            .find_map(|l| l.strip_prefix("options "))
            .unwrap();
        let kargs: Vec<&str> = options.split_whitespace().collect();
        assert_eq!(d["kargs"], serde_json::json!(kargs));
    }
}

#[test]
fn one_stateroot_pending_and_rollback() {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    let v = s.json(&["status"]);
    assert_matches_ostree(&s, &v);
    assert_digest_matches_bls(&s, &v);
    assert_eq!(deployments(&v).len(), 1);
    assert_eq!(deployments(&v)[0]["kernel"]["version"], "6.1.0-test");
    assert_eq!(deployments(&v)[0]["kargs"][0], "root=/dev/vda");

    let t2 = t1.fork();
    t2.write("usr/bin/hello", b"#!/bin/sh\necho hello v2\n");
    s.commit("fx/v2", &t2);
    s.deploy("fx", "fx/v2", &["root=/dev/vda", "rw", "quiet"]);
    let t3 = t2.fork();
    t3.write(
        "usr/lib/modules/6.1.0-test/initramfs.img",
        b"initramfs v3\n",
    );
    s.commit("fx/v3", &t3);
    s.deploy("fx", "fx/v3", &["root=/dev/vda"]);

    // Not booted: no marks, like ostree.
    let v = s.json(&["status"]);
    assert_matches_ostree(&s, &v);
    assert_digest_matches_bls(&s, &v);
    assert!(deployments(&v)
        .iter()
        .all(|d| d["booted"] == false && d["pending"] == false && d["rollback"] == false));
    let d = deployments(&v);
    assert_ne!(
        d[0]["kernel"]["boot_digest"], d[1]["kernel"]["boot_digest"],
        "v3 changed the initramfs"
    );
    assert_eq!(d[1]["kernel"]["boot_digest"], d[2]["kernel"]["boot_digest"]);

    // Booted = the middle one: index 0 pending, index 2 rollback.
    let middle = d[1]["id"].as_str().unwrap().to_owned();
    s.mark_booted("fx", &middle);
    let v = s.json(&["status"]);
    let d = deployments(&v);
    assert_eq!(
        (
            d[0]["pending"].as_bool(),
            d[1]["booted"].as_bool(),
            d[2]["rollback"].as_bool()
        ),
        (Some(true), Some(true), Some(true))
    );
    assert_eq!(d.iter().filter(|x| x["booted"] == true).count(), 1);
}

#[test]
fn two_stateroots_and_a_redeploy_with_serial_1() {
    let s = Sysroot::new();
    s.os_init("alpha");
    s.os_init("beta");
    let t = Tree::minimal("6.1.0-a");
    let c = s.commit("alpha/main", &t);
    s.deploy("alpha", "alpha/main", &["root=/dev/vda"]);
    s.deploy("beta", "alpha/main", &["root=/dev/vdb"]);
    s.deploy("alpha", "alpha/main", &["root=/dev/vda", "quiet"]);
    let v = s.json(&["status"]);
    assert_matches_ostree(&s, &v);
    assert_digest_matches_bls(&s, &v);
    let ids: Vec<(String, String)> = deployments(&v)
        .iter()
        .map(|d| {
            (
                d["stateroot"].as_str().unwrap().into(),
                d["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(ids.contains(&("alpha".into(), format!("{c}.1"))), "{ids:?}");
    assert!(ids.contains(&("beta".into(), format!("{c}.0"))), "{ids:?}");

    // Booted in alpha: beta's deployment is neither pending nor rollback.
    let alpha0 = format!("{c}.0");
    s.mark_booted("alpha", &alpha0);
    let v = s.json(&["status"]);
    for d in deployments(&v) {
        if d["stateroot"] == "beta" {
            assert_eq!(
                (d["pending"].as_bool(), d["rollback"].as_bool()),
                (Some(false), Some(false))
            );
        }
        if d["id"] == format!("{c}.1") {
            assert_eq!(d["pending"], true);
        }
    }
}

#[test]
fn staged_pinned_and_missing_initramfs() {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda", "rw"]);
    run(ostree().args([
        "admin",
        "pin",
        &format!("--sysroot={}", s.path().display()),
        "0",
    ]));
    let v = s.json(&["status"]);
    assert_matches_ostree(&s, &v);
    let booted = deployments(&v)[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(deployments(&v)[0]["pinned"], true);
    s.mark_booted("fx", &booted);

    let t2 = t1.fork();
    t2.remove("usr/lib/modules/6.1.0-test/initramfs.img");
    let c2 = s.commit("fx/v2", &t2);
    let staged = s.stage("fx", &c2, "fx/v2", None);
    let v = s.json(&["status"]);
    assert_matches_ostree(&s, &v);
    let d = deployments(&v);
    assert_eq!(d[0]["id"], staged.as_str());
    assert_eq!(
        (
            d[0]["staged"].as_bool(),
            d[0]["pending"].as_bool(),
            d[0]["booted"].as_bool()
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(d[0]["boot_entry"], Value::Null);
    assert_eq!(d[0]["kernel"]["has_initramfs"], false);
    // Without a kargs override the staged deployment inherits the booted one's (minus ostree=).
    assert_eq!(d[0]["kargs"], serde_json::json!(["root=/dev/vda", "rw"]));
    assert_eq!(d[1]["booted"], true);

    // With an override, that wins.
    s.stage(
        "fx",
        &c2,
        "fx/v2",
        Some(&["root=/dev/vda", "fastswitch.test=1"]),
    );
    let v = s.json(&["status"]);
    assert_eq!(
        deployments(&v)[0]["kargs"],
        serde_json::json!(["root=/dev/vda", "fastswitch.test=1"])
    );
    assert_eq!(deployments(&v)[0]["serial"], 1);
}

fn expect_error(s: &Sysroot, needle: &str) {
    let out = s.fastswitch().args(["status", "--json"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err: Value = serde_json::from_slice(&out.stdout).unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn garbage_state_files_and_non_sysroots_are_clear_errors() {
    let s = Sysroot::new();
    s.os_init("fx");
    let t1 = Tree::minimal("6.1.0-test");
    s.commit("fx/v1", &t1);
    s.deploy("fx", "fx/v1", &["root=/dev/vda"]);

    std::fs::write(
        s.run().join("ostree-booted"),
        b"\x07garbage\xff\xff\x00\x01",
    )
    .unwrap();
    expect_error(&s, "ostree-booted");
    std::fs::remove_file(s.run().join("ostree-booted")).unwrap();

    std::fs::create_dir_all(s.run().join("ostree")).unwrap();
    std::fs::write(
        s.run().join("ostree/staged-deployment"),
        b"{\"target\": \"json is not gvariant\"}",
    )
    .unwrap();
    expect_error(&s, "staged-deployment");
    std::fs::remove_file(s.run().join("ostree/staged-deployment")).unwrap();

    let origin = std::fs::read_dir(s.path().join("ostree/deploy/fx/deploy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "origin"))
        .unwrap();
    std::fs::write(&origin, b"\x01\x02 not a key file\n").unwrap();
    expect_error(&s, "origin");

    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fastswitch"))
        .args(["status", "--sysroot"])
        .arg(empty.path())
        .args(["--run-dir"])
        .arg(empty.path())
        .output()
        .unwrap();
    // Not an ostree host: refused (6), as the exit-code table says.
    assert_eq!(out.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an ostree sysroot"));
}
