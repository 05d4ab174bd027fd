//! Tests of `tls.rs`, kept apart so the module reads at once.

use std::net::TcpListener;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::*;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    /// A CA with its own name: two CAs with one name would meet as a
    /// bad signature, not an unknown issuer.
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        Self { issuer }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, contents).expect("write");
        path
    }
}

struct Side {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA, and a certificate from it for `names`, as files `<tag>-*.pem`.
fn side(pki: &Pki, ca: &Ca, tag: &str, names: &[&str]) -> Side {
    let (cert, key) = ca.issue(names);
    Side {
        ca: pki.file(&format!("{tag}-ca.pem"), &ca.issuer.pem()),
        cert: pki.file(&format!("{tag}-cert.pem"), &cert),
        key: pki.file(&format!("{tag}-key.pem"), &key),
    }
}

fn files(s: &Side, name: &str) -> TlsFiles {
    TlsFiles {
        ca: s.ca.clone(),
        cert: s.cert.clone(),
        key: s.key.clone(),
        server_name: name.to_owned(),
    }
}

fn err_text(r: Result<Arc<ClientConfig>, TlsError>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn file_errors_name_the_file_and_the_reason() {
    let pki = Pki::new();
    let ca = Ca::new("test CA");
    let good = side(&pki, &ca, "good", &["collector.test"]);
    let missing = pki.dir.path().join("missing.pem");
    let empty = pki.file("empty.pem", "");
    let junk = pki.file("junk.pem", "-----BEGIN CERTIFICATE-----\nnot base64!\n");
    let (_, other_key) = ca.issue(&["other.test"]);
    let other_key = pki.file("other-key.pem", &other_key);
    let bad_key = pki.file(
        "bad-key.pem",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    );

    let with = |f: &dyn Fn(&mut TlsFiles)| {
        let mut t = files(&good, "collector.test");
        f(&mut t);
        err_text(client_config(&t))
    };
    let e = with(&|t| t.ca = missing.clone());
    assert!(
        e.contains("missing.pem") && e.contains("cannot read") && e.contains("No such file"),
        "{e}"
    );
    let e = with(&|t| t.ca = empty.clone());
    assert!(
        e.contains("empty.pem") && e.contains("no certificate"),
        "{e}"
    );
    // A key file is not a certificate file.
    let e = with(&|t| t.cert = good.key.clone());
    assert!(
        e.contains("good-key.pem") && e.contains("no certificate"),
        "{e}"
    );
    let e = with(&|t| t.cert = junk.clone());
    assert!(e.contains("junk.pem") && e.contains("not valid PEM"), "{e}");
    let e = with(&|t| t.key = good.cert.clone());
    assert!(
        e.contains("good-cert.pem") && e.contains("no private key"),
        "{e}"
    );
    let e = with(&|t| t.key = bad_key.clone());
    assert!(
        e.contains("bad-key.pem") && e.contains("unusable private key"),
        "{e}"
    );
    // A good key, but not the certificate's.
    let e = with(&|t| t.key = other_key.clone());
    assert!(
        e.contains("good-cert.pem") && e.contains("other-key.pem"),
        "{e}"
    );

    let e = server_config(&good.ca, &missing, &good.key)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("missing.pem") && e.contains("cannot read"),
        "{e}"
    );
    assert!(server_name("not a name!").is_err());
    assert!(server_name("198.18.1.2").is_ok());
}

/// A loopback connection: `client` against a server made from `server`,
/// returning each side's outcome and what the server read.
fn exchange(
    client: &Arc<ClientConfig>,
    name: &str,
    server: &Arc<ServerConfig>,
) -> (Result<(), String>, Result<Vec<u8>, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = server.clone();
    let srv = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        let mut tls = accept(&server, tcp).map_err(|e| e.to_string())?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).map_err(|e| e.to_string())?;
        Ok(got)
    });
    let name = server_name(name).expect("name");
    let cli = (|| {
        let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let mut tls = connect(client, &name, tcp).map_err(|e| e.to_string())?;
        tls.write_all(b"hello").map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())
    })();
    (cli, srv.join().expect("server thread"))
}

#[test]
fn mutual_tls_accepts_the_right_peers_and_refuses_the_others() {
    let pki = Pki::new();
    let (ca, other) = (Ca::new("test CA"), Ca::new("other CA"));
    let server = side(&pki, &ca, "server", &["collector.test", "127.0.0.1"]);
    let client = side(&pki, &ca, "client", &["agent.test"]);
    let stranger = side(&pki, &other, "stranger", &["agent.test"]);
    let srv = server_config(&server.ca, &server.cert, &server.key).expect("server config");

    let good = client_config(&files(&client, "collector.test")).expect("client config");
    let (c, s) = exchange(&good, "collector.test", &srv);
    assert_eq!(c, Ok(()));
    assert_eq!(s, Ok(b"hello".to_vec()));

    // The server's certificate does not name what we asked for.
    let (c, s) = exchange(&good, "elsewhere.test", &srv);
    assert!(
        matches!(&c, Err(e) if e.contains("not valid for name")),
        "{c:?}"
    );
    assert!(s.is_err());

    // We trust another CA: the server is refused by the client.
    let mut wrong_ca = files(&client, "collector.test");
    wrong_ca.ca = stranger.ca.clone();
    let wrong_ca = client_config(&wrong_ca).expect("config");
    // Several times: the alert that tells the server why was once lost,
    // some of the time, behind another record queued before it.
    for _ in 0..10 {
        let (c, s) = exchange(&wrong_ca, "collector.test", &srv);
        assert!(matches!(&c, Err(e) if e.contains("UnknownIssuer")), "{c:?}");
        assert!(matches!(&s, Err(e) if e.contains("alert")), "{s:?}");
    }

    // Our certificate is from another CA: the server refuses us, and the
    // client learns it during connect, not at some later write.
    let mut foreign = files(&stranger, "collector.test");
    foreign.ca = server.ca.clone();
    let (c, s) = exchange(
        &client_config(&foreign).expect("config"),
        "collector.test",
        &srv,
    );
    assert!(matches!(&c, Err(e) if e.contains("alert")), "{c:?}");
    assert!(matches!(&s, Err(e) if e.contains("UnknownIssuer")), "{s:?}");
}
