//! Every side effect fastswitch has, behind narrow interfaces: mounts, systemd over D-Bus,
//! kexec, capabilities, the run lock. The pure modules never call into here; the executor is
//! handed these explicitly.

pub mod composefs;
pub mod files;
pub mod kexec;
pub mod live_tree;
pub mod lock;
pub mod mounts;
pub mod ostree_state;
pub mod privileges;
pub mod proc_text;
pub mod secure_write;
pub mod systemd;
pub mod tools;
