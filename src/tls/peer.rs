//! TLS between the peers of one cluster: mutual, both sides checked against the
//! cluster's CA. A peer presents one certificate as server and as client
//! (`flowd cert issue NAME --cluster ID --host IP`): its subject's organization names
//! the cluster, its IP addresses are the ones the peer listens on. What a peer is comes
//! from its certificate, never from what it sends: a connection without a certificate
//! of the cluster CA, or with one of another cluster, ends in the handshake; the
//! address a peer then gives must be one of its certificate's (`cluster::transport`).
//! Reloaded on SIGHUP like a door's certificate.
//!
//! A certificate may name a peer by host name instead (`--host flowd-0.ns.svc.cluster.local`,
//! or a pattern `*.ns.svc.cluster.local`): on Kubernetes a pod's Service has a name
//! before anyone knows its address. Such a name speaks for the address it was last found
//! at, if it is one given for a peer here (`--peer-listen`, `--seeds`: `PeerNames`);
//! whether a certificate names it is webpki's check, as for any server name. A pod that
//! restarts comes back at another address: a certificate that names none of the names
//! found at the address it came from has the names looked up again, off the caller's
//! thread (`LiveNames`), so the peer's next try, a moment later, is taken.
//!
//! The same certificates carry relays: a peer that passes a client's request on to
//! the peer leading its partition connects to that peer's client listener offering the
//! ALPN protocol `flowd-relay/1` (`RELAY_ALPN`), and the listener, seeing it in the
//! ClientHello, shakes hands as the peer port does (`relay_server`, `relay_client`): both
//! certificates the cluster CA's, naming the cluster. Only such a connection may vouch
//! for a client the relaying peer checked (VOUCH, `protocol`), so no token travels.

use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, ServerConfig, ServerConnection,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::duplex::Duplex;
use super::server::{ServerFiles, ServerTls};
use super::{Subject, TlsError};

/// The PEM files of a peer's TLS (`[cluster] tls_cert`, `tls_key`, `tls_ca`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cluster's CA: every peer's certificate is signed by it.
    pub ca: PathBuf,
}

/// The host names given for peers (`--peer-listen`, `--seeds`), each with the address
/// it was last found at: a peer certificate naming one speaks for that address
/// (`tls::peer`'s doc; `LiveNames` looks them up again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerNames(Vec<(String, IpAddr)>);

impl PeerNames {
    /// `host` was found at `ip` (a name given twice is kept once).
    pub fn add(&mut self, host: &str, ip: IpAddr) {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !self.0.iter().any(|(h, i)| *h == host && *i == ip) {
            self.0.push((host, ip));
        }
    }

    /// The names found at `ip`.
    fn of(&self, ip: IpAddr) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(_, at)| *at == ip)
            .map(|(host, _)| host.as_str())
    }

    /// Each name once.
    fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.0.iter().map(|(host, _)| host.clone()).collect();
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// `host` is now found at `ips` (and nowhere else): where it was before, if that
    /// changed.
    fn moved(&mut self, host: &str, ips: &[IpAddr]) -> Option<Vec<IpAddr>> {
        let before: Vec<IpAddr> = self
            .0
            .iter()
            .filter(|(h, _)| h == host)
            .map(|(_, ip)| *ip)
            .collect();
        if before.len() == ips.len() && ips.iter().all(|ip| before.contains(ip)) {
            return None;
        }
        self.0.retain(|(h, _)| h != host);
        for ip in ips {
            self.add(host, *ip);
        }
        Some(before)
    }
}

/// What looks a host name up: its addresses, or none if it is not found.
pub type Resolve = Arc<dyn Fn(&str) -> Vec<IpAddr> + Send + Sync>;

/// The system's resolver (`getaddrinfo`, so `/etc/hosts` and DNS).
pub fn system_resolver() -> Resolve {
    Arc::new(|host: &str| {
        use std::net::ToSocketAddrs;
        (host, 0)
            .to_socket_addrs()
            .map(|found| found.map(|addr| addr.ip()).collect())
            .unwrap_or_default()
    })
}

