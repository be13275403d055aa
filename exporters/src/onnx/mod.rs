//! ONNX protobuf types and graph builder.
