//! The admin socket's own guarantees, against a stand-in control thread:
//! its mode from the first moment, peer admission by credentials, the
//! deadline for a whole request, slow clients that delay nobody, and a
//! shutdown that does not wait on them.
//!
//! The admission tests switch user with `setpriv` and need root; they fail
//! loudly without it unless `SHOAL_SKIP_PRIVILEGED=1`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_controlplane::admin::{decode_response, encode_request, Body};
use shoal_controlplane::{Request, Response, ReturnCode};
use shoal_engine::control::admin::Call;
use shoal_engine::control::{
    AdminCall, AdminCounters, AdminOptions, AdminServer, Admission, Limits,
};
use shoal_testkit::privileged;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-adm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Answers every call at once, as a healthy control thread would, until
/// the channel closes: `query` with "fake", `reload` with the result of
/// reading the file.
fn control_thread(calls: Receiver<AdminCall>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok((call, reply)) = calls.recv() {
            let resp = match call {
                Call::Verb(_) => Response::new(ReturnCode::Ok, "fake", Body::None),
                Call::Reload(r) => Response::new(
                    ReturnCode::Ok,
                    format!("read {}: {}", r.path.display(), r.config.is_ok()),
                    Body::None,
                ),
            };
            let _ = reply.send(resp);
        }
    })
}

struct Served {
    socket: PathBuf,
    server: Option<AdminServer>,
    counters: Arc<AdminCounters>,
    control: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    fn start(dir: &Path, admission: Admission, limits: Limits) -> Self {
        let socket = dir.join("host1.sock");
        let (tx, rx) = sync_channel(16);
        let counters = Arc::new(AdminCounters::default());
        let server = AdminServer::spawn(
            AdminOptions {
                socket: socket.clone(),
                config: dir.join("cluster.toml"),
                admission,
                limits,
            },
            tx,
            counters.clone(),
        )
        .expect("admin socket");
        Self {
            socket,
            server: Some(server),
            counters,
            control: Some(control_thread(rx)),
        }
    }

    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shut_down();
        }
        if let Some(c) = self.control.take() {
            c.join().unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop();
    }
}

fn query(socket: &Path) -> Response {
    shoal_engine::control::call(socket, &Request::Query).expect("query")
}

/// Under a umask that would leave the socket open to everyone, a watcher
/// stat()ing the path in a tight loop through hundreds of starts never
/// sees it with any mode but 0600 (binding at the path and then chmod-ing
/// leaves a window a watcher catches).
#[test]
fn the_socket_is_0600_from_the_first_moment() {
    let dir = scratch("mode");
    // Widening the mask only affects files this test process creates.
    let old = shoal_engine::sys::umask::replace(0);
    let path = dir.join("host1.sock");
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            let mut looks = 0u64;
            while !done.load(Ordering::Relaxed) {
                if let Ok(m) = std::fs::symlink_metadata(&path) {
                    if m.file_type().is_socket() {
                        seen.insert(m.mode() & 0o7777);
                        looks += 1;
                    }
                }
            }
            (seen, looks)
        })
    };
    for _ in 0..300 {
        let mut s = Served::start(&dir, Admission::default(), Limits::default());
        let mode = std::fs::metadata(&s.socket).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "right after bind");
        s.stop();
    }
    done.store(true, Ordering::Relaxed);
    let (seen, looks) = watcher.join().unwrap();
    shoal_engine::sys::umask::replace(old);
    assert!(looks > 0, "the watcher never saw the socket");
    assert_eq!(
        seen,
        BTreeSet::from([0o600]),
        "modes seen at the socket's path ({looks} looks)"
    );
    // Nothing left behind: no socket, no staging directory.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With an admin group the socket is 0660 and belongs to that group.
