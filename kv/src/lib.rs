//! Perch's embedded key-value store (work in progress: see issue 3).
#![deny(missing_docs)]
