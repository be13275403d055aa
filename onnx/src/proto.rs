//! ONNX protobuf messages, hand-written as `prost` derives (no `protoc`, no build script).
//!
//! Mirrors the subset of the ONNX IR spec (`onnx/onnx.proto3`, IR version 10+) that the
//! exporter emits: Model, Graph, Node, Attribute, Tensor, ValueInfo, Type (tensor types only),
//! TensorShape, OperatorSetId and StringStringEntry. Field numbers and enum values are copied
//! from the spec and checked against it; fields we never write are left out (protobuf skips
//! unknown fields when decoding, so models written elsewhere still decode).
//!
//! Scalars whose presence matters to ONNX consumers (`AttributeProto.f/i/s`) are `Option`s so a
//! zero value is still written (proto3 would otherwise drop it from the wire).

/// `TensorProto.DataType`: element types of tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataType {
    Undefined = 0,
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Uint16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    Uint32 = 12,
    Uint64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    Bfloat16 = 16,
    Float8e4m3fn = 17,
    Float8e4m3fnuz = 18,
    Float8e5m2 = 19,
    Float8e5m2fnuz = 20,
}

impl DataType {
    /// Bytes per element in `raw_data` / external data, or `None` for types without a fixed
    /// byte width (`UNDEFINED`, `STRING`).
    pub const fn elem_size(self) -> Option<u64> {
        Some(match self {
            Self::Undefined | Self::String => return None,
            Self::Uint8
            | Self::Int8
            | Self::Bool
            | Self::Float8e4m3fn
            | Self::Float8e4m3fnuz
            | Self::Float8e5m2
            | Self::Float8e5m2fnuz => 1,
            Self::Uint16 | Self::Int16 | Self::Float16 | Self::Bfloat16 => 2,
            Self::Float | Self::Int32 | Self::Uint32 => 4,
            Self::Int64 | Self::Double | Self::Uint64 | Self::Complex64 => 8,
            Self::Complex128 => 16,
        })
    }

    /// The spec's name of the type (`FLOAT`, `BFLOAT16`, ...), for messages.
    pub const fn spec_name(self) -> &'static str {
        match self {
            Self::Undefined => "UNDEFINED",
            Self::Float => "FLOAT",
            Self::Uint8 => "UINT8",
            Self::Int8 => "INT8",
            Self::Uint16 => "UINT16",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::String => "STRING",
            Self::Bool => "BOOL",
            Self::Float16 => "FLOAT16",
            Self::Double => "DOUBLE",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Complex64 => "COMPLEX64",
            Self::Complex128 => "COMPLEX128",
            Self::Bfloat16 => "BFLOAT16",
            Self::Float8e4m3fn => "FLOAT8E4M3FN",
            Self::Float8e4m3fnuz => "FLOAT8E4M3FNUZ",
            Self::Float8e5m2 => "FLOAT8E5M2",
            Self::Float8e5m2fnuz => "FLOAT8E5M2FNUZ",
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.spec_name())
    }
}

/// `TensorProto.DataLocation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum DataLocation {
    Default = 0,
    External = 1,
}

/// `AttributeProto.AttributeType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum AttributeType {
    Undefined = 0,
    Float = 1,
    Int = 2,
    String = 3,
    Tensor = 4,
    Graph = 5,
    Floats = 6,
    Ints = 7,
    Strings = 8,
    Tensors = 9,
    Graphs = 10,
    SparseTensor = 11,
    SparseTensors = 12,
    TypeProto = 13,
    TypeProtos = 14,
}

/// `ModelProto`: the top-level container.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(string, tag = "3")]
    pub producer_version: String,
    #[prost(string, tag = "4")]
    pub domain: String,
    #[prost(int64, tag = "5")]
    pub model_version: i64,
    #[prost(string, tag = "6")]
    pub doc_string: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `StringStringEntryProto`: a key/value pair (metadata, external-data location).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `OperatorSetIdProto`: an opset import (`domain` empty = the default `ai.onnx` domain).
