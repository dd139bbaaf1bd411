//! A minimal HTTP/1.1 webhook listener on 127.0.0.1 for the alert tests: records every request
//! (method, path, headers, body) and answers 200 — or never, to test a sink that hangs.

use super::daemon::wait_for;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request the listener received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A minimal HTTP/1.1 listener on 127.0.0.1: records every request and answers 200 (or never).
pub struct Listener {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Every accepted connection, shut down when the listener goes (no keep-alive survivors).
    streams: Arc<Mutex<Vec<TcpStream>>>,
}

impl Listener {
    /// Listens on `port` (0: any free port; `port` then tells which).
    pub fn start(port: u16, answer: bool) -> Listener {
        // Port 0: the kernel picks a free one (no race with other tests for a "free" port).
        let socket = TcpListener::bind(("127.0.0.1", port)).expect("bind the listener");
        let port = socket.local_addr().expect("the listener's address").port();
        socket.set_nonblocking(true).unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let received = received.clone();
            let stop = stop.clone();
            let streams = streams.clone();
            std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match socket.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            streams.lock().unwrap().push(stream.try_clone().unwrap());
                            let received = received.clone();
                            if answer {
                                std::thread::spawn(move || serve(stream, &received, true));
                            } else {
                                // Read the request, then hold the connection open: no answer ever.
                                let clone = stream.try_clone().unwrap();
                                std::thread::spawn(move || serve(clone, &received, false));
                                held.push(stream);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        Listener {
            port,
            received,
            stop,
            thread: Some(thread),
            streams,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Requests to `path` carrying event `event`.
    pub fn events(&self, path: &str, event: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path && r.json()["event"] == event)
            .collect()
    }

    pub fn wait_event(&self, path: &str, event: &str, n: usize) -> Vec<Received> {
        wait_for(
            Duration::from_secs(60),
            &format!("{n} {event} at {path}"),
            || {
                let got = self.events(path, event);
                (got.len() >= n).then_some(got)
            },
        )
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>, answer: bool) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        received.lock().unwrap().push(Received {
            method,
            path,
            headers,
            body,
        });
        if !answer {
            // Never answer: keep the connection until the client gives up.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
            return;
        }
        let mut w = &stream;
        if w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}
