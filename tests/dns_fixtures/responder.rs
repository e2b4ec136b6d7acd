//! Scripted DNS servers on loopback threads, for what a real server will not do on request:
//! SERVFAIL, silence, truncation with chosen contents, forged replies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, ResponseCode};

/// What a UDP handler gets: the server socket, the client's address and its query.
pub type UdpHandler = Box<dyn FnMut(&UdpSocket, SocketAddr, &Message) + Send>;
/// A TCP handler maps a query to the reply.
pub type TcpHandler = Box<dyn FnMut(&Message) -> Message + Send>;

/// A running scripted server; stopped and joined on drop.
pub struct Responder {
    pub address: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Responder {
    /// A UDP server on `ip`, any free port.
    pub fn udp(ip: &str, handler: UdpHandler) -> Responder {
        let socket = UdpSocket::bind((ip, 0)).expect("bind responder UDP socket");
        let mut responder = Responder::empty(socket.local_addr().unwrap());
        responder.serve_udp(socket, handler);
        responder
    }

    /// A UDP and a TCP server on the same port of `ip`.
    pub fn udp_and_tcp(ip: &str, udp: UdpHandler, tcp: TcpHandler) -> Responder {
        for _ in 0..20 {
            let socket = UdpSocket::bind((ip, 0)).expect("bind responder UDP socket");
            let address = socket.local_addr().unwrap();
            let Ok(listener) = TcpListener::bind(address) else {
                continue;
            };
            let mut responder = Responder::empty(address);
            responder.serve_udp(socket, udp);
            responder.serve_tcp(listener, tcp);
            return responder;
        }
        panic!("no port free for both UDP and TCP on {ip}");
    }

    /// A UDP port that receives queries and never answers.
    pub fn silent(ip: &str) -> Responder {
        Responder::udp(ip, Box::new(|_, _, _| {}))
    }

    /// Queries received over UDP, once the count has stopped moving: on a loaded machine the
    /// responder thread may still be reading datagrams the resolver sent long ago.
    pub fn udp_queries(&self) -> usize {
        settled(&self.udp_queries)
    }

    pub fn tcp_queries(&self) -> usize {
        settled(&self.tcp_queries)
    }

    fn empty(address: SocketAddr) -> Responder {
        Responder {
            address,
            udp_queries: Arc::new(AtomicUsize::new(0)),
            tcp_queries: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    fn serve_udp(&mut self, socket: UdpSocket, mut handler: UdpHandler) {
        let stop = Arc::clone(&self.stop);
        let count = Arc::clone(&self.udp_queries);
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        self.threads.push(std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                let Ok((len, from)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                handler(&socket, from, &query);
            }
        }));
    }

    fn serve_tcp(&mut self, listener: TcpListener, mut handler: TcpHandler) {
        let stop = Arc::clone(&self.stop);
        let count = Arc::clone(&self.tcp_queries);
        listener.set_nonblocking(true).unwrap();
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        answer_tcp_connection(stream, &mut handler, &count);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn answer_tcp_connection(mut stream: TcpStream, handler: &mut TcpHandler, count: &AtomicUsize) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    loop {
        let mut prefix = [0u8; 2];
        if stream.read_exact(&mut prefix).is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        if stream.read_exact(&mut query).is_err() {
            return;
        }
        let Ok(query) = Message::from_vec(&query) else {
            return;
        };
        count.fetch_add(1, Ordering::SeqCst);
        let reply = handler(&query).to_vec().unwrap();
        let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&reply);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// A reply to `query` with its ID and question, RD copied, RA set, and `code`.
pub fn reply_to(query: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.queries = query.queries.clone();
    reply
}

/// The counter's value once it has not changed for 300 ms (at most 5 s of waiting).
fn settled(counter: &AtomicUsize) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = counter.load(Ordering::SeqCst);
    let mut stable_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = counter.load(Ordering::SeqCst);
        if now != last {
            last = now;
            stable_since = std::time::Instant::now();
        } else if stable_since.elapsed() >= Duration::from_millis(300) {
            break;
        }
    }
    last
}
