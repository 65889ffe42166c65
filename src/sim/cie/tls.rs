//! The simulator's TLS side: the client-certificate CA, the mutual-TLS listener that axum serves
//! from, a connection that a handler can cut (to lose a response), and the simulated clock as
//! rustls's time source (so certificate validity follows the simulator, not the wall clock).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::SimClock;

/// Bound on a client's TLS handshake, so a silent peer cannot hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The CA that issues client certificates (onboarding and `cert:refresh`). It lives here rather
/// than in `pki::ca::Ca` because client certificates need the clientAuth extended key usage —
/// rustls's client verifier refuses serverAuth-only certificates — and `Ca::sign_csr` issues
/// server certificates.
pub(super) struct ClientCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
}

impl ClientCa {
    pub(super) fn new(common_name: &str) -> anyhow::Result<ClientCa> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        // The simulated clock can be moved years ahead in tests; the CA must outlive that.
        set_validity(
            &mut params,
            jiff::Timestamp::UNIX_EPOCH,
            jiff::Timestamp::from_second(4_102_444_800)?, // 2100-01-01
        );
        let cert = params.self_signed(&key)?;
        Ok(ClientCa {
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A new key and client certificate: (certificate PEM, PKCS#8 key PEM).
    pub(super) fn issue(
        &self,
        common_name: &str,
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
    ) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        client_profile(&mut params, not_before, not_after);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for the key in `csr_pem` (whose signature is checked), with the
    /// CSR's subject, or `CN=<fallback_cn>` when the CSR has none.
    pub(super) fn sign_csr(
        &self,
        csr_pem: &str,
        fallback_cn: &str,
        not_before: jiff::Timestamp,
        not_after: jiff::Timestamp,
    ) -> Result<String, rcgen::Error> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        if csr.params.distinguished_name.iter().next().is_none() {
            csr.params
                .distinguished_name
                .push(DnType::CommonName, fallback_cn);
        }
        // The vendor decides what the certificate may be used for, not the CSR.
        csr.params.subject_alt_names.clear();
        client_profile(&mut csr.params, not_before, not_after);
        Ok(csr.signed_by(&self.issuer)?.pem())
    }

    fn roots(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone())?;
        Ok(roots)
    }
}

fn client_profile(
    params: &mut CertificateParams,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
) {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(params, not_before, not_after);
}

/// rcgen takes `time` dates; the epoch plus a std Duration avoids depending on `time` directly.
fn set_validity(
    params: &mut CertificateParams,
    not_before: jiff::Timestamp,
    not_after: jiff::Timestamp,
) {
    let at = |ts: jiff::Timestamp| {
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let offset = Duration::from_secs(ts.as_second().unsigned_abs());
        if ts.as_second() >= 0 {
            epoch + offset
        } else {
            epoch - offset
        }
    };
    params.not_before = at(not_before);
    params.not_after = at(not_after);
}

/// Positive, 16 bytes, unpredictable (RFC 5280).
fn random_serial() -> SerialNumber {
    let mut bytes = fastrand::u128(..).to_be_bytes();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from(bytes.to_vec())
}

/// rustls asks this for "now" when it checks a client certificate's validity.
#[derive(Debug)]
struct SimTime(Arc<SimClock>);

impl rustls::time_provider::TimeProvider for SimTime {
    fn current_time(&self) -> Option<UnixTime> {
        let now = self.0.now();
        u64::try_from(now.as_second())
            .ok()
            .map(|secs| UnixTime::since_unix_epoch(Duration::from_secs(secs)))
    }
}

/// The server's TLS configuration: its certificate, and client certificates required from
/// `client_ca`, valid by the simulated clock.
pub(super) fn server_config(
    server_chain_pem: &str,
    server_key_pem: &str,
    client_ca: &ClientCa,
    clock: Arc<SimClock>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(client_ca.roots()?), provider.clone())
            .build()?;
    let chain = CertificateDer::pem_slice_iter(server_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("server certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(server_key_pem.as_bytes()).context("server key PEM")?;
    let mut config = rustls::ServerConfig::builder_with_details(provider, Arc::new(SimTime(clock)))
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Who is on the other end of a connection, handed to handlers as `ConnectInfo`.
#[derive(Clone, Debug)]
pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    /// DER of the client's end-entity certificate (always present once the handshake passed).
    pub(super) client_cert: Option<Vec<u8>>,
    cut: Arc<AtomicBool>,
}

impl Peer {
    /// Closes the connection instead of sending the response that is being prepared.
    pub(super) fn cut_connection(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// A TLS connection that fails every write once cut, so hyper drops it without a response.
pub(super) struct CuttableIo {
    inner: TlsStream<TcpStream>,
    cut: Arc<AtomicBool>,
}

impl CuttableIo {
    fn cut_error(&self) -> Option<io::Error> {
        self.cut.load(Ordering::SeqCst).then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "response dropped by the simulator",
            )
        })
    }
}

impl AsyncRead for CuttableIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CuttableIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.cut_error() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.cut_error() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Hands axum connections whose mutual-TLS handshake succeeded. Handshakes run in their own
/// tasks so a slow client does not hold up the others.
pub(super) struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(CuttableIo, Peer)>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; failed handshakes are counted in `handshake_failures`.
    pub(super) fn start(
        tcp: TcpListener,
        config: rustls::ServerConfig,
        handshake_failures: Arc<AtomicUsize>,
    ) -> io::Result<(TlsListener, tokio::task::JoinHandle<()>)> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let (stream, addr) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "cie sim: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx, failures) =
                    (acceptor.clone(), tx.clone(), handshake_failures.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let client_cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .map(|cert| cert.to_vec());
                            let cut = Arc::new(AtomicBool::new(false));
                            let io = CuttableIo {
                                inner: tls,
                                cut: cut.clone(),
                            };
                            let peer = Peer {
                                addr,
                                client_cert,
                                cut,
                            };
                            let _ = tx.send((io, peer)).await;
                        }
                        Ok(Err(e)) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            tracing::info!(%addr, error = %e, "cie sim: TLS handshake refused");
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            tracing::info!(%addr, "cie sim: TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok((TlsListener { local, ready }, task))
    }
}

impl Listener for TlsListener {
    type Io = CuttableIo;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task is gone (shutting down): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            client_cert: None,
            cut: Arc::new(AtomicBool::new(false)),
        })
    }
}
