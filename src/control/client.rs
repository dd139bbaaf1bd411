//! The client side: connect, handshake, one request at a time, events.

use crate::protocol::{ErrorBody, Event, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach bdc-backupd at {path}: {source}")]
    Connect { path: String, #[source] source: std::io::Error },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{0}")]
    Daemon(ErrorBody),
}

pub struct Client {}

impl Client {
    pub async fn connect(_path: &std::path::Path) -> Result<Client, ClientError> {
        todo!()
    }
    pub async fn request(&mut self, _request: &Request) -> Result<Response, ClientError> {
        todo!()
    }
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
        todo!()
    }
}
