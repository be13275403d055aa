//! Video output.
