//! Cross-crate tests live in `tests/`; shared helpers in `tests/support`.
