//! postgres: binaries
