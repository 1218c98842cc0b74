//! One connection, native QUIC or WebTransport (`transport.rs`): hello and authentication, the
//! control stream (requests and their responses), the push stream (deliveries and notices), and
//! refusal of streams the protocol does not use. Every error a client can cause ends here as a
//! typed `Error` frame, and the fatal ones as a connection close whose application code is the
//! error code.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchboard_core::ErrorCode;
use switchboard_wire::{self as wire, ClientFrame, DecodeLimits, ServerFrame, WireError};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::timeout;
use tracing::{debug, info, warn, Instrument};

use crate::hub::{Hub, RequestError, SendRequest, Session};
use crate::transport::{Conn, RecvStream, SendStream};

/// How long a closing connection waits for its last frames (e.g. a fatal error) to be read.
const LINGER: Duration = Duration::from_millis(500);
/// Unexpected streams tolerated before the connection is closed as abusive.
const MAX_UNEXPECTED_STREAMS: u32 = 64;
/// Most answers the control writer takes per write.
const MAX_WRITE_BATCH: usize = 64;

/// Why a connection ended early: the code and text it is closed with.
#[derive(Debug)]
struct Fatal(RequestError);

impl From<RequestError> for Fatal {
    fn from(e: RequestError) -> Self {
        Fatal(e)
    }
}

fn wire_fatal(e: WireError) -> Fatal {
    Fatal(RequestError::new(e.code(), e.to_string()))
}

/// Drives one incoming connection to completion.
pub(crate) async fn serve(hub: Arc<Hub>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let _counted = Counted(&hub.metrics().connections);
    // A handshake gets `hello_timeout_ms` too: one that never completes (a client that sent
    // its first packet and went away, or a flood) is dropped instead of held until the idle
    // timeout.
    // Boxed, so its state is freed when it ends rather than sizing every connection's task.
    let handshake = {
        let _handshaking = Counted(&hub.metrics().handshakes);
        Box::pin(timeout(
            Duration::from_millis(hub.limits().hello_timeout_ms),
            std::future::IntoFuture::into_future(incoming),
        ))
        .await
    };
    let conn = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            debug!(%remote, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            hub.metrics()
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            debug!(%remote, "handshake timed out");
            return;
        }
    };
    let span = tracing::info_span!("conn", %remote, session = tracing::field::Empty);
    run(hub.clone(), Conn::Quic(conn)).instrument(span).await;
}

/// Uncounts a connection (or a handshake) however its task ends; counted at accept (lib.rs).
pub(crate) struct Counted<'a>(pub(crate) &'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves an established connection of either transport: hello, then the session.
pub(crate) async fn run(hub: Arc<Hub>, conn: Conn) {
    // Both phases boxed: a future is as large as its largest state, so awaited inline the
    // handshake's, the hello's and a request's states sized every connection's task (3.9 KiB
    // of each idle connection in the heap profile; 1.4 KiB now, plus the boxed session loop's
    // 1.4 KiB); boxed, the hello's is freed when it ends.
    let Some(opened) = Box::pin(hello(&hub, &conn)).await else {
        return;
    };
    let Opened {
        session,
        welcome,
        ctl_send,
        ctl_recv,
        buf,
    } = opened;
    tracing::Span::current().record("session", session.id);
    info!(tenant = %session.tenant, user = %session.user, "session open");

    let result = Box::pin(session_loop(
        &hub, &conn, &session, welcome, ctl_send, ctl_recv, buf,
    ))
    .await;
    hub.close_session(&session);
    match result {
        Ok(()) => {
            debug!("session closed by peer");
            // Also when only the control stream ended: the connection holds no session now.
            conn.close(0, b"session closed");
        }
        Err(Fatal(e)) => {
            warn!(code = %e.code, error = %e.message, "closing session");
            close(&conn, &e);
        }
    }
}

/// A session opened by an accepted `Hello`, with its control stream.
struct Opened {
    session: Arc<Session>,
    welcome: ServerFrame,
    ctl_send: SendStream,
    ctl_recv: RecvStream,
    buf: BytesMut,
}

