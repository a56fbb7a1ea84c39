//! Running code inside another network namespace.
