//! Accepting and holding connections: a cap on how many are open, the request-head and idle
//! keep-alive timeouts, and graceful shutdown.
//!
//! hyper serves each connection, and its `header_read_timeout` bounds the time to a complete
//! request head (from connect, or from the end of the previous response). What hyper has no
//! setting for is here: the cap on open connections, and closing a keep-alive connection that
//! has not started its next request within `idle_timeout_ms`.
//!
//! At the cap, a new connection takes the place of the oldest one that has no request in
//! progress (still sending its head, or idle between requests): a crowd of half-open
//! connections cannot lock out clients that send whole requests. Only when every open
//! connection is busy with a request is the newcomer refused (503, closed at once).

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::config::ServeLimits;

/// Connection counters for `/metrics`.
#[derive(Default)]
pub struct ConnMetrics {
    pub open: AtomicUsize,
    pub accepted: AtomicU64,
    /// New connections turned away: at the cap with every open connection busy.
    pub refused: AtomicU64,
    /// Connections without a request in progress closed to make room for a new one.
    pub evicted: AtomicU64,
    /// Closed for not sending a complete request head within `header_timeout_ms`.
    pub head_timeouts: AtomicU64,
    /// Keep-alive connections closed after `idle_timeout_ms` without a new request.
    pub idle_timeouts: AtomicU64,
}

/// One open connection as the accept loop and the cap see it.
struct Slot {
    /// Requests whose response has not been sent in full.
    busy: AtomicUsize,
    /// Since when the connection has waited for its next request (None: a request or a
    /// first byte of one is in, or no request has been made yet, which the head timeout
    /// covers).
    idle_since: Mutex<Option<Instant>>,
    evict: Notify,
}

impl Slot {
    fn new() -> Self {
        Slot {
            busy: AtomicUsize::new(0),
            idle_since: Mutex::new(None),
            evict: Notify::new(),
        }
    }

    fn idle_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evictable(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }

    /// When the idle timeout closes this connection, if it is idle.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.idle_since().map(|t| t + idle)
    }
}

/// Marks its slot busy from the start of a request until its response body is dropped
/// (sent in full, or the connection gone).
struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: Arc<Slot>) -> Self {
        slot.busy.fetch_add(1, Ordering::SeqCst);
        Busy(slot)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if self.0.busy.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.0.idle_since() = Some(Instant::now());
        }
    }
}

/// A response body that keeps its connection busy until it is dropped.
struct TrackedBody {
    inner: axum::body::Body,
    _busy: Busy,
}

impl http_body::Body for TrackedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The router as a hyper service, marking the connection busy per request.
#[derive(Clone)]
struct Tracked {
    router: Router,
    slot: Arc<Slot>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = hyper::Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn call(&self, req: hyper::Request<Incoming>) -> Self::Future {
        let busy = Busy::new(self.slot.clone());
        let router = self.router.clone();
        Box::pin(async move {
            let res = router.oneshot(req.map(axum::body::Body::new)).await?;
            Ok(res.map(|inner| TrackedBody { inner, _busy: busy }))
        })
    }
}

/// The socket, closed (as end of input) once the connection has been idle between requests
/// for `idle` and its slot is still idle.
struct Watched {
    io: TcpStream,
    slot: Arc<Slot>,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    metrics: Arc<ConnMetrics>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    *this.slot.idle_since() = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(deadline) = this.slot.idle_deadline(this.idle) else {
                    return Poll::Pending;
                };
                this.timer.as_mut().reset(deadline);
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                // End of input while idle: hyper closes the connection without an error.
                this.metrics.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The open connections, oldest first.
#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Arc<Slot>>,
}