#[derive(Clone, PartialEq, prost::Message)]
pub struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    pub domain: String,
    #[prost(int64, tag = "2")]
    pub version: i64,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(string, tag = "10")]
    pub doc_string: String,
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "13")]
    pub value_info: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `NodeProto`: one operator application.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(string, tag = "7")]
    pub domain: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    #[prost(string, tag = "6")]
    pub doc_string: String,
}

/// `AttributeProto`: a named attribute of a node; `type` says which value field is used.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "21")]
    pub ref_attr_name: String,
    #[prost(string, tag = "13")]
    pub doc_string: String,
    #[prost(enumeration = "AttributeType", tag = "20")]
    pub r#type: i32,
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
}

/// `TensorProto`: an initializer or attribute tensor, stored inline (`raw_data` or the typed
/// `*_data` fields) or externally (`data_location = EXTERNAL` + `external_data` entries
/// `location`, `offset`, `length`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(enumeration = "DataType", tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    pub int32_data: Vec<i32>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    pub string_data: Vec<Vec<u8>>,
    #[prost(int64, repeated, tag = "7")]
    pub int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(string, tag = "12")]
    pub doc_string: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(enumeration = "DataLocation", tag = "14")]
    pub data_location: i32,
    #[prost(double, repeated, tag = "10")]
    pub double_data: Vec<f64>,
    #[prost(uint64, repeated, tag = "11")]
    pub uint64_data: Vec<u64>,
    #[prost(message, repeated, tag = "16")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `ValueInfoProto`: name and type of a graph input, output or intermediate value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueInfoProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
    #[prost(string, tag = "3")]
    pub doc_string: String,
}

/// `TypeProto`, restricted to the `tensor_type` arm of its `value` oneof.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TypeProto {
    #[prost(oneof = "type_proto::Value", tags = "1")]
    pub value: Option<type_proto::Value>,
    #[prost(string, tag = "6")]
    pub denotation: String,
}

/// Nested messages of `TypeProto`.
pub mod type_proto {
    /// `TypeProto.Tensor`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Tensor {
        #[prost(enumeration = "super::DataType", tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<super::TensorShapeProto>,
    }

    /// `TypeProto.value` (only `tensor_type = 1` is modelled).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(message, tag = "1")]
        TensorType(Tensor),
    }
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<tensor_shape_proto::Dimension>,
}

