//! Runnable Shoal programs live beside this file, one topic per file: see `hello.rs`.