/// The least time between two lookups of the names: a peer redialing in a loop, or one
/// that is simply not named here, costs the resolver one lookup a second at most.
const LOOK_AGAIN_EVERY: Duration = Duration::from_secs(1);

/// The peers' names as last found, looked up again on request by a thread of their own
/// (the lookup blocks, and checks run on shards too), never more than once every
/// `LOOK_AGAIN_EVERY`; requests while one is due are one request. The thread waits on
/// a channel (no timer), and ends when the names are dropped.
struct LiveNames {
    now: RwLock<PeerNames>,
    /// Wakes the thread; `None` when there is no name to look up.
    again: Option<SyncSender<()>>,
}

impl std::fmt::Debug for LiveNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LiveNames").field(&*self.now()).finish()
    }
}

impl LiveNames {
    fn start(names: PeerNames, resolve: Resolve) -> Arc<LiveNames> {
        // The thread upgrades `weak` only once woken, which only the names made here do.
        Arc::new_cyclic(|weak: &Weak<LiveNames>| {
            let again = (!names.0.is_empty())
                .then(|| {
                    let (wake, woken) = std::sync::mpsc::sync_channel(1);
                    let weak = weak.clone();
                    std::thread::Builder::new()
                        .name("flowd-peer-names".into())
                        .spawn(move || look_up_when_asked(weak, woken, resolve))
                        .map(|_| wake)
                        .map_err(|e| {
                            tracing::warn!(
                                "peer names will not be looked up again (a peer that comes back at another address is refused until this one restarts): no thread: {e}"
                            )
                        })
                        .ok()
                })
                .flatten();
            LiveNames {
                now: RwLock::new(names),
                again,
            }
        })
    }

    fn now(&self) -> std::sync::RwLockReadGuard<'_, PeerNames> {
        self.now.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks for the names to be looked up again; returns at once.
    fn look_again(&self) {
        if let Some(wake) = &self.again {
            // Full: a lookup is asked for already. Disconnected cannot be while the
            // names live: the thread ends only with them.
            let _ = wake.try_send(());
        }
    }

