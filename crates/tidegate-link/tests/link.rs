//! Handshake and sealed-exchange behaviour over an in-memory message pipe.
//!
//! The pipe stands in for a WebSocket only to let the tests tamper with messages in flight; the
//! real WebSocket-over-TLS path is tested end to end in the gateway and control-plane tests.

#![allow(clippy::unwrap_used)] // A failed unwrap is a failed test, with its location.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::{Sink, SinkExt, Stream, StreamExt};
use tidegate_channel::ChannelBinding;
use tidegate_link::{
    Admission, ControlPlaneHandshake, Error, GatewayHandshake, LinkConfig, TransportError,
};
use tidegate_proto::{Goodbye, Heartbeat, Message, ProtocolVersion, RefusalReason};

/// One end of a bidirectional in-memory pipe of whole messages.
struct Pipe {
    tx: mpsc::UnboundedSender<Bytes>,
    rx: mpsc::UnboundedReceiver<Bytes>,
}

fn pipe() -> (Pipe, Pipe) {
    let (a_tx, b_rx) = mpsc::unbounded();
    let (b_tx, a_rx) = mpsc::unbounded();
    (Pipe { tx: a_tx, rx: a_rx }, Pipe { tx: b_tx, rx: b_rx })
}

impl Stream for Pipe {
    type Item = Result<Bytes, TransportError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_next_unpin(cx).map(|m| m.map(Ok))
    }
}

