//! Starting and stopping a server: the checks made before anything listens (no non-loopback
//! address without an API key), the data dir and the queue (SQLite in the data dir or a shared
//! PostgreSQL database; jobs a previous process left running are released to run again), the one worker thread holding the loaded `Pipeline`, the
//! HTTP listener, and a graceful stop (no new jobs; the running one is cancelled and, as its
//! lease is released at the next start, runs again).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyvideo::denoiser::TransformerForm;
use hyvideo::generation::Pipeline;

use crate::api::{AppState, router};
use crate::queue::{JobQueue, QueueError, QueueLocation};
use crate::request::Limits;
use crate::worker::{Running, Wakeup, Worker};

/// Everything `hyvideo serve` is configured with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The queue's database (`--queue`).
    pub queue: QueueLocation,
    pub api_key: Option<String>,
    pub max_queue: usize,
    pub limits: Limits,
    pub lease_secs: i64,
    pub retention_secs: i64,
    pub worker_id: String,
    pub body_limit: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without an API key: pass --api-key KEY (or set \
         HYVIDEO_API_KEY), or listen on a loopback address such as 127.0.0.1"
    )]
    OpenWithoutKey(SocketAddr),
    #[error("{}: {source}", .path.display())]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("listening on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the server runtime: {0}")]
    Runtime(std::io::Error),
}

impl ServeConfig {
    /// What is refused before anything loads or listens: a non-loopback address without a key.
    pub fn check(&self) -> Result<(), ServeError> {
        if !self.listen.ip().is_loopback() && self.api_key.is_none() {
            return Err(ServeError::OpenWithoutKey(self.listen));
        }
        Ok(())
    }
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    /// Held so that the queue is dropped here, after both threads ended, never inside the HTTP
    /// runtime (a PostgreSQL connection cannot close from within another async runtime).
    queue: Option<Arc<dyn JobQueue>>,
    shutdown: Arc<AtomicBool>,
    running: Running,
    wakeup: Arc<Wakeup>,
    stop_http: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<std::thread::JoinHandle<()>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Check the configuration, open the queue, start the worker on `pipeline` and listen.
    pub fn start(config: ServeConfig, pipeline: Pipeline) -> Result<Server, ServeError> {
        Server::prepare(config)?.start(pipeline)
    }

    /// Everything that can fail before the engines are needed: the checks, the data dir and the
    /// queue (opened, schema created, orphans released). Loading engines can take minutes on a
    /// GPU, so `hyvideo serve` prepares first and loads after.
    pub fn prepare(config: ServeConfig) -> Result<Prepared, ServeError> {
        config.check()?;
        let videos = config.data_dir.join("videos");
        std::fs::create_dir_all(&videos).map_err(|source| ServeError::DataDir {
            path: videos.clone(),
            source,
        })?;
        let queue: Arc<dyn JobQueue> = Arc::from(config.queue.open(&config.data_dir)?);
        let released = queue.release_orphans(&config.worker_id)?;
        if released > 0 {
            eprintln!("serve: {released} job(s) left running by a previous process will run again");
        }
        Ok(Prepared { config, queue })
    }
}

/// A server ready to start: its configuration checked, its queue open.
pub struct Prepared {
    config: ServeConfig,
    queue: Arc<dyn JobQueue>,
}

impl Prepared {
    /// The request limits, to narrow them to what the loaded engines admit.
    pub fn limits_mut(&mut self) -> &mut Limits {
        &mut self.config.limits
    }

    /// Start the worker on `pipeline` and listen. Requests may ask for a step cache when its
    /// transformer is loaded in stages; they must give an `input_reference` image when its bundle
    /// is image-to-video, and must not otherwise.
    pub fn start(self, pipeline: Pipeline) -> Result<Server, ServeError> {
        let Prepared { mut config, queue } = self;
        config.limits.step_cache = matches!(
            pipeline.transformer().map(|t| t.form()),
            Ok(TransformerForm::Staged)
        );
        config.limits.image_condition = pipeline.image_condition();
        let running: Running = Arc::new(Mutex::new(Default::default()));
        let shutdown = Arc::new(AtomicBool::new(false));
        let wakeup = Arc::new(Wakeup::default());
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let state = Arc::new(AppState {
            queue: queue.clone(),
            data_dir: config.data_dir.clone(),
            limits: config.limits.clone(),
            api_key: config.api_key.clone(),
            max_queue: config.max_queue,
            running: running.clone(),
            ready: AtomicBool::new(true),
            poll_after_ms: 1000,
            body_limit: config.body_limit,
            wakeup: wakeup.clone(),
            metrics: metrics.clone(),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(ServeError::Runtime)?;
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(config.listen))
            .map_err(|source| ServeError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(state);
        let http = std::thread::spawn(move || {
            rt.block_on(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
                if let Err(e) = served {
                    eprintln!("serve: {e}");
                }
            });
        });
        let worker = Worker {
            queue: queue.clone(),
            pipeline,
            data_dir: config.data_dir.clone(),
            id: config.worker_id.clone(),
            lease_secs: config.lease_secs,
            retention_secs: config.retention_secs,
            running: running.clone(),
            shutdown: shutdown.clone(),
            idle: Duration::from_secs(1),
            wakeup: wakeup.clone(),
            metrics,
        };
        let worker = std::thread::spawn(move || worker.run());
        eprintln!(
            "serve: listening on http://{addr} (worker {})",
            config.worker_id
        );
        Ok(Server {
            addr,
            queue: Some(queue),
            shutdown,
            running,
            wakeup,
            stop_http: Some(stop_tx),
            http: Some(http),
            worker: Some(worker),
        })
    }
}

impl Server {
    /// Where it listens (the port chosen when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop taking jobs, cancel the running one (it runs again at the next start) and stop
    /// listening; returns when both threads are done.
    pub fn stop(mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        self.wakeup.notify();
        if let Ok(r) = self.running.lock() {
            for c in r.values() {
                c.cancel();
            }
        }
        if let Some(tx) = self.stop_http.take() {
            let _ = tx.send(());
        }
        for t in [self.worker.take(), self.http.take()].into_iter().flatten() {
            let _ = t.join();
        }
        drop(self.queue.take());
    }
}

/// SIGINT and SIGTERM handlers. Install them before the server says it listens: a signal that
/// arrives after that line is then always a graceful stop, never the default exit.
pub struct StopSignals {
    rt: tokio::runtime::Runtime,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Install the handlers (from now on SIGINT/SIGTERM no longer end the process by default).
    pub fn install() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (term, int) = {
            let _entered = rt.enter();
            (
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
            )
        };
        Ok(StopSignals { rt, term, int })
    }

    /// Block until SIGINT or SIGTERM (also one that arrived since [`install`](Self::install)).
    pub fn wait(self) {
        let StopSignals {
            rt,
            mut term,
            mut int,
        } = self;
        rt.block_on(async {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        });
    }
}

/// `host:pid`, the default worker id.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}