    /// What `leaf` names of `ip` (`name_for`), the names looked up again if nothing.
    fn name_for(&self, leaf: &CertificateDer<'_>, ip: IpAddr) -> Option<ServerName<'static>> {
        let name = name_for(&self.now(), leaf, ip);
        if name.is_none() {
            self.look_again();
        }
        name
    }
}

/// The thread of `LiveNames`: one lookup of every name per request, then a pause.
fn look_up_when_asked(names: Weak<LiveNames>, woken: Receiver<()>, resolve: Resolve) {
    while woken.recv().is_ok() {
        let Some(live) = names.upgrade() else { return };
        let hosts = live.now().hosts();
        for host in hosts {
            let ips = resolve(&host);
            // A name not found now (a pod between two lives) keeps where it was.
            if ips.is_empty() {
                continue;
            }
            let moved = live
                .now
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .moved(&host, &ips);
            if let Some(before) = moved {
                tracing::info!("the peer name {host} is now found at {ips:?} (was {before:?})");
            }
        }
        drop(live);
        std::thread::sleep(LOOK_AGAIN_EVERY);
    }
}

/// What the certificate `leaf` names of `ip`: the address itself, else the first host
/// name found at `ip` that it names; `None` if neither. The one rule both sides keep
/// (`speaks_for` on the listening side, `AddressOrName` on the dialing side).
fn name_for(names: &PeerNames, leaf: &CertificateDer<'_>, ip: IpAddr) -> Option<ServerName<'static>> {
    let cert = rustls::server::ParsedCertificate::try_from(leaf).ok()?;
    std::iter::once(ServerName::IpAddress(ip.into()))
        .chain(
            names
                .of(ip)
                .filter_map(|host| ServerName::try_from(host.to_owned()).ok()),
        )
        .find(|name| rustls::client::verify_server_name(&cert, name).is_ok())
}

/// Whether the certificate `leaf` names `ip`, or a host name found at `ip`.
fn speaks_for(names: &PeerNames, leaf: &CertificateDer<'_>, ip: IpAddr) -> bool {
    name_for(names, leaf, ip).is_some()
}

/// A peer's certificate, checked in the handshake: the cluster CA's, naming this cluster.
#[derive(Debug)]
pub struct Certified {
    pub subject: Subject,
    leaf: CertificateDer<'static>,
}

/// The dialing side's check of the peer it reached at an IP address: webpki's, for
/// that address or, failing that, for a host name found at it (`PeerNames`).
#[derive(Debug)]
struct AddressOrName {
    webpki: Arc<WebPkiServerVerifier>,
    names: Arc<LiveNames>,
}

impl ServerCertVerifier for AddressOrName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verify = |name: &ServerName<'_>| {
            self.webpki
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        };
        let first = verify(server_name);
        let (
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )),
            ServerName::IpAddress(ip),
        ) = (&first, server_name)
        else {
            return first;
        };
        // The chain is checked again, for the name the certificate does carry.
        match self.names.name_for(end_entity, IpAddr::from(*ip)) {
            Some(name) => verify(&name),
            None => first,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The ALPN protocol a relaying peer offers a client listener (`tls::peer`'s doc).
pub const RELAY_ALPN: &[u8] = b"flowd-relay/1";

/// A peer's TLS: what it presents, whom it admits.
#[derive(Debug)]
pub struct PeerTls {
    cluster: String,
    /// The address this peer listens on, which its certificate names.
    me: IpAddr,
    names: Arc<LiveNames>,
    files: PeerFiles,
    server: ServerTls,
    client: Arc<ClientConfig>,
    /// The server's and the client's settings with `RELAY_ALPN`, for relays.
    relay_server: Arc<ServerConfig>,
    relay_client: Arc<ClientConfig>,
}

impl PeerTls {
    /// Reads the files for a peer of `cluster` listening on `me`: its own certificate
    /// must name both (the others check them), `me` by address or by a name in `names`.
    pub fn load(files: PeerFiles, cluster: &str, me: IpAddr, names: PeerNames) -> Result<PeerTls, TlsError> {
        PeerTls::load_resolving(files, cluster, me, names, system_resolver())
    }

    /// `load`, with the names looked up again by `resolve`.
    pub fn load_resolving(
        files: PeerFiles,
        cluster: &str,
        me: IpAddr,
        names: PeerNames,
        resolve: Resolve,
    ) -> Result<PeerTls, TlsError> {
        check_own(&files, cluster, me, &names)?;
        let names = LiveNames::start(names, resolve);
        let server = ServerTls::load(ServerFiles {
            cert: files.cert.clone(),
            key: files.key.clone(),
            client_ca: Some(files.ca.clone()),
            required: true,
        })?;
        let roots = super::roots(&files.ca, "cluster CA")?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), super::provider())
            .build()
            .map_err(|e| TlsError::Config(format!("the cluster CA {}: {e}", files.ca.display())))?;
        let client = ClientConfig::builder_with_provider(super::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AddressOrName {
                webpki,
                names: Arc::clone(&names),
            }))
            .with_client_cert_resolver(server.presented());
        let mut relay_server = (*server.config()).clone();
        relay_server.alpn_protocols = vec![RELAY_ALPN.to_vec()];
        let mut relay_client = client.clone();
        relay_client.alpn_protocols = vec![RELAY_ALPN.to_vec()];
        Ok(PeerTls {
            cluster: cluster.to_owned(),
            me,
            names,
            files,
            server,
            client: Arc::new(client),
            relay_server: Arc::new(relay_server),
            relay_client: Arc::new(relay_client),
        })
    }

    /// What a client listener shakes hands with for a relaying peer (whose ClientHello
    /// offers `RELAY_ALPN`): this peer's certificate, and one of the cluster CA required.
    /// The handshake done, `cluster_peer` checks the other's cluster.
    pub fn relay_server(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.relay_server)
    }

    /// What a relaying peer connects to another's client listener with (an async
    /// stream's handshake, `futures_rustls`): its server name is the IP address of the
    /// other's peer port, which the other's certificate names (or a name found there);
    /// then `cluster_peer`.
    pub fn relay_client(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.relay_client)
    }

    /// Who the other side of a relay is, from the certificate chain it presented: a
    /// peer of this cluster, or an error saying whose certificate it is.
    pub fn cluster_peer(&self, chain: &[CertificateDer<'_>]) -> Result<Subject, TlsError> {
        let subject = chain.first().map(super::subject).unwrap_or_default();
        if subject.organization.as_deref() != Some(self.cluster.as_str()) {
            return Err(TlsError::Handshake(format!(
                "its certificate ({}) is for cluster {}, and this peer's cluster is \"{}\": issue it one with flowd cert issue NAME --cluster {} --host IP",
                subject.name.as_deref().unwrap_or("no name"),
                subject
                    .organization
                    .as_deref()
                    .map_or("none (not a peer certificate)".to_owned(), |c| format!("\"{c}\"")),
                self.cluster,
                self.cluster
            )));
        }
        Ok(subject)
    }

    pub fn files(&self) -> &PeerFiles {
        &self.files
    }

    /// Reads the certificate and key again (a renewal): presented from the next
    /// handshake on, as server and as client. One for another cluster or address is
    /// refused, and the old one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        check_own(&self.files, &self.cluster, self.me, &self.names.now())?;
        self.server.reload()
    }

    /// Shakes hands with a peer that connected (within the socket's timeouts): its
    /// certificate must be the cluster CA's and name this cluster.
    pub fn accept(&self, socket: TcpStream) -> Result<(Duplex, Certified), TlsError> {
        let session =
            ServerConnection::new(self.server.config()).map_err(|e| TlsError::Config(e.to_string()))?;
        let duplex = Duplex::handshake(socket, session).map_err(|e| handshake("the connecting peer", e))?;
        let subject = self.of_cluster(&duplex)?;
        let leaf =
            duplex.peer_certificates().into_iter().next().ok_or_else(|| {
                TlsError::Handshake("the connecting peer presented no certificate".to_owned())
            })?;
        Ok((duplex, Certified { subject, leaf }))
    }

    /// Whether the peer that presented `certified` may say it listens at `ip`: its
    /// certificate names `ip`, or a host name last found at `ip` (`PeerNames`). If not,
    /// the names are looked up again for the next time (`LiveNames`).
    pub fn speaks_for(&self, certified: &Certified, ip: IpAddr) -> bool {
        self.names.name_for(&certified.leaf, ip).is_some()
    }

    /// Shakes hands with the peer listening at `ip` (within the socket's timeouts): its
    /// certificate must be the cluster CA's, for `ip` (or a name found at `ip`), and
    /// name this cluster.
    pub fn dial(&self, socket: TcpStream, ip: IpAddr) -> Result<Duplex, TlsError> {
        let session = ClientConnection::new(Arc::clone(&self.client), ServerName::IpAddress(ip.into()))
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let duplex =
            Duplex::handshake(socket, session).map_err(|e| handshake(&format!("the peer at {ip}"), e))?;
        self.of_cluster(&duplex)?;
        Ok(duplex)
    }

    /// The other side's subject, if its certificate names this cluster.
    fn of_cluster(&self, duplex: &Duplex) -> Result<Subject, TlsError> {
        self.cluster_peer(&duplex.peer_certificates())
    }
}

