//! hyvideo-engines: ONNX Runtime sessions.
