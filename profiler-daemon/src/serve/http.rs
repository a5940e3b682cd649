//! The HTTP side (axum on tokio): `/`, `/metrics`, `/healthz`, `/debug/pprof/exits`, and the
//! signals: SIGHUP reloads the config, SIGTERM/SIGINT stop serving.
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use super::collector::{log, Request};
use super::config::Config;
use super::metrics::encode;
use super::pprof::{DEFAULT_WINDOW, MAX_WINDOW};

#[derive(Clone)]
struct App {
    registry: prometheus::Registry,
    requests: Sender<Request>,
    /// Becomes true when the daemon stops: long pprof windows end early.
    stopping: watch::Receiver<bool>,
}

const INDEX: &str = "<!doctype html><html><head><title>kvmprof</title></head><body>\
<h1>kvmprof serve</h1><p>VM exits of every KVM guest on this host, by VM, vCPU, reason, port and guest function.</p>\
<ul><li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\
<li><a href=\"/healthz\">/healthz</a>: liveness</li>\
<li><a href=\"/debug/pprof/exits?seconds=10\">/debug/pprof/exits?seconds=10</a>: the next 10 s of exits as a gzipped pprof profile \
(<code>go tool pprof http://HOST/debug/pprof/exits?seconds=10</code>)</li></ul></body></html>\n";

/// Serves until SIGTERM or SIGINT; `config` is re-read on SIGHUP.
pub async fn serve(listener: std::net::TcpListener, registry: prometheus::Registry, requests: Sender<Request>, config: Option<PathBuf>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (stop_tx, stopping) = watch::channel(false);
    let app = App { registry, requests: requests.clone(), stopping };
    let router = Router::new()
        .route("/", get(|| async { Html(INDEX) }))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/debug/pprof/exits", get(pprof_exits))
        .with_state(app);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = term.recv() => { log("SIGTERM: stopping"); break; }
                _ = int.recv() => { log("SIGINT: stopping"); break; }
                _ = hup.recv() => reload(config.as_deref(), &requests),
            }
        }
        let _ = stop_tx.send(true);
    };
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}

fn reload(path: Option<&std::path::Path>, requests: &Sender<Request>) {
    let Some(path) = path else {
        log("SIGHUP: no --config file to reload");
        return;
    };
    match Config::load(path) {
        Ok(cfg) => {
            log(&format!("SIGHUP: reloaded {} (listen only changes on restart)", path.display()));
            let _ = requests.send(Request::Reload(Some(Box::new(cfg))));
        }
        Err(e) => {
            log(&format!("SIGHUP: {e}; keeping the previous configuration"));
            let _ = requests.send(Request::Reload(None));
        }
    }
}

async fn metrics(State(app): State<App>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], encode(&app.registry)).into_response()
}

#[derive(Deserialize)]
struct Window {
    seconds: Option<String>,
}

fn plain(status: StatusCode, msg: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], msg + "\n").into_response()
}

async fn pprof_exits(State(mut app): State<App>, Query(w): Query<Window>) -> Response {
    let window = match w.seconds.as_deref().map(str::parse::<f64>) {
        None => DEFAULT_WINDOW,
        Some(Ok(s)) if s.is_finite() && s > 0.0 && s <= MAX_WINDOW.as_secs_f64() => Duration::from_secs_f64(s),
        Some(_) => return plain(StatusCode::BAD_REQUEST, format!("seconds must be a number from 0 to {}", MAX_WINDOW.as_secs())),
    };
    let (tx, rx) = oneshot::channel();
    if app.requests.send(Request::WindowStart(tx)).is_err() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "the collector has stopped".into());
    }
    let mark = match rx.await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => return plain(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => return plain(StatusCode::SERVICE_UNAVAILABLE, "the collector has stopped".into()),
    };
    tokio::select! {
        _ = tokio::time::sleep(window) => {}
        _ = app.stopping.wait_for(|s| *s) => return plain(StatusCode::SERVICE_UNAVAILABLE, "kvmprof is stopping".into()),
    }
    let (tx, rx) = oneshot::channel();
    if app.requests.send(Request::WindowEnd(Box::new(mark), tx)).is_err() {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "the collector has stopped".into());
    }
    match rx.await {
        Ok(Ok(gz)) => (
            [(header::CONTENT_TYPE, "application/octet-stream"), (header::CONTENT_DISPOSITION, "attachment; filename=\"exits.pb.gz\"")],
            gz,
        )
            .into_response(),
        Ok(Err(e)) => plain(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(_) => plain(StatusCode::SERVICE_UNAVAILABLE, "the collector has stopped".into()),
    }
}