/// Nested messages of `TensorShapeProto`.
pub mod tensor_shape_proto {
    /// `TensorShapeProto.Dimension`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        #[prost(oneof = "dimension::Value", tags = "1, 2")]
        pub value: Option<dimension::Value>,
        #[prost(string, tag = "3")]
        pub denotation: String,
    }

    /// Nested oneof of `TensorShapeProto.Dimension`.
    pub mod dimension {
        /// `Dimension.value`: a fixed size or a symbolic name.
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(int64, tag = "1")]
            DimValue(i64),
            #[prost(string, tag = "2")]
            DimParam(String),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn entry(k: &str, v: &str) -> StringStringEntryProto {
        StringStringEntryProto {
            key: k.into(),
            value: v.into(),
        }
    }

    /// A hand-encoded wire message checks the field numbers independently of prost's derive:
    /// if a tag in the structs above were wrong, this decode would not see the values.
    #[test]
    fn decodes_hand_encoded_wire_bytes() {
        // ModelProto { ir_version(1) = 10, producer_name(2) = "p", graph(7) { name(2) = "g" },
        //              opset_import(8) { version(2) = 20 } }
        let bytes = [
            0x08, 10, // field 1 varint
            0x12, 1, b'p', // field 2 len
            0x3a, 3, 0x12, 1, b'g', // field 7 len { field 2 len }
            0x42, 2, 0x10, 20, // field 8 len { field 2 varint }
        ];
        let m = ModelProto::decode(&bytes[..]).unwrap();
        assert_eq!(m.ir_version, 10);
        assert_eq!(m.producer_name, "p");
        assert_eq!(m.graph.as_ref().unwrap().name, "g");
        assert_eq!(m.opset_import[0].version, 20);
        assert_eq!(m.opset_import[0].domain, "");

        // TensorProto { dims(1) = [2, 3] packed, data_type(2) = 1, name(8) = "w",
        //               raw_data(9) = [1,2], data_location(14) = 1 }
        let t = [
            0x0a, 2, 2, 3, 0x10, 1, 0x42, 1, b'w', 0x4a, 2, 1, 2, 0x70, 1,
        ];
        let t = TensorProto::decode(&t[..]).unwrap();
        assert_eq!(t.dims, [2, 3]);
        assert_eq!(t.data_type(), DataType::Float);
        assert_eq!(t.name, "w");
        assert_eq!(t.raw_data, [1, 2]);
        assert_eq!(t.data_location(), DataLocation::External);

        // AttributeProto { name(1) = "a", i(3) = 0, type(20) = INT(2) }: i = 0 must be kept.
        let a = [0x0a, 1, b'a', 0x18, 0, 0xa0, 0x01, 2];
        let a = AttributeProto::decode(&a[..]).unwrap();
        assert_eq!(a.name, "a");
        assert_eq!(a.i, Some(0));
        assert_eq!(a.r#type(), AttributeType::Int);
        assert_eq!(a.encode_to_vec(), [0x0a, 1, b'a', 0x18, 0, 0xa0, 0x01, 2]);
    }

    #[test]
    fn model_round_trips_through_prost() {
        let dim = |v: tensor_shape_proto::dimension::Value| tensor_shape_proto::Dimension {
            value: Some(v),
            denotation: String::new(),
        };
        use tensor_shape_proto::dimension::Value as D;
        let x = ValueInfoProto {
            name: "x".into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: Some(TensorShapeProto {
                        dim: vec![dim(D::DimParam("N".into())), dim(D::DimValue(0))],
                    }),
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
        };
        let w = TensorProto {
            dims: vec![4, 3],
            data_type: DataType::Bfloat16 as i32,
            name: "w".into(),
            external_data: vec![
                entry("location", "m.onnx.data"),
                entry("offset", "4096"),
                entry("length", "24"),
            ],
            data_location: DataLocation::External as i32,
            ..Default::default()
        };
        let node = NodeProto {
            input: vec!["x".into(), String::new(), "w".into()],
            output: vec!["y".into()],
            name: "n0".into(),
            op_type: "Gemm".into(),
            attribute: vec![
                AttributeProto {
                    name: "alpha".into(),
                    r#type: AttributeType::Float as i32,
                    f: Some(0.0),
                    ..Default::default()
                },
                AttributeProto {
                    name: "perm".into(),
                    r#type: AttributeType::Ints as i32,
                    ints: vec![0, -1, 2],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let model = ModelProto {
            ir_version: 10,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: 20,
            }],
            producer_name: "hyvideo".into(),
            producer_version: "0.1.0".into(),
            graph: Some(GraphProto {
                node: vec![node],
                name: "g".into(),
                initializer: vec![w],
                input: vec![x.clone()],
                output: vec![ValueInfoProto {
                    name: "y".into(),
                    ..x
                }],
                ..Default::default()
            }),
            metadata_props: vec![entry("k", "v")],
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        let back = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, model);
        let g = back.graph.unwrap();
        assert_eq!(g.node[0].input, ["x", "", "w"]);
        assert_eq!(g.node[0].attribute[0].f, Some(0.0));
        assert_eq!(g.initializer[0].data_type(), DataType::Bfloat16);
        assert_eq!(g.initializer[0].external_data[1].value, "4096");
        let Some(type_proto::Value::TensorType(t)) =
            g.input[0].r#type.as_ref().unwrap().value.clone()
        else {
            panic!("tensor type expected")
        };
        assert_eq!(
            t.shape.unwrap().dim[1].value,
            Some(D::DimValue(0)),
            "a zero dim_value inside the oneof must survive"
        );
        assert_eq!(back.metadata_props, [entry("k", "v")]);
    }
}
