//! The client side: connect, handshake, one request at a time, events.
