//! `vitrine serve` against clients that never finish: request heads sent one byte a second,
//! silent and half-sent connections, idle keep-alive connections, and more half-open
//! connections than `limits.max_connections` — over real TCP on loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use common::http::{get, post_json, Server};
use common::{build_index, s, trained_run};
use serde_json::json;

/// A tiny search index, built once per test binary.
static INDEX: LazyLock<PathBuf> = LazyLock::new(|| {
    let root = common::fresh_dir("serve-connections");
    let index = root.join("products.vtridx");
    build_index(&trained_run(&root, 1, "search"), &index);
    index
});

fn index() -> &'static Path {
    &INDEX
}

fn start(name: &str, limits: &str) -> Server {
    let dir = index().parent().unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, format!("[limits]\n{limits}\n")).unwrap();
    // Catalogue writes are not made here: the shared index is only read.
    Server::start(&["--config", s(&cfg), "--search", s(index())])
}

fn connect(srv: &Server) -> TcpStream {
    connect_to(&srv.base)
}

fn connect_to(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://")).unwrap()
}

/// What one read with a timeout saw.
#[derive(PartialEq)]
enum Seen {
    /// End of input or a reset: the server closed the connection.
    Closed,
    /// Bytes (a response).
    Data,
    /// Nothing within the timeout.
    Quiet,
}

fn read_for(conn: &mut TcpStream, timeout: Duration) -> Seen {
    let mut buf = [0u8; 4096];
    conn.set_read_timeout(Some(timeout)).unwrap();
    match conn.read(&mut buf) {
        Ok(0) => Seen::Closed,
        Ok(_) => Seen::Data,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Seen::Quiet
        }
        Err(_) => Seen::Closed,
    }
}

/// Reads until the server closes the connection or `limit` passes; how long that took from
/// `since`, or None if it stayed open.
fn closed_within(conn: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    while since.elapsed() < limit {
        if read_for(conn, Duration::from_millis(200)) == Seen::Closed {
            return Some(since.elapsed());
        }
    }
    None
}

/// A client that sends its request head one byte a second; how long until the server
/// closed the connection (or answered it), None if it was still open after `limit`.
fn slow_head(base: &str, limit: Duration) -> Option<Duration> {
    let mut conn = connect_to(base);
    let since = Instant::now();
    for byte in b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: 1\r\n\r\n" {
        if conn.write_all(&[*byte]).is_err() {
            return Some(since.elapsed());
        }
        // The one-second pause is a read: it notices the close as soon as it happens.
        if read_for(&mut conn, Duration::from_secs(1)) != Seen::Quiet {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
    }
    panic!("the whole head went through at one byte a second: no head timeout");
}

fn metric(srv: &Server, series: &str) -> f64 {
    let text = get(&srv.url("/metrics")).text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{text}"))
}

#[test]
fn slow_silent_and_idle_connections_are_cut_off() {
    let (header, idle) = (Duration::from_millis(3000), Duration::from_millis(1000));
    let srv = start(
        "timeouts",
        &format!(
            "header_timeout_ms = {}\nidle_timeout_ms = {}",
            header.as_millis(),
            idle.as_millis()
        ),
    );
    let grace = Duration::from_secs(2);
    let limit = header + grace;

    // Two slow clients, two silent ones, two that stop halfway through the request line.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let base = srv.base.clone();
            std::thread::spawn(move || slow_head(&base, limit + Duration::from_secs(5)))
        })
        .collect();
    let t0 = Instant::now();
    let mut silent: Vec<TcpStream> = (0..2).map(|_| connect(&srv)).collect();
    let mut half: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = connect(&srv);
            c.write_all(b"GET /heal").unwrap();
            c
        })
        .collect();
    for (what, conns) in [("silent", &mut silent), ("half a request line", &mut half)] {
        for c in conns.iter_mut() {
            let took = closed_within(c, t0, limit + Duration::from_secs(5));
            let took = took.unwrap_or_else(|| panic!("{what}: still open after {limit:?}"));
            assert!(
                took <= limit,
                "{what}: closed after {took:?} (limit {limit:?})"
            );
            eprintln!("{what}: closed after {took:?}");
        }
    }
    for t in slow {
        let took = t.join().unwrap().expect("1 byte/s client still open");
        assert!(took <= limit, "1 byte/s client closed after {took:?}");
        eprintln!("1 byte/s client: closed after {took:?}");
    }

    // A keep-alive connection that made one request and then says nothing.
    let mut conn = connect(&srv);
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let answered = read_response(&mut conn);
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let took = closed_within(
        &mut conn,
        Instant::now(),
        idle + grace + Duration::from_secs(5),
    )
    .expect("idle keep-alive connection still open");
    assert!(
        took <= idle + grace,
        "idle connection closed after {took:?}"
    );
    eprintln!("idle keep-alive connection: closed after {took:?}");
    // The idle timer closed it, not the (longer) head timeout.
    assert!(took < header, "idle connection closed after {took:?}");

    assert!(metric(&srv, "vitrine_connections_timed_out_total{phase=\"head\"}") >= 6.0);
    assert!(metric(&srv, "vitrine_connections_timed_out_total{phase=\"idle\"}") >= 1.0);
    // The server still answers.
    assert_eq!(get(&srv.url("/healthz")).status, 200);
}

/// One response head and its Content-Length body, read from a keep-alive connection.
fn read_response(conn: &mut TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

fn answered_within_a_second(what: &str, request: impl FnOnce() -> common::http::Reply) {
    let t = Instant::now();
    let r = request();
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
    eprintln!("{what} answered in {took:?}");
}

/// Count of the server process's open descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn half_open_connections_past_the_cap_do_not_lock_out_clients() {
    let max = 64;
    // Timeouts far longer than the test: only the cap keeps these connections in check.
    let srv = start(
        "cap",
        &format!("max_connections = {max}\nheader_timeout_ms = 60000\nidle_timeout_ms = 60000"),
    );
    let pid = srv.child.id();
    let before = open_fds(pid);
    let mut held = Vec::new();
    for i in 0..max + 50 {
        let mut c = connect(&srv);
        if i % 2 == 0 {
            c.write_all(b"POST /v1/sea").unwrap();
        }
        held.push(c);
    }
    // Let the server accept them all.
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(pid);
    assert!(
        during <= before + max + 4,
        "{during} descriptors open with {} half-open clients (before: {before}, cap {max})",
        held.len()
    );

    eprintln!(
        "descriptors: {before} before, {during} with {} half-open clients",
        held.len()
    );
    answered_within_a_second("/healthz", || get(&srv.url("/healthz")));
    answered_within_a_second("search", || {
        post_json(&srv.url("/v1/search"), &json!({"id": "201", "k": 3}))
    });
    assert!(metric(&srv, "vitrine_connections_evicted_total") >= 50.0);
    assert!(metric(&srv, "vitrine_connections_open") <= max as f64);
    drop(held);
}
