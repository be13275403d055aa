//! `hyvideo serve` as a separate process: events, cancellation of a running job, and the queue
//! surviving `kill -9`.