/// The hello: the control stream, a valid `Hello` in time, authentication and the session.
/// `None` when the connection was refused or went away (the refusal is sent here).
async fn hello(hub: &Arc<Hub>, conn: &Conn) -> Option<Opened> {
    let limits = hub.limits().clone();
    let hello_deadline = Duration::from_millis(limits.hello_timeout_ms);
    let decode = DecodeLimits::from_limits(&limits);

    let (ctl_send, mut ctl_recv) = match timeout(hello_deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(error = %e, "closed before hello");
            return None;
        }
        Err(_) => {
            close(
                conn,
                &RequestError::new(ErrorCode::HelloRequired, "no hello in time"),
            );
            return None;
        }
    };
    let mut buf = BytesMut::with_capacity(1024);
    let refusal = match timeout(
        hello_deadline,
        read_hello(&mut ctl_recv, &mut buf, &decode, limits.max_frame_bytes),
    )
    .await
    {
        Ok(Ok(hello)) => {
            let outbox = crate::outbox::Outbox::new(
                limits.outbox_frames as usize,
                limits.outbox_bytes as usize,
            );
            let opened = hub.authenticate(&hello.token).and_then(|claims| {
                hub.open_session(claims, &hello, outbox, Some(conn.remote_address()))
            });
            match opened {
                Ok((session, welcome)) => {
                    return Some(Opened {
                        session,
                        welcome,
                        ctl_send,
                        ctl_recv,
                        buf,
                    })
                }
                Err(e) => e,
            }
        }
        Ok(Err(Fatal(e))) => e,
        Err(_) => RequestError::new(ErrorCode::HelloRequired, "no hello in time"),
    };
    refuse(hub, conn, ctl_send, refusal).await;
    None
}

async fn read_hello(
    recv: &mut RecvStream,
    buf: &mut BytesMut,
    decode: &DecodeLimits,
    max_frame: u32,
) -> Result<wire::Hello, Fatal> {
    let frame = wire::read_frame(recv, buf, max_frame)
        .await
        .map_err(wire_fatal)?
        .ok_or_else(|| RequestError::new(ErrorCode::HelloRequired, "stream ended before hello"))?;
    match wire::decode_client(&frame, decode) {
        Ok(ClientFrame::Hello(h)) => Ok(h),
        Ok(_) => {
            Err(RequestError::new(ErrorCode::HelloRequired, "first frame must be Hello").into())
        }
        // Any frame but Hello first is `HelloRequired`, whatever it is: a client frame, a
        // server frame (which after Hello would be `UnexpectedFrame`) or an unknown type.
        Err(WireError::UnknownFrameType(t)) => Err(RequestError::new(
            ErrorCode::HelloRequired,
            format!("first frame must be Hello, got unknown type {t}"),
        )
        .into()),
        Err(WireError::UnexpectedFrame(name)) => Err(RequestError::new(
            ErrorCode::HelloRequired,
            format!("first frame must be Hello, got {name}"),
        )
        .into()),
        Err(e) => Err(wire_fatal(e)),
    }
}

/// Refuses a connection that has not become a session: error frame (with its retry-after,
/// if any), then close with the error's code, as for every error answering `Hello`.
async fn refuse(hub: &Hub, conn: &Conn, mut send: SendStream, e: RequestError) {
    // A rate-limited hello is counted as such (`rate_limited_connections`), not as an error.
    if e.code != ErrorCode::RateLimited {
        hub.metrics()
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
    }
    info!(code = %e.code, error = %e.message, "refusing connection");
    let frame = wire::encode_server(&ServerFrame::Error(e.frame(0)));
    let send = send.quic();
    if send.write_all(&frame).await.is_ok() && send.finish().is_ok() {
        let _ = timeout(LINGER, send.stopped()).await;
    }
    close(conn, &e);
}

fn close(conn: &Conn, e: &RequestError) {
    let reason = e.message.as_bytes();
    let reason = &reason[..reason.len().min(256)];
    conn.close(u32::from(e.code.as_u16()), reason);
}