impl Sink<Bytes> for Pipe {
    type Error = TransportError;
    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn start_send(self: Pin<&mut Self>, item: Bytes) -> Result<(), Self::Error> {
        self.tx
            .unbounded_send(item)
            .map_err(|_| TransportError("pipe closed".into()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}

fn admit(_: &tidegate_proto::Hello, _: Option<ProtocolVersion>) -> Admission {
    Admission::Admit {
        heartbeat_interval_ms: 1000,
    }
}

fn config(min: u16, max: u16) -> LinkConfig {
    LinkConfig {
        versions: ProtocolVersion(min)..=ProtocolVersion(max),
        ..LinkConfig::default()
    }
}

#[tokio::test]
async fn handshake_then_sealed_messages_both_ways() {
    let (g, c) = pipe();
    let b = ChannelBinding::new([5; 32]);
    let (gw, cp) = tokio::join!(
        GatewayHandshake::new(config(1, 1), "test").run(g, &b),
        ControlPlaneHandshake::new(config(1, 1)).run(c, &b, admit),
    );
    let (mut gw, welcome) = gw.unwrap();
    let (mut cp, hello, version) = cp.unwrap();
    assert_eq!(version, ProtocolVersion(1));
    assert_eq!(welcome.heartbeat_interval_ms, 1000);
    assert_eq!(hello.software, "test");
    for id in 0..10 {
        let m = Message::Heartbeat(Heartbeat { id });
        gw.send(&m).await.unwrap();
        assert_eq!(cp.recv().await.unwrap(), m);
        cp.send(&m).await.unwrap();
        assert_eq!(gw.recv().await.unwrap(), m);
    }
}

#[tokio::test]
async fn messages_small_and_large_cross_in_both_directions() {
    let (g, c) = pipe();
    let b = ChannelBinding::new([5; 32]);
    let (gw, cp) = tokio::join!(
        GatewayHandshake::new(config(1, 1), "test").run(g, &b),
        ControlPlaneHandshake::new(config(1, 1)).run(c, &b, admit),
    );
    let (mut gw, _) = gw.unwrap();
    let (mut cp, _, _) = cp.unwrap();
    // Above and below the size whose buffers a link keeps, and back.
    for len in [0, 3_000, 70_000, 400_000, 12, 900_000, 70_000, 1] {
        let m = Message::Goodbye(Goodbye {
            reason: "tide".repeat(len / 4),
        });
        gw.send(&m).await.unwrap();
        assert_eq!(
            cp.recv().await.unwrap(),
            m,
            "{len} bytes to the control plane"
        );
        cp.send(&m).await.unwrap();
        assert_eq!(gw.recv().await.unwrap(), m, "{len} bytes to the gateway");
    }
}

#[tokio::test]
async fn version_without_overlap_is_refused_with_the_supported_range() {
    let (g, c) = pipe();
    let b = ChannelBinding::new([5; 32]);
    let (gw, cp) = tokio::join!(
        GatewayHandshake::new(config(7, 9), "future").run(g, &b),
        ControlPlaneHandshake::new(config(1, 2)).run(c, &b, admit),
    );
    let refusal = match gw {
        Err(Error::Refused(refusal)) => refusal,
        Err(other) => panic!("gateway failed otherwise: {other}"),
        Ok(_) => panic!("gateway was admitted"),
    };
    assert_eq!(
        refusal.reason,
        RefusalReason::UnsupportedVersion {
            min: ProtocolVersion(1),
            max: ProtocolVersion(2)
        }
    );
    assert!(refusal.message.contains("upgrade"), "{}", refusal.message);
    assert!(matches!(cp, Err(Error::Refused(_))));
}

#[tokio::test]
async fn relayed_handshake_across_tls_sessions_fails_on_first_frame() {
    let (g, c) = pipe();
    let (b1, b2) = (ChannelBinding::new([1; 32]), ChannelBinding::new([2; 32]));
    let (gw, cp) = tokio::join!(
        GatewayHandshake::new(config(1, 1), "t").run(g, &b1),
        ControlPlaneHandshake::new(config(1, 1)).run(c, &b2, admit),
    );
    let (mut gw, _) = gw.unwrap();
    let (mut cp, _, _) = cp.unwrap();
    gw.send(&Message::Heartbeat(Heartbeat { id: 1 }))
        .await
        .unwrap();
    let err = cp.recv().await.unwrap_err();
    assert!(
        matches!(err, Error::Channel(tidegate_channel::Error::Tampered)),
        "{err}"
    );
}

/// A relay between the two ends that can rewrite the gateway's sealed frames.
async fn run_with_interference(
    mutate: impl Fn(usize, Bytes) -> Vec<Bytes> + Send + 'static,
) -> Vec<Result<Message, String>> {
    let (g, mut relay_g) = pipe();
    let (mut relay_c, c) = pipe();
    let relay = tokio::spawn(async move {
        // Control plane to gateway passes untouched.
        let mut n = 0;
        loop {
            tokio::select! {
                m = relay_g.next() => match m {
                    Some(Ok(m)) => {
                        for out in mutate(n, m) { relay_c.send(out).await.ok(); }
                        n += 1;
                    }
                    _ => break,
                },
                m = relay_c.next() => match m {
                    Some(Ok(m)) => { relay_g.send(m).await.ok(); }
                    _ => break,
                },
            }
        }
    });
    let b = ChannelBinding::new([9; 32]);
    let (gw, cp) = tokio::join!(
        GatewayHandshake::new(config(1, 1), "t").run(g, &b),
        ControlPlaneHandshake::new(config(1, 1)).run(c, &b, admit),
    );
    let (mut gw, _) = gw.unwrap();
    let (mut cp, _, _) = cp.unwrap();
    for id in 0..3 {
        gw.send(&Message::Heartbeat(Heartbeat { id }))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(2), cp.recv()).await;
        match r {
            Ok(r) => {
                let failed = r.is_err();
                got.push(r.map_err(|e| e.to_string()));
                if failed {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    relay.abort();
    got
}

#[tokio::test]
async fn replayed_reordered_truncated_and_tampered_frames_end_the_link() {
    // Message 0 is the hello; sealed frames are 1, 2, 3.
    type Mutation = fn(usize, Bytes) -> Vec<Bytes>;
    let cases: [(&str, Mutation); 4] = [
        (
            "replay",
            |n, m| {
                if n == 1 { vec![m.clone(), m] } else { vec![m] }
            },
        ),
        ("reorder", {
            |n, m| match n {
                1 => vec![],
                2 => vec![m],
                _ => vec![m],
            }
        }),
        ("truncate", |n, m| {
            if n == 2 {
                vec![m.slice(..m.len() - 3)]
            } else {
                vec![m]
            }
        }),
        ("tamper", |n, m| {
            if n == 2 {
                let mut v = m.to_vec();
                v[12] ^= 0x01;
                vec![Bytes::from(v)]
            } else {
                vec![m]
            }
        }),
    ];
    for (name, mutate) in cases {
        let got = run_with_interference(mutate).await;
        let last = got.last().expect("at least one result");
        assert!(last.is_err(), "{name}: link accepted interference: {got:?}");
        let accepted = got.iter().filter(|r| r.is_ok()).count();
        assert!(accepted <= 1, "{name}: {got:?}");
    }
}
