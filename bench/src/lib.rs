//! flowgate benchmark harness.
