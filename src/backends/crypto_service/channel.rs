//! The gRPC channel to the Crypto Service: address, timeouts, keepalive, TLS and mTLS.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::backends::error::BackendError;
use crate::config::tls::TlsFileError;

/// TLS towards the Crypto Service (rustls). With a client certificate and key, mTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// PEM file of the client certificate (mTLS).
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client's private key (mTLS). Read once, zeroized after use.
    pub key_file: Option<PathBuf>,
    /// The name to check in the server certificate; defaults to the address's host.
    pub domain_name: Option<String>,
}

impl ClientTls {
    /// Reads the files into tonic's client TLS settings; the key's bytes are zeroized once
    /// handed over. Also used by the CLI's connection to the Token API.
    pub fn load(&self) -> Result<ClientTlsConfig, TlsFileError> {
        let read = |path: &PathBuf, setting: &'static str| {
            std::fs::read(path).map_err(|source| TlsFileError {
                setting,
                path: path.display().to_string(),
                source,
            })
        };
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca_file, "CA file")?));
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            let key = Zeroizing::new(read(key, "client key file")?);
            config = config.identity(Identity::from_pem(
                read(cert, "client certificate file")?,
                &*key,
            ));
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// How to reach the Crypto Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelOptions {
    /// `http://host:port`, or `https://host:port` with TLS.
    pub address: String,
    /// Limit on establishing a connection.
    pub connect_timeout: Duration,
    /// Deadline of each call, sent to the server as `grpc-timeout`.
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval, also while idle.
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// TLS settings; `None` for plaintext (loopback or a service mesh).
    pub tls: Option<ClientTls>,
}

fn invalid(detail: String) -> BackendError {
    BackendError::invalid_input(format!("crypto_service: {detail}"))
}

/// Checks the settings without connecting: the address's scheme and form, TLS settings
/// consistent with it.
pub fn check(options: &ChannelOptions) -> Result<Endpoint, BackendError> {
    let https = options.address.starts_with("https://");
    if !https && !options.address.starts_with("http://") {
        return Err(invalid(format!(
            "address `{}` must start with http:// or https://",
            crate::backends::types::truncate_for_message(&options.address)
        )));
    }
    if https != options.tls.is_some() {
        return Err(invalid(if https {
            "an https:// address needs [backends.crypto_service.tls] with ca_file".to_owned()
        } else {
            "TLS is configured but the address is http://; use https://".to_owned()
        }));
    }
    if let Some(tls) = &options.tls
        && tls.cert_file.is_some() != tls.key_file.is_some()
    {
        return Err(invalid(
            "mTLS needs both tls.cert_file and tls.key_file".to_owned(),
        ));
    }
    Endpoint::from_shared(options.address.clone()).map_err(|e| {
        invalid(format!(
            "address `{}`: {e}",
            crate::backends::types::truncate_for_message(&options.address)
        ))
    })
}

/// A lazily connecting channel: the service may be down when we start (the chain falls back
/// until it is up), so only bad settings or an unreadable TLS file are errors here.
pub fn connect(options: &ChannelOptions) -> Result<Channel, BackendError> {
    let mut endpoint = check(options)?
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .http2_keep_alive_interval(options.keepalive_interval)
        .keep_alive_timeout(options.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    if let Some(tls) = &options.tls {
        let config = tls.load().map_err(|e| invalid(format!("TLS {e}")))?;
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| invalid(format!("TLS configuration: {e}")))?;
    }
    Ok(endpoint.connect_lazy())
}
