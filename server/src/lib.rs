//! hyvideo-server: `hyvideo serve` — the OpenAI Videos API (`/v1/videos`, as the `openai` SDK
//! sends it) over a durable job queue, with one worker per process running the runtime's
//! `Pipeline` (engines loaded once, any number of jobs).
//!
//! - [`request`]: create bodies (JSON or multipart) parsed and validated into job settings, each
//!   error naming its field; [`input_reference`]: the image of an image-to-video create (a file
//!   upload or a data URL), checked and decoded at request time;
//! - [`video`]: the video object the API answers with;
//! - [`queue`]: the job queue, SQLite or a PostgreSQL database shared by several servers
//!   (durable across restarts, leases for crashed workers);
//! - [`error`]: the OpenAI error shape;
//! - [`api`]: the routes; [`worker`]: the job loop; [`lease`]: the heartbeat that renews a
//!   running job's lease; [`metrics`]: timings and failure counts;
//!   [`serve`]: starting and stopping; [`page`]: the web page at `/`.

pub mod api;
pub mod error;
pub mod input_reference;
pub mod lease;
pub mod metrics;
pub mod page;
pub mod queue;
pub mod request;
pub mod serve;
pub mod video;
pub mod worker;
