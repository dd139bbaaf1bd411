//! The PostgreSQL side: the control connection ([`connection`]), finding the client binaries that
//! match the server ([`binaries`]), `postgres-dump` jobs ([`dump`]) and logical restores ([`restore`]).

pub mod binaries;
pub mod connection;
pub mod dump;
pub mod restore;
