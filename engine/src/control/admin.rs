//! The admin socket: a local Unix stream socket, one JSON request line in,
//! one JSON response line out ([`shoal_controlplane::admin`]). Its default
//! path is `/run/shoal/host<ID>.sock`; `shoal run --admin-socket` and the
//! verbs' `--socket` change it.
//!
//! # What it owns
//!
//! The listener ([`AdminServer`]): it accepts connections, admits peers,
//! reads each request, hands it to the control thread as an [`AdminCall`]
//! and writes the answer back; and the client side ([`call`]) the `shoal`
//! verbs use. The control thread answers
//! ([`super::ControlLoop::handle_admin`] and
//! [`super::ControlLoop::handle_reload`]).
//!
//! # What it guarantees
//!
//! - **Mode from the start.** The socket is bound inside a fresh private
//!   directory (mode 0700, which no umask can widen), given its mode (0600,
//!   or 0660 and the admin group when `[admin] group` is set) and owner
//!   there, and only then renamed to its path. `rename(2)` is atomic, so no
//!   process ever finds the socket at its path with another mode. A umask
//!   set around `bind` would be process-wide (it changes every other
//!   thread's file creation meanwhile), and a Unix socket has no
//!   `fchmod` before `bind`; the private directory needs neither.
//! - **Peers are checked.** Each connection's credentials come from the
//!   kernel (`SO_PEERCRED`, `SO_PEERGROUPS`, recorded at `connect`): root,
//!   or a member of the configured group, is served; anyone else gets one
//!   refusal line and is counted ([`AdminCounters::refused`]), whatever the
//!   socket's mode says.
//! - **A deadline per request, not per read.** A request line must arrive
//!   whole within [`Limits::request`] of the connection's acceptance; a
//!   client that trickles bytes is cut off then.
//! - **Nobody waits on a slow client.** The accept loop never reads or
//!   blocks on a connection: each is served on its own thread, at most
//!   [`Limits::connections`] at once (more get a "busy" line at once).
//!   Shutdown wakes every connection and waits at most
//!   [`Limits::shutdown`] for them.
//! - **The control thread does no I/O for a verb.** `reload` reads and
//!   validates the configuration here, on the connection's thread, and
//!   hands the result in ([`Call::Reload`]).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use shoal_controlplane::admin::{decode_request, encode_response, Body};
use shoal_controlplane::{Machine, Request, Response, ReturnCode};

use crate::sys::peer::{peer_credentials, PeerCred};

/// The default admin socket of host `id`.
pub fn default_socket(id: u8) -> PathBuf {
    PathBuf::from(format!("/run/shoal/host{id}.sock"))
}

/// Longest request line accepted, bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What the connection threads hand the control thread.
#[derive(Debug)]
pub enum Call {
    /// A verb the control plane's machine answers.
    Verb(Request),
    /// `reload`, with the configuration file already read and validated.
    Reload(Box<Reload>),
}

/// A configuration read for `reload`, off the control thread.
#[derive(Debug)]
pub struct Reload {
    /// The file read.
    pub path: PathBuf,
    /// What it holds, or every problem found in it.
    pub config: Result<shoal_config::Config, shoal_config::ConfigErrors>,
}

impl Reload {
    /// Reads and validates the configuration at `path` (file I/O: never on
    /// the control thread).
    pub fn read(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            config: shoal_config::load(path),
        }
    }
}

/// One admin call and where its answer goes.
pub type AdminCall = (Call, SyncSender<Response>);

/// Time and count bounds of the admin socket.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From accepting a connection until its whole request line is read.
    pub request: Duration,
    /// For the control thread's answer once the request is read.
    pub answer: Duration,
    /// For writing the answer.
    pub write: Duration,
    /// Connections served at once.
    pub connections: usize,
    /// Longest shutdown waits for connections still being served.
    pub shutdown: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(5),
            answer: Duration::from_secs(10),
            write: Duration::from_secs(2),
            connections: 8,
            shutdown: Duration::from_secs(1),
        }
    }
}