#[allow(clippy::too_many_arguments)]
async fn session_loop(
    hub: &Arc<Hub>,
    conn: &Conn,
    session: &Arc<Session>,
    welcome: ServerFrame,
    mut ctl_send: SendStream,
    mut ctl_recv: RecvStream,
    mut buf: BytesMut,
) -> Result<(), Fatal> {
    let limits = hub.limits().clone();
    let decode = DecodeLimits::from_limits(&limits);
    let internal =
        |e: &dyn std::fmt::Display| Fatal(RequestError::new(ErrorCode::Internal, e.to_string()));
    ctl_send
        .quic()
        .write_all(&wire::encode_server(&welcome))
        .await
        .map_err(|e| internal(&e))?;
    // Co-members' presence to this session, and its user's to them. Over the presence
    // limit, they are not told and the client hears why, as for a `Presence` change.
    if let Err(e) = hub.session_arrived(session) {
        ctl_send
            .quic()
            .write_all(&wire::encode_server(&ServerFrame::Error(e.frame(0))))
            .await
            .map_err(|e| internal(&e))?;
    }

    // The hello's 1 KiB read buffer would stay with every idle session (its frame was split
    // off, the allocation was not): requests read into a buffer that grows when one comes.
    if buf.is_empty() {
        buf = BytesMut::new();
    }
    let planner = hub.push_planner(session.clone());
    let push_task =
        tokio::spawn(crate::push::run(conn.clone(), planner).instrument(tracing::Span::current()));
    let mut control = Control {
        stream: Some(ctl_send),
        writer: None,
        // One per request in flight plus a few control answers; acks never wait.
        bound: limits.max_inflight_sends as usize + 8,
    };
    let extra_task = tokio::spawn(refuse_extra_streams(conn.clone()));
    let inflight = Arc::new(Semaphore::new(limits.max_inflight_sends as usize));

    let mut push_task = push_task;
    let result = async {
        loop {
            let frame = tokio::select! {
                f = wire::read_frame(&mut ctl_recv, &mut buf, limits.max_frame_bytes) => f,
                r = conn.closed() => { debug!(reason = %r, "connection closed"); return Ok(()) }
                () = session.evicted() => return Err(Fatal(RequestError::new(
                    ErrorCode::SlowConsumer,
                    "deliveries were not read fast enough; reconnect and resume",
                ))),
                // Deliveries stopped (e.g. the store failed under catch-up): without them the
                // session is useless, so end it and let the client reconnect and resume.
                end = &mut push_task => return match end {
                    // The client stopped a push stream, or the connection is going away.
                    Ok(Ok(()) | Err(crate::push::PushEnd::Closed)) => Ok(()),
                    Ok(Err(crate::push::PushEnd::Store(e))) => Err(Fatal(RequestError::new(
                        ErrorCode::StoreUnavailable,
                        format!("deliveries stopped ({e}); reconnect and resume"),
                    ))),
                    Err(_) => Err(Fatal(RequestError::new(
                        ErrorCode::Internal,
                        "deliveries stopped; reconnect and resume",
                    ))),
                },
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(WireError::Io(_)) => return Ok(()), // peer went away
                Err(e) => return Err(wire_fatal(e)),
            };
            let reply = match wire::decode_client(&frame, &decode) {
                // Boxed per request: inline, its state (1.1 KiB) was part of every idle
                // connection's task.
                Ok(f) => Box::pin(handle(hub, session, f, control.sender(), &inflight)).await,
                Err(e @ (WireError::UnknownFrameType(_) | WireError::UnexpectedFrame(_))) => {
                    hub.metrics()
                        .protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                    Some(ServerFrame::Error(
                        RequestError::new(e.code(), e.to_string()).frame(0),
                    ))
                }
                Err(e) => return Err(wire_fatal(e)),
            };
            if let Some(reply) = reply {
                if control
                    .sender()
                    .send(wire::encode_server(&reply))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    }
    .await;

    extra_task.abort();
    push_task.abort();
    if let Err(Fatal(e)) = &result {
        hub.metrics()
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        let _ = control
            .sender()
            .try_send(wire::encode_server(&ServerFrame::Error(e.frame(0))));
    }
    // Let the control writer flush the last answers (and a fatal error) and finish the stream
    // before closing; a client that does not read them does not get to keep the task (or
    // the connection).
    control.sender();
    let Some((resp_tx, mut ctl_task)) = control.writer.take() else {
        unreachable!("started by sender()");
    };
    drop(resp_tx);
    if timeout(LINGER, &mut ctl_task).await.is_err() {
        ctl_task.abort();
    }
    result
}

/// A session's control stream after the `Welcome`: its answers go through a bounded queue to
/// a writer task, both started by the first answer (most idle connections never send a
/// request after `Hello`, and the queue's first block of slots and the task were ~2 KiB of
/// each of them in the heap profile).
struct Control {
    /// The stream until the writer takes it.
    stream: Option<SendStream>,
    writer: Option<(mpsc::Sender<Bytes>, tokio::task::JoinHandle<()>)>,
    /// Answers queued at most.
    bound: usize,
}

impl Control {
    /// The writer's queue, started on first use.
    fn sender(&mut self) -> &mpsc::Sender<Bytes> {
        let Self {
            stream,
            writer,
            bound,
        } = self;
        &writer
            .get_or_insert_with(|| {
                let (tx, rx) = mpsc::channel(*bound);
                let stream = stream.take().expect("the writer takes the stream once");
                (tx, tokio::spawn(control_writer(rx, stream)))
            })
            .0
    }
}

/// Handles one request; returns the immediate answer, if any (acks come from the committer).
async fn handle(
    hub: &Arc<Hub>,
    session: &Arc<Session>,
    frame: ClientFrame,
    resp_tx: &mpsc::Sender<Bytes>,
    inflight: &Arc<Semaphore>,
) -> Option<ServerFrame> {
    let err = |request_id: u64, e: RequestError| Some(ServerFrame::Error(e.frame(request_id)));
    match frame {
        ClientFrame::Hello(_) => err(
            0,
            RequestError::new(ErrorCode::UnexpectedFrame, "already said hello"),
        ),
        ClientFrame::Join { request_id, group } => match hub.join(session, &group) {
            Ok(head_seq) => Some(ServerFrame::Joined {
                request_id,
                group,
                head_seq,
            }),
            Err(e) => err(request_id, e),
        },
        ClientFrame::Leave { request_id, group } => match hub.leave(session, &group) {
            Ok(()) => Some(ServerFrame::Left { request_id, group }),
            Err(e) => err(request_id, e),
        },
        ClientFrame::Send {
            request_id,
            group,
            client_msg_id,
            body,
        } => {
            // Backpressure: a client with max_inflight_sends unacked sends waits here, and
            // stops being read, until an ack frees a slot.
            let permit = inflight.clone().acquire_owned().await.ok()?;
            let slot = resp_tx.clone().reserve_owned().await.ok()?;
            let req = SendRequest {
                request_id,
                group,
                client_msg_id,
                body,
            };
            match hub.send(session, req, slot, permit).await {
                Ok(()) => None,
                Err(e) => err(request_id, e),
            }
        }
        ClientFrame::Fetch {
            request_id,
            group,
            after_seq,
            limit,
        } => match hub.fetch(session, &group, after_seq, limit) {
            Ok((messages, head_seq)) => Some(ServerFrame::FetchResult {
                request_id,
                group,
                messages,
                head_seq,
            }),
            Err(e) => err(request_id, e),
        },
        ClientFrame::AckDelivery { group, seq } => hub
            .ack_delivery(session, &group, seq)
            .err()
            .and_then(|e| err(0, e)),
        ClientFrame::Receipt { group, seq, kind } => hub
            .receipt(session, &group, seq, kind)
            .err()
            .and_then(|e| err(0, e)),
        ClientFrame::Presence { state } => hub
            .set_presence(session, state)
            .err()
            .and_then(|e| err(0, e)),
        ClientFrame::Ping { request_id } => Some(ServerFrame::Pong { request_id }),
    }
}

/// Writes responses to the control stream, gathering whatever is queued into one write.
async fn control_writer(mut rx: mpsc::Receiver<Bytes>, mut send: SendStream) {
    let send = send.quic();
    // Grown on first use (`recv_many` pushes): 64 slots up front were 2 KiB of every
    // connection, most of which never answer more than a few requests at once.
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, MAX_WRITE_BATCH).await > 0 {
        if send.write_all_chunks(&mut batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Answers every further client-opened bidirectional stream with `UnexpectedStream`, and stops
/// every client-opened unidirectional one (only WebTransport clients can open those); closes
/// the connection if a client keeps opening them.
async fn refuse_extra_streams(conn: Conn) {
    let frame = wire::encode_server(&ServerFrame::Error(
        RequestError::new(
            ErrorCode::UnexpectedStream,
            "only one control stream is used",
        )
        .frame(0),
    ));
    let code = u32::from(ErrorCode::UnexpectedStream.as_u16());
    let mut count = 0u32;
    loop {
        let answer = tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => Some((send, recv)),
                Err(_) => return,
            },
            uni = conn.accept_uni() => match uni {
                Ok(mut recv) => {
                    let _ = recv.quic().stop(code.into());
                    None
                }
                Err(_) => return,
            },
        };
        count += 1;
        if count > MAX_UNEXPECTED_STREAMS {
            close(
                &conn,
                &RequestError::new(ErrorCode::UnexpectedStream, "too many unexpected streams"),
            );
            return;
        }
        if let Some((mut send, mut recv)) = answer {
            let _ = recv.quic().stop(code.into());
            let send = send.quic();
            let _ = send.write_all(&frame).await;
            let _ = send.finish();
        }
    }
}
