//! Attention per backend: the bundle's transformer graph is the pattern TensorRT fuses
//! (standard operators, q scaled before the first MatMul, `MatMul → Softmax → MatMul` with no
//! mask and, under fp16, no casts between), and an ONNX Runtime CPU session really runs the
//! fused `com.microsoft.MultiHeadAttention` (read from the session's optimised graph).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hyvideo::graph_load;
use hyvideo_bundle::AttentionKernel;
use hyvideo_bundle::{Component, Precision};
use hyvideo_engines::{AttentionPolicy, SessionConfig};
use hyvideo_exporters::export::TransformerSource;
use hyvideo_onnx::proto::ModelProto;
use hyvideo_onnx::proto::NodeProto;
use prost::Message;

use crate::common::{export_tiny_at, text_encoders_bundle, transformer_bundle};
use crate::graphs::check_structure;

fn fp16_transformer() -> &'static Path {
    static B: OnceLock<PathBuf> = OnceLock::new();
    B.get_or_init(|| {
        export_tiny_at(
            &[Component::Transformer],
            TransformerSource::default(),
            Precision::Fp16,
        )
    })
}

fn decode(path: &Path) -> ModelProto {
    ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
}

fn count(m: &ModelProto, op: &str) -> usize {
    let g = m.graph.as_ref().unwrap();
    g.node.iter().filter(|n| n.op_type == op).count()
}

/// Every Softmax of `m` sits in TensorRT's documented attention pattern: its input straight
/// from a MatMul whose first operand is the transposed, already scaled q (`Mul` by a constant
/// before the MatMul), its output straight into the second MatMul, with no mask or cast between
/// and both MatMuls in `matmul_type`. Returns the number of sites.
fn assert_tensorrt_pattern(m: &ModelProto, matmul_type: i32) -> usize {
    let g = m.graph.as_ref().unwrap();
    let producer: HashMap<&str, &NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let consumers = |v: &str| -> Vec<&NodeProto> {
        g.node
            .iter()
            .filter(|n| n.input.iter().any(|i| i == v))
            .collect()
    };
    let types = value_types(m);
    let mut sites = 0;
    for sm in g.node.iter().filter(|n| n.op_type == "Softmax") {
        let qk = producer[sm.input[0].as_str()];
        assert_eq!(qk.op_type, "MatMul", "{}: fed by {}", sm.name, qk.name);
        let qt = producer[qk.input[0].as_str()];
        assert_eq!(qt.op_type, "Transpose", "{}", qk.name);
        let mut scaled = producer[qt.input[0].as_str()];
        // fp16: the scale may sit after a cast of q into the MatMul dtype.
        if scaled.op_type == "Cast" {
            scaled = producer[scaled.input[0].as_str()];
        }
        assert_eq!(
            scaled.op_type, "Mul",
            "{}: q not scaled before the MatMul",
            qk.name
        );
        let after = consumers(&sm.output[0]);
        assert_eq!(after.len(), 1, "{}", sm.name);
        assert_eq!(
            after[0].op_type, "MatMul",
            "{}: feeds {}",
            sm.name, after[0].name
        );
        for mm in [qk, after[0]] {
            assert_eq!(
                types.get(mm.output[0].as_str()),
                Some(&matmul_type),
                "{}",
                mm.name
            );
        }
        sites += 1;
    }
    sites
}

/// Element types by value name (graph inputs, initializers, node outputs), from op semantics.
fn value_types(m: &ModelProto) -> HashMap<String, i32> {
    let g = m.graph.as_ref().unwrap();
    let mut t: HashMap<String, i32> = HashMap::new();
    for v in &g.input {
        if let Some(hyvideo_onnx::proto::type_proto::Value::TensorType(tt)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            t.insert(v.name.clone(), tt.elem_type);
        }
    }
    for i in &g.initializer {
        t.insert(i.name.clone(), i.data_type);
    }
    for n in &g.node {
        let first = n.input.first().and_then(|i| t.get(i)).copied().unwrap_or(1);
        let ty = match n.op_type.as_str() {
            "Cast" => n
                .attribute
                .iter()
                .find(|a| a.name == "to")
                .and_then(|a| a.i)
                .unwrap_or(1) as i32,
            "Shape" => 7,
            "Equal" | "Less" | "LessOrEqual" => 9,
            "Where" => n.input.get(1).and_then(|i| t.get(i)).copied().unwrap_or(1),
            _ => first,
        };
        for o in &n.output {
            t.insert(o.clone(), ty);
        }
    }
    t
}

