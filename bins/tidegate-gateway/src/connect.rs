//! Dialing out: TCP (directly or through an HTTP CONNECT proxy), TLS, the JWT, the WebSocket
//! upgrade and the sealed link handshake.

use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tidegate_channel::ChannelBinding;
use tidegate_link::{GatewayHandshake, Link, LinkConfig, Transport, TransportError};
use tidegate_proto::Welcome;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use crate::Error;
use crate::identity::Identity;

/// Where the control plane is: parsed from a `wss://host:port` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name (or IP address) checked against the certificate.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `wss://host[:port]`. Any other scheme is refused: the control channel is TLS only.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::Config(format!("control plane URL {url:?}: {e}")))?;
        match uri.scheme_str() {
            Some("wss") => {}
            Some("ws") => {
                return Err(Error::Config(
                    "plain ws:// is refused: the control channel must use TLS (wss://)".into(),
                ));
            }
            other => {
                return Err(Error::Config(format!(
                    "control plane URL must start with wss://, got scheme {other:?}"
                )));
            }
        }
        let host = uri
            .host()
            .ok_or_else(|| Error::Config(format!("control plane URL {url:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            host,
            port: uri.port_u16().unwrap_or(443),
        })
    }

    /// The HTTPS base URL of the same control plane (for enrollment).
    pub fn https_base(&self) -> String {
        if self.host.contains(':') {
            format!("https://[{}]:{}", self.host, self.port)
        } else {
            format!("https://{}:{}", self.host, self.port)
        }
    }

    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Opens a TCP connection to `endpoint`, through `proxy` (`http://host:port`) if given.
pub(crate) async fn tcp(endpoint: &Endpoint, proxy: Option<&str>) -> Result<TcpStream, Error> {
    let Some(proxy) = proxy else {
        return TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| Error::Connect(format!("{}: {e}", endpoint.authority())));
    };
    let uri: Uri = proxy
        .parse()
        .map_err(|e| Error::Config(format!("proxy URL: {e}")))?;
    if uri.scheme_str() != Some("http") {
        return Err(Error::Config("proxy URL must be http://host:port".into()));
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::Config("proxy URL has no host".into()))?;
    let port = uri.port_u16().unwrap_or(3128);
    let mut stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| Error::Connect(format!("proxy {host}:{port}: {e}")))?;
    let authority = endpoint.authority();
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Error::Connect(format!("proxy: {e}")))?;
    // Read the response head byte by byte so no tunnelled byte is consumed.
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= 8192 {
            return Err(Error::Connect("proxy response head too long".into()));
        }
        let b = stream
            .read_u8()
            .await
            .map_err(|e| Error::Connect(format!("proxy: {e}")))?;
        head.push(b);
    }
    let status_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let status_line = String::from_utf8_lossy(status_line);
    let ok = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200");
    if !ok {
        return Err(Error::Connect(format!(
            "proxy refused CONNECT: {status_line}"
        )));
    }
    Ok(stream)
}

/// Dials the control plane and completes everything up to an established sealed link.
pub(crate) async fn dial(
    endpoint: &Endpoint,
    config: &crate::GatewayConfig,
    tls: Arc<ClientConfig>,
    identity: &Identity,
) -> Result<(Link<impl Transport + use<>>, Welcome), Error> {
    let tcp = tcp(endpoint, config.proxy.as_deref()).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(endpoint.host.clone())
        .map_err(|e| Error::Config(format!("control plane host name: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| Error::Tls(e.to_string()))?;
    let conn = stream.get_ref().1;
    let auth_binding = conn
        .export_keying_material([0u8; 32], tidegate_auth::TLS_EXPORTER_LABEL, None)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let channel_binding = conn
        .export_keying_material([0u8; 32], tidegate_channel::TLS_EXPORTER_LABEL, None)
        .map_err(|e| Error::Tls(e.to_string()))?;
    let token = identity
        .key
        .mint_token(
            &identity.gateway_id,
            &identity.audience,
            &auth_binding,
            tidegate_auth::now_s(),
            config.token_lifetime.as_secs(),
        )
        .map_err(|e| Error::Auth(e.to_string()))?;

    let url = format!("wss://{}/v1/gateway/connect", endpoint.authority());
    let mut request = url
        .into_client_request()
        .map_err(|e| Error::Config(e.to_string()))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| Error::Auth("token is not a valid header value".into()))?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, bearer);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(
            tidegate_proto::DEFAULT_MAX_FRAME_LEN + tidegate_channel::OVERHEAD,
        ))
        .max_frame_size(Some(
            tidegate_proto::DEFAULT_MAX_FRAME_LEN + tidegate_channel::OVERHEAD,
        ));
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(response) => {
                    let status = response.status();
                    let body = response
                        .body()
                        .as_deref()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default()
                        .into_owned();
                    Error::Rejected {
                        status: status.as_u16(),
                        message: body,
                    }
                }
                other => Error::Connect(other.to_string()),
            })?;

    fn decode(m: WsMessage) -> Option<Result<Bytes, TransportError>> {
        match m {
            WsMessage::Binary(b) => Some(Ok(b)),
            WsMessage::Text(_) => Some(Err(TransportError(
                "text WebSocket message on a binary link".into(),
            ))),
            WsMessage::Close(_) | WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {
                None
            }
        }
    }
    let transport = tidegate_link::Adapter::new(ws, decode, WsMessage::Binary);
    let link_config = LinkConfig {
        versions: config.protocol_versions.clone(),
        ..LinkConfig::default()
    };
    let handshake = GatewayHandshake::new(
        link_config,
        format!("tidegate-gateway {}", env!("CARGO_PKG_VERSION")),
    );
    let binding = ChannelBinding::new(channel_binding);
    handshake
        .run(transport, &binding)
        .await
        .map_err(Error::Link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls() {
        let ok = Endpoint::parse("wss://cp.example.com:8443").unwrap();
        assert_eq!((ok.host.as_str(), ok.port), ("cp.example.com", 8443));
        assert_eq!(Endpoint::parse("wss://cp.example.com").unwrap().port, 443);
        assert_eq!(Endpoint::parse("wss://[::1]:9000").unwrap().host, "::1");
        for bad in ["ws://cp:80", "https://cp", "cp:443", ""] {
            let err = Endpoint::parse(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        }
        let ws = Endpoint::parse("ws://cp:80").unwrap_err().to_string();
        assert!(ws.contains("plain ws:// is refused"), "{ws}");
    }
}
