//! postgres: dump
