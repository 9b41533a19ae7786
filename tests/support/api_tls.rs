//! Token API clients over TLS and mTLS for the tests of the real binary: which CA a client
//! trusts and which certificate it shows.

use token_service::api::proto::GenerateTokensRequest;
use token_service::api::proto::token_service_client::TokenServiceClient;
use token_service::backends::crypto_service::ClientTls;
use tonic::transport::Endpoint;

use super::pki::Pki;

/// A GenerateTokens request for alice as `client_id`.
pub fn generate(client_id: &str) -> GenerateTokensRequest {
    GenerateTokensRequest {
        subject: "alice".into(),
        client_id: client_id.into(),
        ..Default::default()
    }
}

/// How a test client reaches the server: the CA it trusts (the server's), and the
/// certificate it shows, if any (`<name>.pem` / `<name>.key` of `issued_by`).
pub struct Credentials<'a> {
    /// The PKI whose CA the client trusts.
    pub trusts: &'a Pki,
    /// The PKI that issued the client's certificate.
    pub issued_by: &'a Pki,
    /// The client certificate's name, if it shows one.
    pub client: Option<&'a str>,
}

impl<'a> Credentials<'a> {
    /// Trusting `pki`'s CA and showing its certificate `client`.
    pub fn of(pki: &'a Pki, client: Option<&'a str>) -> Self {
        Self {
            trusts: pki,
            issued_by: pki,
            client,
        }
    }
}

/// A Token API client over TLS to `localhost:port`. Connection and handshake failures come
/// back as the status of the first call, as a real caller sees them.
pub async fn client(
    port: u16,
    credentials: Credentials<'_>,
) -> Result<TokenServiceClient<tonic::transport::Channel>, tonic::Status> {
    let file = |extension: &str| {
        credentials
            .client
            .map(|name| credentials.issued_by.path(&format!("{name}.{extension}")))
    };
    let tls = ClientTls {
        ca_file: credentials.trusts.path("ca.pem"),
        cert_file: file("pem"),
        key_file: file("key"),
        domain_name: None,
    }
    .load()
    .unwrap();
    let channel = Endpoint::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("{e:?}")))?;
    Ok(TokenServiceClient::new(channel))
}

/// A PKI whose client certificates `gateway-a` and `gateway-b` name `gateway-a.internal` and
/// `gateway-b.internal`.
pub fn gateways() -> Pki {
    let pki = Pki::new();
    pki.issue("gateway-a", "gateway-a.internal");
    pki.issue("gateway-b", "gateway-b.internal");
    pki
}
