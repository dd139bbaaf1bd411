//! postgres: restore
