//! postgres: connection
