//! The daemon side of the socket: bind (stale-socket probe, mode 0660), accept, handshake,
//! line cap, authorization, audit, dispatch to a [`Handler`], event streaming.

use crate::control::auth::Peer;
use crate::protocol::{Event, Reply, Request};
use std::future::Future;

/// What the daemon implements for the server.
pub trait Handler: Send + Sync + 'static {
    /// Answers one authorized request.
    fn handle(&self, peer: &Peer, request: Request) -> impl Future<Output = Reply> + Send;
    /// Events for `follow` and `run --wait`.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event>;
    /// Records a request (allowed or denied) in the audit trail.
    fn audit(&self, peer: &Peer, request: &Request, allowed: bool, detail: &str) -> impl Future<Output = ()> + Send;
}
