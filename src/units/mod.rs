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

pub use changes::{
    diff_units, diff_units_in, unit_pattern_matches, Dependency, FileChange, UnitChange,
    UnitFileChange, UnitFlags,
};
pub use compare::{compare_units, Change, KeyChange, UnitComparison};
pub use parse::{
    load_unit, LoadedUnit, ParseError, Unit, UnitLookup, DEPLOYMENT_UNIT_DIRS, HOST_UNIT_DIRS,
};
