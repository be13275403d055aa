//! hyvideo integration tests: one binary, a module per topic (ripgrep's layout).
//!
//! They run real ONNX graphs exported from the committed tiny fixture pipeline on the real
//! ONNX Runtime library (`scripts/setup.sh` fetches it) and compare with diffusers' goldens in
//! `tests/fixtures/goldens/` (made by `tests/fixtures/make_fixtures.py`).

mod attention;
mod cli;
mod common;
mod engines;
mod generate;
mod graphs;
mod http_client;
mod i2v_pipeline;
mod i2v_text_encoder;
mod i2v_transformer;
mod pipeline;
mod postgres;
mod precision;
mod queue_backends;
mod serve;
mod serve_i2v;
mod serve_process;
mod serve_shared_queue;
mod step_cache;
mod text_encoders;
mod transformer;
mod vae;
mod vae_encoder;
mod web_page;
mod webdriver;
