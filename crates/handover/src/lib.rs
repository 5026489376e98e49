//! handover: zero-downtime restarts for Linux network servers.
#![deny(missing_docs)]