/// Who may use the socket: root always, and members of `group` when set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    /// The admin group: its name (for messages) and ID.
    pub group: Option<(String, u32)>,
}

impl Admission {
    /// Whether `peer` may use the socket.
    pub fn admits(&self, peer: &PeerCred) -> bool {
        peer.uid == 0
            || self
                .group
                .as_ref()
                .is_some_and(|(_, gid)| peer.in_group(*gid))
    }

    /// The socket file's mode: 0600, or 0660 with an admin group.
    pub fn mode(&self) -> u32 {
        if self.group.is_some() {
            0o660
        } else {
            0o600
        }
    }

    fn refusal(&self, peer: &PeerCred) -> String {
        let who = format!("uid {} (pid {})", peer.uid, peer.pid);
        match &self.group {
            Some((name, gid)) => {
                format!("permission denied: {who} is neither root nor in group {name} ({gid})")
            }
            None => format!("permission denied: {who} is not root ([admin] group is not set)"),
        }
    }
}

/// What the admin socket has seen.
#[derive(Debug, Default)]
pub struct AdminCounters {
    /// Requests answered.
    pub served: AtomicU64,
    /// Connections refused: the peer is neither root nor in the admin group.
    pub refused: AtomicU64,
    /// Connections cut off at the request deadline.
    pub timed_out: AtomicU64,
    /// Connections turned away because [`Limits::connections`] were in use.
    pub busy: AtomicU64,
}

impl AdminCounters {
    /// The counters as JSON, for the stats file.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "served": self.served.load(Ordering::Relaxed),
            "refused": self.refused.load(Ordering::Relaxed),
            "timed_out": self.timed_out.load(Ordering::Relaxed),
            "busy": self.busy.load(Ordering::Relaxed),
        })
    }
}

/// Where and how to serve.
#[derive(Clone, Debug)]
pub struct AdminOptions {
    /// The socket's path.
    pub socket: PathBuf,
    /// The configuration file `reload` reads.
    pub config: PathBuf,
    /// Who may use it.
    pub admission: Admission,
    /// Time and count bounds.
    pub limits: Limits,
}

/// The admin socket being served (see the module docs). Dropping it shuts
/// it down like [`AdminServer::shut_down`].
#[derive(Debug)]
pub struct AdminServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What every connection thread shares.
#[derive(Debug)]
struct Shared {
    calls: SyncSender<AdminCall>,
    config: PathBuf,
    limits: Limits,
    counters: Arc<AdminCounters>,
    stop: Arc<AtomicBool>,
}

