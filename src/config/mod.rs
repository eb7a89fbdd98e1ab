//! experiments.toml: the typed schema, loading with source spans, validation and matrix expansion.