#[test]
fn an_admin_group_gets_0660_and_the_group() {
    if !privileged("an_admin_group_gets_0660_and_the_group") {
        return;
    }
    let dir = scratch("group");
    let admission = Admission {
        group: Some(("t".into(), 4242)),
    };
    let s = Served::start(&dir, admission, Limits::default());
    let m = std::fs::metadata(&s.socket).unwrap();
    assert_eq!((m.mode() & 0o7777, m.gid()), (0o660, 4242));
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `shoal query` run as `uid` with supplementary `groups`: its exit code
/// and output.
fn query_as(socket: &Path, uid: u32, groups: &[u32]) -> (i32, String) {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"));
    if groups.is_empty() {
        cmd.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        cmd.arg(format!("--groups={}", list.join(",")));
    }
    let out = cmd
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .args(["query", "--socket"])
        .arg(socket)
        .output()
        .expect("setpriv");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Root is served; a member of the admin group is served; anyone else is
/// refused by the credentials the kernel recorded, even when the socket's
/// mode would let them in, and counted.
#[test]
fn peers_are_admitted_by_their_credentials() {
    if !privileged("peers_are_admitted_by_their_credentials") {
        return;
    }
    let dir = scratch("peers");
    let admission = Admission {
        group: Some(("t".into(), 4242)),
    };
    let s = Served::start(&dir, admission, Limits::default());
    assert_eq!(query(&s.socket).message, "fake", "root is served");

    let (code, out) = query_as(&s.socket, 65534, &[4242]);
    assert_eq!(code, 0, "a member of the admin group is served: {out}");
    assert!(out.contains("fake"), "{out}");

    // The mode keeps others out of a 0660 socket...
    let (code, out) = query_as(&s.socket, 65534, &[]);
    assert_ne!(code, 0, "{out}");
    assert_eq!(s.counters.refused.load(Ordering::Relaxed), 0);
    // ... and the credentials do when the mode would not.
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = query_as(&s.socket, 65534, &[1, 2]);
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("permission denied: uid 65534") && out.contains("group t (4242)"),
        "{out}"
    );
    assert_eq!(s.counters.refused.load(Ordering::Relaxed), 1);
    drop(s);

    // Without a group, root only.
    let s = Served::start(&dir, Admission::default(), Limits::default());
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, out) = query_as(&s.socket, 65534, &[4242]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("is not root"), "{out}");
    assert_eq!(query(&s.socket).message, "fake");
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn short_limits() -> Limits {
    Limits {
        request: Duration::from_millis(400),
        ..Limits::default()
    }
}

/// A client that sends one byte at a time, each well within any per-read
/// timeout, is cut off at the deadline for the whole request.
#[test]
fn a_trickling_client_is_cut_off_at_the_deadline() {
    let dir = scratch("trickle");
    let s = Served::start(&dir, Admission::default(), short_limits());
    let mut c = UnixStream::connect(&s.socket).unwrap();
    let started = Instant::now();
    let line = encode_request(&Request::Query);
    let mut cut = None;
    // Never the newline: the request never completes.
    for b in line.trim_end().as_bytes().iter().cycle().take(200) {
        if c.write_all(&[*b]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    let _ = BufReader::new(&c).read_line(&mut answer);
    let elapsed = cut.unwrap_or_else(|| started.elapsed());
    assert!(
        answer.contains("no complete request within 400 ms"),
        "answer: {answer:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1500),
        "cut off after {elapsed:?}"
    );
    assert_eq!(s.counters.timed_out.load(Ordering::Relaxed), 1);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Clients that connect and send nothing do not delay another client's
/// `query`, up to the connection cap; past it, a client is told "busy" at
/// once rather than kept waiting.
#[test]
fn a_stuck_client_delays_nobody() {
    let dir = scratch("stuck");
    let limits = Limits {
        request: Duration::from_secs(30),
        connections: 3,
        ..Limits::default()
    };
    let s = Served::start(&dir, Admission::default(), limits);
    let _stuck: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&s.socket).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    assert_eq!(query(&s.socket).message, "fake");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "query took {took:?}");

    let _third = UnixStream::connect(&s.socket).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let started = Instant::now();
    let r = query(&s.socket);
    assert!(r.message.starts_with("busy"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(s.counters.busy.load(Ordering::Relaxed), 1);
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Shutdown completes promptly while one client is stuck mid-request and
/// another waits for an answer the control thread never gives.
#[test]
fn shutdown_does_not_wait_on_stuck_clients() {
    let dir = scratch("shutdown");
    let socket = dir.join("host1.sock");
    let (tx, rx) = sync_channel::<AdminCall>(16);
    let limits = Limits {
        request: Duration::from_secs(30),
        answer: Duration::from_secs(30),
        ..Limits::default()
    };
    let server = AdminServer::spawn(
        AdminOptions {
            socket: socket.clone(),
            config: dir.join("cluster.toml"),
            admission: Admission::default(),
            limits,
        },
        tx,
        Arc::new(AdminCounters::default()),
    )
    .unwrap();
    let _stuck = UnixStream::connect(&socket).unwrap();
    let mut waiting = UnixStream::connect(&socket).unwrap();
    waiting
        .write_all(encode_request(&Request::Stop).as_bytes())
        .unwrap();
    // The control thread takes the call and never answers.
    let held = rx.recv_timeout(Duration::from_secs(2)).expect("the call");
    let started = Instant::now();
    server.shut_down();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    assert!(!socket.exists(), "the socket is removed");
    let mut answer = String::new();
    waiting
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let _ = BufReader::new(&waiting).read_line(&mut answer);
    if !answer.is_empty() {
        let r = decode_response(&answer).unwrap();
        assert_eq!(r.code, ReturnCode::Stopped, "{r:?}");
    }
    drop(held);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `reload` reads its file on the connection's thread: a file that takes
/// forever to read (a FIFO nobody writes yet) holds that one request and
/// nothing else; the control thread never sees it until it is read.
#[test]
fn reload_reads_its_file_off_the_control_thread() {
    let dir = scratch("reload");
    let fifo = dir.join("cluster.toml");
    let made = Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&fifo)
        .status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo {}", fifo.display());
    let s = Served::start(&dir, Admission::default(), Limits::default());
    let socket = s.socket.clone();
    let reload = std::thread::spawn(move || {
        shoal_engine::control::call(&socket, &Request::Reload).expect("reload")
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(query(&s.socket).message, "fake");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!reload.is_finished(), "the reload waits for its file");
    std::fs::write(&fifo, "not a config").unwrap();
    let r = reload.join().unwrap();
    assert!(r.message.contains("cluster.toml: false"), "{r:?}");
    drop(s);
    std::fs::remove_dir_all(&dir).unwrap();
}