impl Table {
    /// A place for a new connection: free, or taken from the oldest connection without a
    /// request in progress. None when all `max` are busy.
    fn admit(&mut self, max: usize, metrics: &ConnMetrics) -> Option<(u64, Arc<Slot>)> {
        if self.open.len() >= max {
            let victim = self
                .open
                .iter()
                .find(|(_, s)| s.evictable())
                .map(|(id, _)| *id)?;
            if let Some(slot) = self.open.remove(&victim) {
                slot.evict.notify_one();
                metrics.evicted.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let slot = Arc::new(Slot::new());
        self.open.insert(id, slot.clone());
        metrics.open.store(self.open.len(), Ordering::Relaxed);
        Some((id, slot))
    }

    fn release(&mut self, id: u64, metrics: &ConnMetrics) {
        self.open.remove(&id);
        metrics.open.store(self.open.len(), Ordering::Relaxed);
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
connection: close\r\ncontent-length: 0\r\n\r\n";

/// Accepts connections until `stop` completes, then stops listening, asks every connection
/// to finish its request in progress, and returns once all are closed.
pub async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: &ServeLimits,
    metrics: Arc<ConnMetrics>,
    stop: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout())
        .keep_alive(true);
    let graceful = GracefulShutdown::new();
    let table = Arc::new(Mutex::new(Table::default()));
    let mut last_accept_error: Option<Instant> = None;
    tokio::pin!(stop);
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_failed(&e, &mut last_accept_error).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let admitted = table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(limits.max_connections, &metrics);
        let Some((id, slot)) = admitted else {
            metrics.refused.fetch_add(1, Ordering::Relaxed);
            // Best effort and never blocking: the socket buffer of a new connection has room.
            let _ = stream.try_write(REFUSED);
            continue;
        };
        metrics.accepted.fetch_add(1, Ordering::Relaxed);
        // Small writes (streamed events) go out at once.
        let _ = stream.set_nodelay(true);
        let io = Watched {
            io: stream,
            slot: slot.clone(),
            idle: limits.idle_timeout(),
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            metrics: metrics.clone(),
        };
        let service = Tracked {
            router: router.clone(),
            slot: slot.clone(),
        };
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        let (table, metrics) = (table.clone(), metrics.clone());
        tokio::spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        if e.is_timeout() {
                            metrics.head_timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // Dropping the connection closes its socket.
                _ = slot.evict.notified() => {}
            }
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .release(id, &metrics);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Out of descriptors (EMFILE/ENFILE) or a connection reset before it was accepted: say so
/// at most once a second, and pause briefly so that a full descriptor table does not spin
/// the loop.
async fn accept_failed(e: &io::Error, last: &mut Option<Instant>) {
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
        eprintln!("vitrine serve: accepting a connection failed: {e}");
        *last = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The process's open-file limit: raised towards the hard limit when the soft one leaves
/// too little room for `max_connections`, and a warning when it still does.
#[cfg(unix)]
pub fn check_descriptor_limit(max_connections: usize) {
    // Model files, the index, the listener, stdio and the runtime's own descriptors.
    const RESERVE: u64 = 128;
    let needed = max_connections as u64 + RESERVE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let soft = lim.rlim_cur as u64;
    if soft >= needed {
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: needed.min(lim.rlim_max as u64) as libc::rlim_t,
        rlim_max: lim.rlim_max,
    };
    let now = if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        raised.rlim_cur as u64
    } else {
        soft
    };
    if now < needed {
        eprintln!(
            "vitrine serve: warning: the open-file limit is {now}, too low for \
             limits.max_connections = {max_connections} (needs about {needed}): raise it \
             (ulimit -n) or lower limits.max_connections"
        );
    }
}

#[cfg(not(unix))]
pub fn check_descriptor_limit(_max_connections: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let m = ConnMetrics::default();
        let mut t = Table::default();
        let (a, sa) = t.admit(2, &m).unwrap();
        let (_b, sb) = t.admit(2, &m).unwrap();
        // Both busy: no room.
        let busy = (Busy::new(sa.clone()), Busy::new(sb.clone()));
        assert!(t.admit(2, &m).is_none());
        assert_eq!(m.evicted.load(Ordering::Relaxed), 0);
        // The older one finishes its response: it is the one that goes.
        drop(busy.0);
        let (c, _) = t.admit(2, &m).unwrap();
        assert!(!t.open.contains_key(&a));
        assert!(t.open.contains_key(&c));
        assert_eq!(t.open.len(), 2);
        assert_eq!(m.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(m.open.load(Ordering::Relaxed), 2);
        drop(busy.1);
        t.release(c, &m);
        assert_eq!(m.open.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn idle_deadline_runs_only_between_requests() {
        let slot = Arc::new(Slot::new());
        let idle = Duration::from_millis(100);
        // A new connection is under the head timeout, not the idle one.
        assert_eq!(slot.idle_deadline(idle), None);
        let busy = Busy::new(slot.clone());
        assert_eq!(slot.idle_deadline(idle), None);
        drop(busy);
        let deadline = slot.idle_deadline(idle).expect("idle after the response");
        assert!(deadline > Instant::now());
        // The first byte of the next request stops the clock.
        *slot.idle_since() = None;
        assert_eq!(slot.idle_deadline(idle), None);
    }
}
