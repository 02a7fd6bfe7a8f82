//! Firedoor built-in VMM (work in progress).