impl AdminServer {
    /// Binds the socket (see the module docs for how its mode is set) and
    /// serves it on its own thread, handing calls to `calls` and counting
    /// into `counters`.
    ///
    /// # Errors
    /// The directory, the bind, the mode or owner, or the rename failed, or
    /// a live shoal already serves this path.
    pub fn spawn(
        options: AdminOptions,
        calls: SyncSender<AdminCall>,
        counters: Arc<AdminCounters>,
    ) -> std::io::Result<Self> {
        let listener = bind_private(
            &options.socket,
            options.admission.mode(),
            options.admission.group.as_ref().map(|(_, gid)| *gid),
        )?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            calls,
            config: options.config,
            limits: options.limits,
            counters,
            stop: stop.clone(),
        });
        let admission = options.admission;
        let path = options.socket;
        let thread = std::thread::Builder::new()
            .name("shoal-admin".into())
            .spawn(move || {
                accept_loop(&listener, &admission, &shared);
                let _ = std::fs::remove_file(&path);
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops accepting, wakes every connection still served, waits for
    /// them at most [`Limits::shutdown`] and removes the socket.
    pub fn shut_down(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Binds a Unix socket at `path` that is never reachable there with a
/// mode other than `mode` (and group other than `group`, when set): bound
/// in a fresh 0700 directory beside `path`, set up, then renamed into
/// place.
fn bind_private(path: &Path, mode: u32, group: Option<u32>) -> std::io::Result<UnixListener> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    // A stale socket of a dead process is replaced by the rename below; a
    // live one is not.
    if path.exists() && UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            ErrorKind::AddrInUse,
            format!("{} is served by a running shoal", path.display()),
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "admin.sock".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let staging = dir.join(format!(".{name}.{}.{nonce}", std::process::id()));
    // `create` fails if the name exists: never reuse a directory someone
    // else made. 0700 minus any umask stays within 0700.
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let bound = (|| {
        let inner = staging.join("s");
        let listener = UnixListener::bind(&inner)?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(&inner, None, Some(gid))?;
        }
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&inner, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(staging.join("s"));
    let _ = std::fs::remove_dir(&staging);
    bound
}

fn accept_loop(listener: &UnixListener, admission: &Admission, shared: &Arc<Shared>) {
    let mut live: Vec<(UnixStream, JoinHandle<()>)> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        live.retain(|(_, t)| !t.is_finished());
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let peer = match peer_credentials(&stream) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "admin socket: no peer credentials; closed");
                continue;
            }
        };
        if !admission.admits(&peer) {
            let n = shared.counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 10 || n.is_power_of_two() {
                tracing::warn!(
                    uid = peer.uid,
                    gid = peer.gid,
                    pid = peer.pid,
                    refused = n,
                    "admin socket: peer refused"
                );
            }
            let msg = admission.refusal(&peer);
            reply_at_once(
                stream,
                &Response::new(ReturnCode::BadParams, msg, Body::None),
            );
            continue;
        }
        if live.len() >= shared.limits.connections {
            shared.counters.busy.fetch_add(1, Ordering::Relaxed);
            let msg = format!("busy: {} admin requests in progress; try again", live.len());
            reply_at_once(
                stream,
                &Response::new(ReturnCode::Converging, msg, Body::None),
            );
            continue;
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let s = shared.clone();
        match std::thread::Builder::new()
            .name("shoal-admin-conn".into())
            .spawn(move || serve_connection(stream, &s))
        {
            Ok(t) => live.push((handle, t)),
            Err(e) => tracing::warn!(error = %e, "admin socket: no thread for a connection"),
        }
    }
    // Wake every connection (a blocked read or write returns at once),
    // then wait a bounded time; a thread still running after that is left
    // to end on its own deadline.
    for (s, _) in &live {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    let until = Instant::now() + shared.limits.shutdown;
    while Instant::now() < until && live.iter().any(|(_, t)| !t.is_finished()) {
        std::thread::sleep(Duration::from_millis(5));
    }
    for (_, t) in live {
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// Writes `response` without waiting: a peer that does not read gets
/// what fits in the socket buffer (one short line always does).
fn reply_at_once(mut stream: UnixStream, response: &Response) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(encode_response(response).as_bytes());
}

/// Why a request line was not read.
enum ReadFailure {
    /// The deadline passed first.
    Deadline,
    /// Longer than [`MAX_REQUEST`].
    TooLong,
    /// The peer went away or shutdown woke the read.
    Gone,
}

/// Reads one request line before `deadline`, however the bytes arrive.
fn read_line(stream: &mut UnixStream, deadline: Instant) -> Result<String, ReadFailure> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFailure::Deadline);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| ReadFailure::Gone)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(ReadFailure::Gone),
            Ok(n) => {
                let end = chunk[..n].iter().position(|&b| b == b'\n');
                line.extend_from_slice(&chunk[..end.unwrap_or(n)]);
                if line.len() > MAX_REQUEST {
                    return Err(ReadFailure::TooLong);
                }
                if end.is_some() {
                    return Ok(String::from_utf8_lossy(&line).into_owned());
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(ReadFailure::Gone),
        }
    }
}

