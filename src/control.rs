//! The control socket: the daemon-side server ([`server`]), who may do what ([`auth`]), and the
//! client the ctl and the tests use ([`client`]). Wire types are in [`crate::protocol`].

pub mod auth;
pub mod client;
pub mod server;
