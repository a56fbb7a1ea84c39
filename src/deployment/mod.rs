//! Reading deployment files: raw JSON with positions, then validation into `model`.
