//! `shoal server` bound off loopback requires its token on every request.
//!
//! The test gives the loopback interface an address of the benchmarking range (198.18.0.0/15,
//! RFC 2544), which no network routes, binds the server there and removes the address after.
//! Without the rights to add it (not root), the token logic is tested on loopback with
//! `--http-token`.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::server::{request, ServerProc};

/// An address the test put on `lo`, removed when dropped.
struct TestAddress(String);

impl TestAddress {
    fn add() -> Option<TestAddress> {
        let ip = format!("198.18.{}.{}", std::process::id() % 250 + 1, 7);
        let ok = Command::new("ip")
            .args(["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        ok.then_some(TestAddress(ip))
    }
}

impl Drop for TestAddress {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.0), "dev", "lo"])
            .output();
    }
}

/// Checks that `server` answers only requests carrying `token`.
fn check_token(server: &ServerProc, token: &str) {
    let list = "/api/v1/torrents";
    let none = server.req("GET", list, &[], b"");
    assert_eq!(none.status, 401, "{}", none.text());
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = server.req("GET", list, &[("Authorization", "Bearer nope")], b"");
    assert_eq!(wrong.status, 401);
    assert_eq!(server.req("GET", "/", &[], b"").status, 401, "the page too");
    // Refused on its head: the body is never waited for.
    let mut s = std::net::TcpStream::connect(&server.http).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "POST /api/v1/torrents HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-bittorrent\r\n\
         Content-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(
        common::server::parse_reply(&raw).map(|r| r.status),
        Some(401)
    );
    let bearer = format!("Bearer {token}");
    assert_eq!(
        server
            .req("GET", list, &[("Authorization", &bearer)], b"")
            .status,
        200
    );
    assert_eq!(
        server
            .req("GET", &format!("{list}?token={token}"), &[], b"")
            .status,
        200
    );
    assert_eq!(
        server
            .req("GET", &format!("/?token={token}"), &[], b"")
            .status,
        200
    );
    // A refused request changes nothing.
    let add = server.req(
        "PATCH",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        br#"{"download_limit": 5}"#,
    );
    assert_eq!(add.status, 401);
    let s = server.req("GET", "/api/v1/session", &[("Authorization", &bearer)], b"");
    assert_eq!(s.json()["download_limit"], 0);
}

#[test]
fn off_loopback_every_request_needs_the_token() {
    let tmp = common::tempdir();
    let dl = tmp.path().join("dl");
    match TestAddress::add() {
        Some(addr) => {
            let server = ServerProc::start_on(
                &dl,
                &tmp.path().join("state"),
                &format!("{}:0", addr.0),
                &[],
            );
            assert!(server.http.starts_with(&addr.0), "{}", server.http);
            // The generated token is printed at start.
            let log = server.log.lock().unwrap().join("\n");
            let token = log
                .split("needs the token ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or_else(|| panic!("no token printed: {log}"))
                .to_string();
            assert_eq!(token.len(), 32);
            check_token(&server, &token);
            assert!(server.terminate().success());
        }
        None => {
            eprintln!("cannot add a test address (not root?): testing the token on loopback");
            let server = ServerProc::start(
                &dl,
                &tmp.path().join("state"),
                &["--http-token", "s3cret-token"],
            );
            check_token(&server, "s3cret-token");
            assert!(server.terminate().success());
        }
    }
    // On loopback without a token, none is asked for.
    let server = ServerProc::start(&dl, &tmp.path().join("state2"), &[]);
    assert_eq!(
        request(&server.http, "GET", "/api/v1/torrents", &[], b"").status,
        200
    );
    assert!(server.terminate().success());
}