fn serve_connection(mut stream: UnixStream, shared: &Shared) {
    let accepted = Instant::now();
    let limits = shared.limits;
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let response = match read_line(&mut stream, accepted + limits.request) {
        Ok(line) => match decode_request(&line) {
            Ok(req) => answer(req, shared),
            Err(e) => Response::new(
                ReturnCode::BadParams,
                format!("bad request: {e}"),
                Body::None,
            ),
        },
        Err(ReadFailure::Deadline) => {
            shared.counters.timed_out.fetch_add(1, Ordering::Relaxed);
            Response::new(
                ReturnCode::BadParams,
                format!(
                    "no complete request within {} ms",
                    limits.request.as_millis()
                ),
                Body::None,
            )
        }
        Err(ReadFailure::TooLong) => Response::new(
            ReturnCode::BadParams,
            format!("request longer than {MAX_REQUEST} bytes"),
            Body::None,
        ),
        Err(ReadFailure::Gone) => return,
    };
    let _ = stream.set_write_timeout(Some(limits.write));
    if stream
        .write_all(encode_response(&response).as_bytes())
        .is_ok()
    {
        shared.counters.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands `req` to the control thread and waits (bounded, and no longer
/// than shutdown) for its answer.
fn answer(req: Request, shared: &Shared) -> Response {
    let call = match req {
        Request::Reload => Call::Reload(Box::new(Reload::read(&shared.config))),
        other => Call::Verb(other),
    };
    let (tx, rx) = sync_channel(1);
    match shared.calls.try_send((call, tx)) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Response::new(
                ReturnCode::Converging,
                "busy: the control thread has requests queued; try again",
                Body::None,
            )
        }
        Err(TrySendError::Disconnected(_)) => {
            return Response::new(ReturnCode::Stopped, "shoal is shutting down", Body::None)
        }
    }
    let until = Instant::now() + shared.limits.answer;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Response::new(ReturnCode::Stopped, "shoal is shutting down", Body::None);
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Response::new(
                ReturnCode::Converging,
                "the control thread did not answer in time",
                Body::None,
            );
        }
        match rx.recv_timeout(left.min(Duration::from_millis(50))) {
            Ok(r) => return r,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Response::new(ReturnCode::Stopped, "shoal is shutting down", Body::None)
            }
        }
    }
}

/// Sends one request to a running shoal and reads its answer.
pub fn call(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(shoal_controlplane::admin::encode_request(req).as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    shoal_controlplane::admin::decode_response(&line)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e.to_string()))
}

/// Answers `reload` with the configuration `reload` read: hands its rules
/// and weights to `machine`, unless it changes what only a restart can
/// change compared with `running` (the configuration in force, when known;
/// see [`shoal_config::Config::restart_only_changes`]): then nothing is
/// reloaded and the answer names the keys. No I/O: cheap enough for the
/// control thread.
pub fn apply_reload(
    reload: Reload,
    running: &mut Option<shoal_config::Config>,
    machine: &mut Machine,
    now: u64,
) -> Response {
    let path = reload.path;
    match reload.config {
        Ok(config) => {
            let needs_restart = running
                .as_ref()
                .map(|r| r.restart_only_changes(&config, machine.host()))
                .unwrap_or_default();
            if !needs_restart.is_empty() {
                return Response::new(
                    ReturnCode::BadParams,
                    format!(
                        "{} changes {}: reload applies rules and weights only; restart \
                         shoal to change these (nothing was reloaded)",
                        path.display(),
                        needs_restart.join(", ")
                    ),
                    Body::None,
                );
            }
            // The key is restart-only, so the running bucket seed stays.
            let seed = machine.spec().bucket_seed;
            machine.handle_reload(config.spec(seed), now);
            *running = running.take().map(|_| config);
            Response::new(
                ReturnCode::Ok,
                format!("reloaded {}", path.display()),
                Body::None,
            )
        }
        Err(errors) => Response::new(ReturnCode::BadParams, errors.to_string(), Body::None),
    }
}
