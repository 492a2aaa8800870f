//! A scriptable DNS server on 127.0.0.1, answering over UDP and TCP on the same port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::net::{AbortOnDrop, MAX_LIVE_CONNECTIONS};

/// TTL of every record served.
pub const TTL: u32 = 1;
/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most queries answered on one TCP connection.
const TCP_MAX_QUERIES: usize = 64;
/// Most delayed UDP answers pending at once; further delayed queries are dropped.
const MAX_PENDING_DELAYED: usize = 1024;
/// Attempts to find a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 20;

/// How the server treats a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// NOERROR with these A records (AAAA and other types: NOERROR, no records).
    Answer(Vec<Ipv4Addr>),
    /// SERVFAIL, no records.
    ServFail,
    /// NXDOMAIN, no records (SOA in authority, negative TTL 1 s).
    NxDomain,
    /// Waits, then behaves as the inner behaviour. Other queries are not held up.
    Delay(Duration, Box<Behavior>),
    /// No answer at all (UDP: nothing sent; TCP: the connection stays open, unanswered).
    Drop,
    /// UDP: NOERROR with TC=1 and no records; TCP: the records (a client must retry over TCP).
    Truncate(Vec<Ipv4Addr>),
}

/// Which transport a query came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One logged query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryLog {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: RecordType,
    pub transport: Transport,
}

struct State {
    names: HashMap<String, Behavior>,
    default: Behavior,
    log: Vec<QueryLog>,
}

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The DNS server. Dropping it aborts all its tasks.
pub struct DnsServer {
    /// `127.0.0.1:<port>`, for UDP and TCP alike.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _udp: AbortOnDrop,
    _tcp: AbortOnDrop,
}

/// Lowercase, trailing dot removed.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts a server on `127.0.0.1:<ephemeral>`; unknown names get NXDOMAIN until
    /// [`DnsServer::set_default`] says otherwise.
    pub async fn start() -> DnsServer {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local addr");
        let shared = Arc::new(Shared {
            state: Mutex::new(State { names: HashMap::new(), default: Behavior::NxDomain, log: Vec::new() }),
        });
        let udp_task = tokio::spawn(udp_loop(Arc::new(udp), shared.clone()));
        let tcp_task = tokio::spawn(tcp_loop(tcp, shared.clone()));
        DnsServer { addr, shared, _udp: AbortOnDrop(udp_task), _tcp: AbortOnDrop(tcp_task) }
    }

    /// Sets the behaviour for `name` (case-insensitive, trailing dot ignored).
    pub fn set(&self, name: &str, behavior: Behavior) {
        self.shared.lock().names.insert(normalize(name), behavior);
    }

    /// Sets the behaviour for names without their own.
    pub fn set_default(&self, behavior: Behavior) {
        self.shared.lock().default = behavior;
    }

    /// `(name, transport)` of every query so far (name lowercase, no trailing dot).
    pub fn queries(&self) -> Vec<(String, Transport)> {
        self.shared.lock().log.iter().map(|q| (q.name.clone(), q.transport)).collect()
    }

    /// Every query so far, with its type.
    pub fn query_log(&self) -> Vec<QueryLog> {
        self.shared.lock().log.clone()
    }

    /// Forgets the queries logged so far.
    pub fn clear_queries(&self) {
        self.shared.lock().log.clear();
    }

    /// A `resolv.conf` in `dir` naming this server (see [`write_resolv_conf`]).
    pub fn write_resolv_conf(&self, dir: &Path) -> PathBuf {
        write_resolv_conf(dir, &[self.addr])
    }
}

