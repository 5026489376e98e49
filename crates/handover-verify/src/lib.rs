//! Load generator and reload verifier.
#![deny(missing_docs)]
