//! The executor: walks a [`crate::plan::Plan`], journals every step under `<run>/fastswitch`,
//! and returns a typed [`report::Report`]. All side effects go through [`crate::system`].

pub mod etc_apply;
pub mod journal;
pub mod kexec;
pub mod live;
pub(crate) mod prepare;
pub mod recover;
pub mod report;
pub mod unit_jobs;