/// This peer's own certificate names its cluster and `me` (or a name found at `me`).
fn check_own(files: &PeerFiles, cluster: &str, me: IpAddr, names: &PeerNames) -> Result<(), TlsError> {
    let chain = super::certificates(&files.cert, "peer certificate")?;
    let subject = super::subject(&chain[0]);
    let host = names.of(me).next().map_or(me.to_string(), str::to_owned);
    let fix = format!("flowd cert issue NAME --cluster {cluster} --host {host} makes one");
    if subject.organization.as_deref() != Some(cluster) {
        return Err(TlsError::Config(format!(
            "the peer certificate {} is for cluster {:?}, and this peer's cluster id is \"{cluster}\": {fix}",
            files.cert.display(),
            subject.organization.as_deref().unwrap_or("(none)")
        )));
    }
    if !speaks_for(names, &chain[0], me) {
        return Err(TlsError::Config(format!(
            "the peer certificate {} is for {}, not for {}, where the other peers reach this one: {fix}",
            files.cert.display(),
            named(&subject),
            names
                .of(me)
                .map(|host| format!("{host} ({me})"))
                .next()
                .unwrap_or(me.to_string())
        )));
    }
    Ok(())
}

/// The addresses and host names a certificate names, for a message.
pub fn named(subject: &Subject) -> String {
    let all: Vec<String> = subject
        .ips
        .iter()
        .map(IpAddr::to_string)
        .chain(subject.hosts.iter().cloned())
        .collect();
    if all.is_empty() {
        "no address or host name".to_owned()
    } else {
        all.join(", ")
    }
}