#[test]
fn tensorrt_graph_is_the_fusable_pattern_without_a_mask() {
    const FLOAT: i32 = 1;
    const FLOAT16: i32 = 10;
    for (bundle, matmul_type) in [(transformer_bundle(), FLOAT), (fp16_transformer(), FLOAT16)] {
        let path = bundle.join("transformer.onnx");
        // Standard operators only (TensorRT's parser list), default domain.
        let m = check_structure(&path);
        let g = m.graph.as_ref().unwrap();
        assert!(
            !g.input.iter().any(|i| i.name.contains("mask")),
            "{}: a mask input",
            path.display()
        );
        assert!(
            !g.node.iter().any(|n| n.op_type == "Where"),
            "a masking Where"
        );
        // 1 refiner + 2 dual + 2 single blocks, each MatMul → Softmax → MatMul.
        assert_eq!(assert_tensorrt_pattern(&m, matmul_type), 5);
    }
}

/// The graph ONNX Runtime runs for `model` on CPU with `attention`, from the session's own
/// optimised copy.
fn optimised(model: &Path, attention: AttentionPolicy) -> (ModelProto, AttentionKernel) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("optimised.onnx");
    let cfg = SessionConfig::default()
        .with_intra_threads(Some(1))
        .with_attention(attention)
        .with_save_optimized(Some(out.clone()));
    let loaded = graph_load::load(model, &cfg).unwrap();
    (decode(&out), loaded.kernel())
}

#[test]
fn cpu_session_runs_the_fused_operator() {
    for bundle in [transformer_bundle(), fp16_transformer()] {
        let model = bundle.join("transformer.onnx");
        let (fused, kernel) = optimised(&model, AttentionPolicy::BackendFused);
        assert_eq!(kernel, AttentionKernel::MultiHeadAttention);
        assert_eq!(
            count(&fused, "MultiHeadAttention"),
            5,
            "{}",
            model.display()
        );
        assert_eq!(count(&fused, "Softmax"), 0, "{}", model.display());
        // The bundle itself is untouched, and the standard policy runs it as written: two
        // attention MatMuls per site more (ONNX Runtime CPU decomposes an fp16 Softmax).
        assert_eq!(count(&decode(&model), "MultiHeadAttention"), 0);
        let (standard, kernel) = optimised(&model, AttentionPolicy::Standard);
        assert_eq!(kernel, AttentionKernel::Standard);
        assert_eq!(count(&standard, "MultiHeadAttention"), 0);
        assert_eq!(
            count(&standard, "MatMul"),
            count(&fused, "MatMul") + 2 * 5,
            "{}",
            model.display()
        );
    }
}

#[test]
fn masked_text_encoder_attention_stays_standard() {
    for (file, sites) in [("text_encoder.onnx", 1), ("text_encoder_2.onnx", 2)] {
        let (m, kernel) = optimised(
            &text_encoders_bundle().join(file),
            AttentionPolicy::BackendFused,
        );
        assert_eq!(kernel, AttentionKernel::Standard, "{file}");
        assert_eq!(count(&m, "MultiHeadAttention"), 0, "{file}");
        assert_eq!(count(&m, "Softmax"), sites, "{file}");
    }
}

/// Dtypes the CUDA rewrite gives `MultiHeadAttention`: fp16 sites stay fp16 (flash attention),
/// bf16 ones are cast to fp32 (the CUDA kernel has no bf16); on CPU everything runs fp32.
#[test]
fn fused_sites_take_the_kernel_dtypes_of_each_provider() {
    use hyvideo_onnx::fuse::{MhaPrecision, fuse};
    const FLOAT: i32 = 1;
    const FLOAT16: i32 = 10;
    let bf16 = export_tiny_at(
        &[Component::Transformer],
        TransformerSource::default(),
        Precision::Bf16,
    );
    for (bundle, precision, want) in [
        (fp16_transformer(), MhaPrecision::Fp16OrFp32, FLOAT16),
        (fp16_transformer(), MhaPrecision::Fp32, FLOAT),
        (bf16.as_path(), MhaPrecision::Fp16OrFp32, FLOAT),
        (transformer_bundle(), MhaPrecision::Fp16OrFp32, FLOAT),
    ] {
        let mut m = decode(&bundle.join("transformer.onnx"));
        let report = fuse(&mut m, precision).unwrap();
        assert_eq!((report.fused, report.kept), (5, 0));
        let types = value_types(&m);
        let g = m.graph.as_ref().unwrap();
        let mha: Vec<_> = g
            .node
            .iter()
            .filter(|n| n.op_type == "MultiHeadAttention")
            .collect();
        assert_eq!(mha.len(), 5);
        for n in mha {
            assert_eq!(n.domain, "com.microsoft");
            for i in &n.input {
                assert_eq!(types[i.as_str()], want, "{}: {i} ({precision:?})", n.name);
            }
        }
        // Nothing of the standard form is left.
        assert_eq!(count(&m, "Softmax"), 0);
    }
}
