//! Parsers and the control protocol of the `handover` command, as a library
//! so that fuzz targets and tests can reach them. The command itself is
//! `src/main.rs`.
#![deny(missing_docs)]

pub mod control;
pub mod duration;