/// Writes `dir/resolv.conf` with one `nameserver <ip>:<port>` line per server (the `ip:port`
/// form is tickguard's documented extension, since tests cannot use port 53).
pub fn write_resolv_conf(dir: &Path, servers: &[SocketAddr]) -> PathBuf {
    let path = dir.join("resolv.conf");
    let text: String = servers.iter().map(|s| format!("nameserver {}:{}\n", s.ip(), s.port())).collect();
    std::fs::write(&path, text).expect("write resolv.conf");
    path
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..BIND_ATTEMPTS {
        let udp =
            UdpSocket::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await.expect("bind udp 127.0.0.1:0");
        let port = udp.local_addr().expect("udp local addr").port();
        if let Ok(tcp) = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// What to send back, decided after any delay.
enum Reply {
    None,
    Bytes(Vec<u8>),
}

/// Parses a query, logs it, and works out the reply (sleeping for `Delay`).
async fn answer(shared: &Shared, packet: &[u8], transport: Transport) -> Reply {
    let Ok(req) = Message::from_vec(packet) else {
        return Reply::None;
    };
    if req.metadata.message_type != MessageType::Query {
        return Reply::None;
    }
    let Some(q) = req.queries.first() else {
        return reply_bytes(&error_response(&req, ResponseCode::FormErr));
    };
    let name = normalize(&q.name().to_ascii());
    let qtype = q.query_type();
    let mut behavior = {
        let mut st = shared.lock();
        st.log.push(QueryLog { name: name.clone(), qtype, transport });
        st.names.get(&name).cloned().unwrap_or_else(|| st.default.clone())
    };
    // Bounded: each step unwraps one level of a finite structure.
    while let Behavior::Delay(d, inner) = behavior {
        tokio::time::sleep(d).await;
        behavior = *inner;
    }
    let resp = match behavior {
        Behavior::Delay(..) => unreachable!("unwrapped above"),
        Behavior::Drop => return Reply::None,
        Behavior::ServFail => error_response(&req, ResponseCode::ServFail),
        Behavior::NxDomain => {
            let mut m = error_response(&req, ResponseCode::NXDomain);
            m.add_authority(soa_for(q.name()));
            m
        }
        Behavior::Answer(addrs) => records_response(&req, q.name(), qtype, &addrs),
        Behavior::Truncate(addrs) => match transport {
            Transport::Udp => {
                let mut m = base_response(&req);
                m.metadata.truncation = true;
                m
            }
            Transport::Tcp => records_response(&req, q.name(), qtype, &addrs),
        },
    };
    reply_bytes(&resp)
}

fn reply_bytes(m: &Message) -> Reply {
    match m.to_vec() {
        Ok(b) => Reply::Bytes(b),
        Err(e) => {
            log::warn!("test DNS server: cannot encode answer: {e}");
            Reply::None
        }
    }
}

fn base_response(req: &Message) -> Message {
    let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    m.metadata = Metadata::response_from_request(&req.metadata);
    m.metadata.authoritative = true;
    m.metadata.recursion_available = true;
    m.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        m.set_edns(edns);
    }
    m
}

fn error_response(req: &Message, code: ResponseCode) -> Message {
    let mut m = base_response(req);
    m.metadata.response_code = code;
    m
}

fn records_response(req: &Message, name: &Name, qtype: RecordType, addrs: &[Ipv4Addr]) -> Message {
    let mut m = base_response(req);
    if qtype == RecordType::A {
        for a in addrs {
            m.add_answer(Record::from_rdata(name.clone(), TTL, RData::A(A(*a))));
        }
    }
    if m.answers.is_empty() {
        // NODATA: SOA in authority so the negative answer is cached for TTL seconds at most.
        m.add_authority(soa_for(name));
    }
    m
}

fn soa_for(name: &Name) -> Record {
    let zone = name.base_name();
    let mname = Name::from_ascii("ns.test.").unwrap_or_else(|_| Name::root());
    let rname = Name::from_ascii("hostmaster.test.").unwrap_or_else(|_| Name::root());
    let soa = SOA::new(mname, rname, 1, 60, 60, 60, TTL);
    Record::from_rdata(zone, TTL, RData::SOA(soa))
}

async fn udp_loop(sock: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    let mut pending: JoinSet<()> = JoinSet::new();
    loop {
        while pending.try_join_next().is_some() {}
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // e.g. ICMP port unreachable reported on a later recv: keep serving.
                log::debug!("test DNS server: udp recv error {e}");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        if pending.len() >= MAX_PENDING_DELAYED {
            continue;
        }
        let packet = buf[..n].to_vec();
        let (sock, shared) = (sock.clone(), shared.clone());
        pending.spawn(async move {
            if let Reply::Bytes(b) = answer(&shared, &packet, Transport::Udp).await {
                let _ = sock.send_to(&b, peer).await;
            }
        });
    }
}

async fn tcp_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns: JoinSet<()> = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                log::debug!("test DNS server: tcp accept error {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if conns.len() >= MAX_LIVE_CONNECTIONS {
            continue;
        }
        conns.spawn(tcp_conn(tcp, shared.clone()));
    }
}

async fn tcp_conn(mut tcp: TcpStream, shared: Arc<Shared>) {
    for _ in 0..TCP_MAX_QUERIES {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, tcp.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, tcp.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        // Queries on one connection are answered in order (enough for a stub resolver).
        if let Reply::Bytes(b) = answer(&shared, &packet, Transport::Tcp).await {
            let Ok(n) = u16::try_from(b.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(b.len() + 2);
            framed.extend_from_slice(&n.to_be_bytes());
            framed.extend_from_slice(&b);
            if tcp.write_all(&framed).await.is_err() {
                return;
            }
        }
    }
}
