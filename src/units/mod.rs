//! systemd unit files: parse them, compare two versions of one unit, and list the unit changes
//! between two deployments.
//!
//! Everything here is pure over file trees: [`parse`] reads unit text and loads a unit with its
//! drop-ins from one tree, [`compare`] decides restart/reload/nothing for one unit, and
//! [`changes`] lists the unit-level changes (including enablement) between two deployment trees
//! (the units part of [`crate::diff`]).

pub mod changes;
pub mod compare;
pub mod parse;

pub(crate) use changes::{unit_pattern_matches, UnitChange, UnitFileChange, UnitFlags};
pub(crate) use compare::UnitComparison;
