//! systemd unit files: parse them, compare two versions, and diff the units of two deployments.
//!
//! Everything here is pure over file trees: [`parse`] reads unit text and loads a unit with its
//! drop-ins from one tree, [`compare`] decides restart/reload/nothing for one unit, and [`diff`]
//! lists the unit-level changes (including enablement) between two deployment trees.

pub mod compare;
pub mod diff;
pub mod parse;

pub use compare::{compare_units, Change, KeyChange, UnitComparison};
pub use diff::{
    diff_units, diff_units_in, unit_pattern_matches, Dependency, FileChange, UnitChange,
    UnitFileChange, UnitFlags,
};
pub use parse::{
    load_unit, LoadedUnit, ParseError, Unit, UnitLookup, DEPLOYMENT_UNIT_DIRS, HOST_UNIT_DIRS,
};
