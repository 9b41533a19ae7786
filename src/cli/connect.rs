//! The connection of `client` and `bench` to a Token API: plaintext for `http://`, TLS (and
//! mTLS with a client certificate) for `https://`.

use std::path::PathBuf;

use clap::Args;
use token_service::backends::crypto_service::ClientTls;
use tonic::transport::{Channel, Endpoint};

use super::Failure;

/// Where the Token API is and how to reach it.
#[derive(Debug, Args)]
pub struct TokenApiArgs {
    /// Address of the Token Service's gRPC API (`https://` for a server with [server.tls]).
    #[arg(
        long,
        default_value = "http://127.0.0.1:50052",
        env = "TOKEN_SERVICE_ADDRESS"
    )]
    pub address: String,
    /// PEM file of the CA that signed the server's certificate (https:// only).
    #[arg(long, env = "TOKEN_SERVICE_CA_FILE", value_name = "PATH")]
    ca_file: Option<PathBuf>,
    /// PEM client certificate, for a server that requires one (mTLS).
    #[arg(
        long,
        env = "TOKEN_SERVICE_CERT_FILE",
        value_name = "PATH",
        requires = "key_file"
    )]
    cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(
        long,
        env = "TOKEN_SERVICE_KEY_FILE",
        value_name = "PATH",
        requires = "cert_file"
    )]
    key_file: Option<PathBuf>,
    /// The name to check in the server's certificate, when the address does not carry it
    /// (an IP address, a load balancer's name).
    #[arg(long, env = "TOKEN_SERVICE_TLS_SERVER_NAME", value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl TokenApiArgs {
    /// The endpoint, TLS set up for `https://`. TLS files with a plaintext address are
    /// refused rather than ignored: the user asked for a protected connection.
    pub fn endpoint(&self) -> Result<Endpoint, Failure> {
        let https = self.address.starts_with("https://");
        if !https && !self.address.starts_with("http://") {
            return Err(Failure::new(format!(
                "address `{}` must start with http:// or https://",
                self.address
            )));
        }
        let endpoint = Endpoint::from_shared(self.address.clone())
            .map_err(|e| Failure::new(format!("bad address `{}`: {e}", self.address)))?
            .tcp_nodelay(true);
        match (https, &self.ca_file) {
            (false, None) if self.cert_file.is_none() && self.tls_server_name.is_none() => {
                Ok(endpoint)
            }
            (false, _) => Err(Failure::new(
                "TLS files given for an http:// address; use https://",
            )),
            (true, None) => Err(Failure::new(
                "an https:// address needs --ca-file (the CA that signed the server's certificate)",
            )),
            (true, Some(ca_file)) => {
                let tls = ClientTls {
                    ca_file: ca_file.clone(),
                    cert_file: self.cert_file.clone(),
                    key_file: self.key_file.clone(),
                    domain_name: self.tls_server_name.clone(),
                }
                .load()
                .map_err(|e| Failure::new(format!("TLS {e}")))?;
                endpoint
                    .tls_config(tls)
                    .map_err(|e| Failure::new(format!("TLS configuration: {e}")))
            }
        }
    }

    /// A failed call as the user should read it: the status with its transport cause, and
    /// for a TLS connection without a client certificate, the likely reason (a server that
    /// requires one closes the connection after the handshake).
    pub fn failure(&self, status: tonic::Status) -> Failure {
        let mut text = format!("{:?}: {}", status.code(), status.message());
        let from_transport = std::error::Error::source(&status);
        if let Some(cause) = from_transport {
            text.push_str(": ");
            text.push_str(&chain(cause));
        }
        if from_transport.is_some()
            && self.address.starts_with("https://")
            && self.cert_file.is_none()
        {
            text.push_str(
                " (if the server requires client certificates, give --cert-file and --key-file)",
            );
        }
        Failure::new(text)
    }

    /// A connected channel.
    pub async fn connect(&self) -> Result<Channel, Failure> {
        self.endpoint()?
            .connect()
            .await
            .map_err(|e| Failure::new(format!("cannot connect to {}: {}", self.address, chain(&e))))
    }
}

/// An error with its sources: tonic's "transport error" alone does not say a TLS handshake
/// was refused.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