fn handshake(who: &str, error: std::io::Error) -> TlsError {
    let hint = match error.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            " (no answer in time: is it paused, or not speaking TLS on its peer port?)"
        }
        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
            " (it closed the connection: does its port speak TLS, and does it trust this peer's CA?)"
        }
        _ => "",
    };
    TlsError::Handshake(format!("the TLS handshake with {who} failed: {error}{hint}"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::tls::make;

    /// A CA in `dir` and a peer certificate of it for `cluster` on 127.0.0.1.
    fn files(dir: &std::path::Path, ca: &make::Made, name: &str, cluster: Option<&str>) -> PeerFiles {
        files_for(dir, ca, name, cluster, "127.0.0.1")
    }

    /// As `files`, for the address or host name `host`.
    fn files_for(
        dir: &std::path::Path,
        ca: &make::Made,
        name: &str,
        cluster: Option<&str>,
        host: &str,
    ) -> PeerFiles {
        let leaf = make::issue(&ca.cert_pem, &ca.key_pem, name, &[host.into()], cluster, 1).unwrap();
        let write = |file: String, text: &str| {
            let path = dir.join(file);
            make::write_new(&path, text, 0o600).unwrap();
            path
        };
        PeerFiles {
            cert: write(format!("{name}.pem"), &leaf.cert_pem),
            key: write(format!("{name}.key"), &leaf.key_pem),
            ca: write(format!("{name}-ca.pem"), &ca.cert_pem),
        }
    }

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A peer's TLS that knows no host names.
    fn unnamed(files: PeerFiles, cluster: &str, me: IpAddr) -> Result<PeerTls, TlsError> {
        PeerTls::load(files, cluster, me, PeerNames::default())
    }

    /// Whether a peer with `dialer` gets through to one with `listener`; the error
    /// each side saw otherwise.
    fn meet(listener: &PeerTls, dialer: &PeerTls) -> Result<Certified, (String, String)> {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        std::thread::scope(|scope| {
            let accepted = scope.spawn(|| {
                let (s, _) = socket.accept().unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                    .unwrap();
                listener.accept(s)
            });
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                .unwrap();
            let dialed = dialer.dial(s, HERE).map(drop);
            let accepted = accepted.join().unwrap();
            match (accepted, dialed) {
                (Ok((_, certified)), Ok(())) => Ok(certified),
                (a, d) => Err((
                    a.err().map(|e| e.to_string()).unwrap_or_default(),
                    d.err().map(|e| e.to_string()).unwrap_or_default(),
                )),
            }
        })
    }

    #[test]
    fn peers_of_one_ca_and_cluster_meet_and_no_one_else() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = make::authority("cluster", 1).unwrap();
        let (other_ca, _) = make::authority("other", 1).unwrap();
        let a = unnamed(files(dir.path(), &ca, "a", Some("blue")), "blue", HERE).unwrap();
        let b = unnamed(files(dir.path(), &ca, "b", Some("blue")), "blue", HERE).unwrap();
        let subject = meet(&a, &b).unwrap().subject;
        assert_eq!(subject.name.as_deref(), Some("b"));
        assert_eq!(subject.ips, vec![HERE]);
        // Another CA's certificate for the same cluster, trusting ours: each side
        // refuses it when it sees it.
        let mut forged = files(dir.path(), &other_ca, "s", Some("blue"));
        forged.ca = files(dir.path(), &ca, "t", Some("blue")).ca;
        let stranger = unnamed(forged, "blue", HERE).unwrap();
        let (listener_saw, _) = meet(&a, &stranger).unwrap_err();
        assert!(listener_saw.contains("UnknownIssuer"), "{listener_saw}");
        let (_, dialer_saw) = meet(&stranger, &a).unwrap_err();
        assert!(dialer_saw.contains("UnknownIssuer"), "{dialer_saw}");
        // The right CA, another cluster: refused once its certificate is read.
        let green = unnamed(files(dir.path(), &ca, "g", Some("green")), "green", HERE).unwrap();
        let (listener_saw, dialer_saw) = meet(&a, &green).unwrap_err();
        assert!(
            listener_saw.contains("is for cluster \"green\""),
            "{listener_saw}"
        );
        assert!(dialer_saw.contains("is for cluster \"blue\""), "{dialer_saw}");
    }

    #[test]
    fn a_peer_certificate_must_name_its_cluster_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = make::authority("cluster", 1).unwrap();
        let client_only = files(dir.path(), &ca, "c", None);
        let error = unnamed(client_only, "blue", HERE).unwrap_err().to_string();
        assert!(error.contains("--cluster blue --host 127.0.0.1"), "{error}");
        let error = unnamed(files(dir.path(), &ca, "d", Some("blue")), "red", HERE)
            .unwrap_err()
            .to_string();
        assert!(error.contains("is for cluster \"blue\""), "{error}");
        let elsewhere = "10.1.2.3".parse().unwrap();
        let error = unnamed(files(dir.path(), &ca, "e", Some("blue")), "blue", elsewhere)
            .unwrap_err()
            .to_string();
        assert!(error.contains("not for 10.1.2.3"), "{error}");
    }

    #[test]
    fn a_peer_certificate_may_name_the_host_name_its_address_was_found_by() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = make::authority("cluster", 1).unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let mut names = PeerNames::default();
        names.add("flowd-1.flowd.test", HERE);
        names.add("FLOWD-2.flowd.test.", other);
        // One peer's certificate names a pattern, the other's its own name only.
        let a = PeerTls::load(
            files_for(dir.path(), &ca, "a", Some("blue"), "*.flowd.test"),
            "blue",
            HERE,
            names.clone(),
        )
        .unwrap();
        let b = PeerTls::load(
            files_for(dir.path(), &ca, "b", Some("blue"), "flowd-2.flowd.test"),
            "blue",
            other,
            names.clone(),
        )
        .unwrap();
        // b dials a at its address, which a's certificate names by the name found there.
        let b_seen = meet(&a, &b).unwrap();
        assert!(a.speaks_for(&b_seen, other));
        // b's certificate does not speak for a's address, nor for one no name was found at.
        assert!(!a.speaks_for(&b_seen, HERE));
        assert!(!a.speaks_for(&b_seen, "127.0.0.3".parse().unwrap()));
        // A peer that knows no name for a's address cannot take a's certificate for it.
        let c = unnamed(files(dir.path(), &ca, "c", Some("blue")), "blue", HERE).unwrap();
        let (_, dialer_saw) = meet(&a, &c).unwrap_err();
        assert!(
            dialer_saw.contains("not valid for name \"127.0.0.1\""),
            "{dialer_saw}"
        );
        // Nor start with a certificate for a name not found at its own address.
        let error = unnamed(
            files_for(dir.path(), &ca, "d", Some("blue"), "*.flowd.test"),
            "blue",
            HERE,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("is for *.flowd.test, not for 127.0.0.1"),
            "{error}"
        );
        let error = PeerTls::load(
            files_for(dir.path(), &ca, "e", Some("blue"), "flowd-9.flowd.test"),
            "blue",
            other,
            names,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            error.contains("not for flowd-2.flowd.test (127.0.0.2)")
                && error.contains("--host flowd-2.flowd.test"),
            "{error}"
        );
    }

    #[test]
    fn a_peer_whose_name_moved_to_another_address_is_taken_there_once_looked_up_again() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, _) = make::authority("cluster", 1).unwrap();
        let (first, then): (IpAddr, IpAddr) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        // The resolver the test moves names in, counting its lookups.
        let dns = Arc::new(Mutex::new(std::collections::HashMap::from([
            ("flowd-1.flowd.test".to_owned(), vec![HERE]),
            ("flowd-2.flowd.test".to_owned(), vec![first]),
        ])));
        let lookups = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let resolve: Resolve = {
            let (dns, lookups) = (Arc::clone(&dns), Arc::clone(&lookups));
            Arc::new(move |host: &str| {
                lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                dns.lock().unwrap().get(host).cloned().unwrap_or_default()
            })
        };
        let mut names = PeerNames::default();
        names.add("flowd-1.flowd.test", HERE);
        names.add("flowd-2.flowd.test", first);
        let load = |name: &str, host: &str, me: IpAddr| {
            PeerTls::load_resolving(
                files_for(dir.path(), &ca, name, Some("blue"), host),
                "blue",
                me,
                names.clone(),
                Arc::clone(&resolve),
            )
            .unwrap()
        };
        let a = load("a", "flowd-1.flowd.test", HERE);
        let b = load("b", "flowd-2.flowd.test", first);
        let b_seen = meet(&a, &b).unwrap();
        assert!(a.speaks_for(&b_seen, first));
        assert_eq!(
            lookups.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no lookup while all is found"
        );
        // b's pod comes back at another address. The first word from there is refused
        // and has the names looked up again; a try a moment later is taken, and the
        // old address no longer speaks for b.
        dns.lock()
            .unwrap()
            .insert("flowd-2.flowd.test".to_owned(), vec![then]);
        assert!(!a.speaks_for(&b_seen, then));
        let taken = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            a.speaks_for(&b_seen, then)
        });
        assert!(taken, "b was never taken at its new address");
        assert!(
            !a.speaks_for(&b_seen, first),
            "b's old address still speaks for it"
        );
        // A name not found for a while (a pod between two lives) stays where it was.
        dns.lock().unwrap().remove("flowd-2.flowd.test");
        let before = lookups.load(std::sync::atomic::Ordering::SeqCst);
        assert!(!a.speaks_for(&b_seen, HERE));
        let looked = (0..500).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            lookups.load(std::sync::atomic::Ordering::SeqCst) >= before + 2
        });
        assert!(looked, "the names were not looked up again");
        assert!(
            a.speaks_for(&b_seen, then),
            "b's name was forgotten while not found"
        );
        // Asking in a loop costs one lookup of each name a second at most.
        let before = lookups.load(std::sync::atomic::Ordering::SeqCst);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            assert!(!a.speaks_for(&b_seen, "127.0.0.9".parse().unwrap()));
        }
        std::thread::sleep(LOOK_AGAIN_EVERY / 2);
        let seconds = start.elapsed().as_secs() as usize + 1;
        let asked = lookups.load(std::sync::atomic::Ordering::SeqCst) - before;
        assert!(asked <= 2 * (seconds + 1), "{asked} lookups in {seconds} s");
    }
}
