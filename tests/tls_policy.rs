//! The serving side's TLS policy (issue 5, Operations), with the kubelet's flags and values:
//! `--tls-min-version=VersionTLS13` refuses a TLS 1.2 caller, `--tls-cipher-suites` restricts
//! what a TLS 1.2 caller can negotiate (Go and IANA names alike), and a suite name that is unknown
//! or not implemented stops start-up with exit status 64 naming the flag.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::crypto::ring::{cipher_suite, default_provider};
use rustls::{CipherSuite, ClientConfig, ProtocolVersion, SupportedCipherSuite};
use rustls_pki_types::ServerName;
use support::DEADLINE;
use support::guard::Cluster;
use tokio_rustls::TlsConnector;

/// A client offering only `versions` and `suites`; what it negotiated, or why it could not.
async fn handshake(
    cluster: &Cluster,
    versions: &[&'static rustls::SupportedProtocolVersion],
    suites: &[SupportedCipherSuite],
) -> Result<(ProtocolVersion, CipherSuite), std::io::Error> {
    let mut provider = default_provider();
    provider.cipher_suites = suites.to_vec();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(cluster.ca.root_store())
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(cluster.addr()).await?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    let session = tls.get_ref().1;
    Ok((
        session.protocol_version().unwrap(),
        session.negotiated_cipher_suite().unwrap().suite(),
    ))
}

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

#[tokio::test]
async fn tls12_is_the_default_minimum_and_tls13_can_be_required() {
    let all = default_provider().cipher_suites;
    let default = Cluster::start(&[]).await;
    let (version, _) = handshake(&default, TLS12, &all).await.unwrap();
    assert_eq!(version, ProtocolVersion::TLSv1_2);

    let strict = Cluster::start(&["--tls-min-version=VersionTLS13"]).await;
    assert!(
        handshake(&strict, TLS12, &all).await.is_err(),
        "a TLS 1.2-only caller is refused"
    );
    let (version, _) = handshake(&strict, TLS13, &all).await.unwrap();
    assert_eq!(version, ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn the_suite_list_is_what_a_tls12_caller_can_negotiate() {
    // Go's name for one suite, IANA's for the other.
    let cluster = Cluster::start(&[
        "--tls-cipher-suites=TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    ])
    .await;
    let aes128 = cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let aes256 = cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
    let chacha = cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256;
    assert!(
        handshake(&cluster, TLS12, &[aes128]).await.is_err(),
        "a suite not in the list is refused"
    );
    assert_eq!(
        handshake(&cluster, TLS12, &[aes128, aes256])
            .await
            .unwrap()
            .1,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
    );
    assert_eq!(
        handshake(&cluster, TLS12, &[chacha]).await.unwrap().1,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
    );
    // As in Go, the list does not restrict TLS 1.3 unless it names TLS 1.3 suites.
    let (version, _) = handshake(&cluster, TLS13, &default_provider().cipher_suites)
        .await
        .unwrap();
    assert_eq!(version, ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn unknown_or_unimplemented_suites_stop_start_up_naming_the_flag() {
    let cluster = Cluster::start(&[]).await;
    for (value, says) in [
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "not supported"),
        ("TLS_ECDHE_ECDSA_WITH_AES_512_GCM", "not a cipher suite"),
    ] {
        let flag = format!("--tls-cipher-suites=TLS_AES_128_GCM_SHA256,{value}");
        let argv = cluster.flags(&[&flag]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_kubelet-guard"))
            .args(&argv[1..])
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < DEADLINE, "the binary did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(64), "{stderr}");
        assert!(
            stderr.contains("--tls-cipher-suites")
                && stderr.contains(value)
                && stderr.contains(says),
            "{stderr}"
        );
    }
    let argv = cluster.flags(&["--tls-min-version=VersionTLS11"]);
    let err = support::guard::start_with_flags(&argv)
        .await
        .err()
        .expect("refused");
    assert!(
        err.contains("--tls-min-version") && err.contains("not supported"),
        "{err}"
    );
}
