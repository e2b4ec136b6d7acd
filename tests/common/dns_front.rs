//! A scripted DNS server in front of the test's unbound, for what a well-behaved server will
//! not do on request: truncate a UDP answer after some of its records, race forged datagrams
//! against the genuine reply, answer late or not at all.
//!
//! Each UDP query goes to a script on its own thread; the script decides what the client gets
//! and may fetch the genuine answer, which the front asks of unbound over TCP. TCP queries are
//! always relayed. Every question is recorded with its transport.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

/// The largest UDP reply the front sends; the resolver under test advertises this EDNS size.
const UDP_PAYLOAD: usize = 1232;

/// A question the front received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenQuery {
    pub over_tcp: bool,
    /// Lowercase, with the trailing dot.
    pub name: String,
    pub record_type: RecordType,
}

/// What a UDP script gets for one query.
pub struct UdpQuery<'a> {
    pub socket: &'a UdpSocket,
    pub client: SocketAddr,
    pub query: &'a Message,
    upstream: SocketAddr,
}

impl UdpQuery<'_> {
    /// The question's name, lowercase with the trailing dot.
    pub fn name(&self) -> String {
        question(self.query).0
    }

    pub fn record_type(&self) -> RecordType {
        question(self.query).1
    }

    /// The genuine reply: the query relayed to unbound over TCP, so never truncated there.
    pub fn genuine(&self) -> Message {
        let bytes = ask_over_tcp(self.upstream, &self.query.to_vec().expect("query encodes"))
            .unwrap_or_else(|e| panic!("unbound did not answer over TCP: {e}"));
        Message::from_vec(&bytes).expect("unbound's reply decodes")
    }

    /// Sends `message` to the client from the front's own address and port; an answer too
    /// large for UDP goes out as a bare TC=1 reply, as a real server would send it.
    pub fn reply(&self, message: &Message) {
        let mut bytes = message.to_vec().expect("reply encodes");
        if bytes.len() > UDP_PAYLOAD {
            let mut truncated = message.clone();
            truncated.metadata.truncation = true;
            truncated.answers.clear();
            truncated.authorities.clear();
            truncated.additionals.clear();
            bytes = truncated.to_vec().expect("reply encodes");
        }
        let _ = self.socket.send_to(&bytes, self.client);
    }

    /// Relays the genuine reply.
    pub fn relay(&self) {
        self.reply(&self.genuine());
    }
}

/// Decides what the client gets for one UDP query; sending nothing is a timeout.
pub type UdpScript = Arc<dyn Fn(&UdpQuery<'_>) + Send + Sync>;

/// A running front on one address (UDP and TCP, same port); stopped and joined on drop.
pub struct DnsFront {
    address: SocketAddr,
    /// The serving threads report each question here; `seen` collects them.
    reports: Sender<SeenQuery>,
    incoming: Receiver<SeenQuery>,
    seen: RefCell<Vec<SeenQuery>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl DnsFront {
    /// Serves on `address` (port 0: any free port), running `script` for every UDP query and
    /// relaying TCP queries to `upstream`.
    pub fn start(address: SocketAddr, upstream: SocketAddr, script: UdpScript) -> DnsFront {
        let (udp, tcp) = bind_both(address);
        let address = udp.local_addr().expect("front address");
        let (reports, incoming) = channel();
        let mut front = DnsFront {
            address,
            reports,
            incoming,
            seen: RefCell::default(),
            stop: Arc::default(),
            threads: Vec::new(),
        };
        front.serve_udp(udp, upstream, script);
        front.serve_tcp(tcp, upstream);
        front
    }

    /// A script relaying every query unchanged.
    pub fn relay_all() -> UdpScript {
        Arc::new(|query: &UdpQuery<'_>| query.relay())
    }

    /// Where to point `dns.nameservers`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The questions received so far.
    pub fn seen(&self) -> Vec<SeenQuery> {
        let mut seen = self.seen.borrow_mut();
        seen.extend(self.incoming.try_iter());
        seen.clone()
    }

    fn serve_udp(&mut self, socket: UdpSocket, upstream: SocketAddr, script: UdpScript) {
        let stop = Arc::clone(&self.stop);
        let seen = self.reports.clone();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .expect("read timeout");
        self.threads.push(std::thread::spawn(move || {
            let socket = Arc::new(socket);
            let mut buffer = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                let Ok((len, client)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                record(&seen, &query, false);
                let socket = Arc::clone(&socket);
                let script = Arc::clone(&script);
                std::thread::spawn(move || {
                    script(&UdpQuery {
                        socket: &socket,
                        client,
                        query: &query,
                        upstream,
                    })
                });
            }
        }));
    }

    fn serve_tcp(&mut self, listener: TcpListener, upstream: SocketAddr) {
        let stop = Arc::clone(&self.stop);
        let seen = self.reports.clone();
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        self.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let seen = seen.clone();
                        std::thread::spawn(move || relay_tcp(stream, upstream, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }
}

impl Drop for DnsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A UDP socket and a TCP listener on the same address and port.
fn bind_both(address: SocketAddr) -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind(address)
            .unwrap_or_else(|e| panic!("cannot bind the DNS front to UDP {address}: {e}"));
        let bound = udp.local_addr().expect("front address");
        match TcpListener::bind(bound) {
            Ok(tcp) => return (udp, tcp),
            Err(_) if address.port() == 0 => continue,
            Err(e) => panic!("cannot bind the DNS front to TCP {address}: {e}"),
        }
    }
    panic!("no port free for both UDP and TCP on {}", address.ip());
}

fn question(message: &Message) -> (String, RecordType) {
    let question = &message.queries[0];
    (
        question.name().to_ascii().to_ascii_lowercase(),
        question.query_type(),
    )
}

fn record(seen: &Sender<SeenQuery>, query: &Message, over_tcp: bool) {
    if query.queries.is_empty() {
        return;
    }
    let (name, record_type) = question(query);
    let _ = seen.send(SeenQuery {
        over_tcp,
        name,
        record_type,
    });
}

fn relay_tcp(mut stream: TcpStream, upstream: SocketAddr, seen: &Sender<SeenQuery>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    while let Ok(query) = read_framed(&mut stream) {
        if let Ok(message) = Message::from_vec(&query) {
            record(seen, &message, true);
        }
        let Ok(reply) = ask_over_tcp(upstream, &query) else {
            return;
        };
        if write_framed(&mut stream, &reply).is_err() {
            return;
        }
    }
}

fn ask_over_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write_framed(&mut stream, query)?;
    read_framed(&mut stream)
}

fn read_framed(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix)?;
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut message)?;
    Ok(message)
}

fn write_framed(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<()> {
    let mut framed = (message.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(message);
    stream.write_all(&framed)
}
