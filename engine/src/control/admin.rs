//! The admin socket: a root-only (0600) Unix stream socket, one JSON
//! request line in, one JSON response line out
//! ([`shoal_controlplane::admin`]). Its default path is
//! `/run/shoal/host<ID>.sock`; `shoal run --admin-socket` and the verbs'
//! `--socket` change it.
//!
//! # What it owns
//!
//! The listener thread ([`serve_admin`]): it reads one request per
//! connection and hands it to the control thread as an [`AdminCall`],
//! waiting a bounded time for the answer; and the client side ([`call`])
//! the `shoal` verbs use. The control thread answers
//! ([`super::ControlLoop::handle_admin`]): the machine every verb but
//! `reload`, which needs the file system and is answered here ([`reload`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use shoal_controlplane::admin::{decode_request, encode_response, Body};
use shoal_controlplane::{Machine, Request, Response, ReturnCode};

/// The default admin socket of host `id`.
pub fn default_socket(id: u8) -> PathBuf {
    PathBuf::from(format!("/run/shoal/host{id}.sock"))
}

/// One admin request and where its answer goes.
pub type AdminCall = (Request, SyncSender<Response>);

/// Serves the admin socket on its own thread until `stop` is set: each
/// connection carries one request line and gets one response line.
pub fn serve_admin(
    path: &Path,
    calls: SyncSender<AdminCall>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A stale socket of a dead process is in the way of bind.
    if path.exists() && UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("shoal-admin".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = answer(stream, &calls);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })
}

fn answer(stream: UnixStream, calls: &SyncSender<AdminCall>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?)
        .take(64 * 1024)
        .read_line(&mut line)?;
    let response = match decode_request(&line) {
        Ok(req) => {
            let (tx, rx) = sync_channel(1);
            if calls.send((req, tx)).is_err() {
                Response::new(ReturnCode::Stopped, "shoal is shutting down", Body::None)
            } else {
                rx.recv_timeout(Duration::from_secs(10))
                    .unwrap_or_else(|_| {
                        Response::new(
                            ReturnCode::Converging,
                            "the control thread did not answer in time",
                            Body::None,
                        )
                    })
            }
        }
        Err(e) => Response::new(
            ReturnCode::BadParams,
            format!("bad request: {e}"),
            Body::None,
        ),
    };
    let mut stream = stream;
    stream.write_all(encode_response(&response).as_bytes())
}

/// Sends one request to a running shoal and reads its answer.
pub fn call(path: &Path, req: &Request) -> std::io::Result<Response> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    stream.write_all(shoal_controlplane::admin::encode_request(req).as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    shoal_controlplane::admin::decode_response(&line)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

/// Answers `reload`: reads the configuration at `path` and hands its rules
/// and weights to `machine`, unless it changes what only a restart can
/// change compared with `running` (the configuration in force, when known;
/// see [`shoal_config::Config::restart_only_changes`]): then nothing is
/// reloaded and the answer names the keys.
pub fn reload(
    path: &Path,
    running: &mut Option<shoal_config::Config>,
    machine: &mut Machine,
    now: u64,
) -> Response {
    match shoal_config::load(path) {
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
            machine.handle_reload(config.spec(), now);
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
