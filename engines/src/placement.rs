//! Where ONNX Runtime actually put a session's nodes: after graph partitioning, how many nodes
//! each execution provider was assigned, and which op types landed on the CPU provider.
//!
//! Read through ONNX Runtime's C API `Session_GetEpGraphAssignmentInfo` →
//! `OrtEpAssignedSubgraph` (`EpAssignedSubgraph_GetEpName`, `EpAssignedSubgraph_GetNodes`) →
//! `OrtEpAssignedNode` (`EpAssignedNode_GetDomain`, `EpAssignedNode_GetOperatorType`), ORT ≥
//! 1.24, recorded only when the session is created with
//! `session.record_ep_graph_assignment_info = 1` (see [`crate::session::session_entries`]).
//! ort rc.15 binds these in ort-sys without a safe wrapper; this module is that wrapper. It is
//! the same information ONNX Runtime's verbose log prints as "Node placements".

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char};
use std::fmt;

use crate::provider::BackendKind;

/// The nodes one execution provider was assigned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderNodes {
    /// ONNX Runtime's provider name (`CPUExecutionProvider`, `TensorrtExecutionProvider`, ...).
    pub provider: String,
    /// How many nodes it runs.
    pub nodes: usize,
    /// Its nodes by op type (`Shape`, or `com.microsoft:MultiHeadAttention` outside the ONNX
    /// domain) with their counts.
    pub op_types: BTreeMap<String, usize>,
}

/// Every provider's share of a session's graph, in the order ONNX Runtime reports them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placement {
    providers: Vec<ProviderNodes>,
}

impl Placement {
    /// Gather `(provider name, domain, op type)` of every assigned node.
    pub fn from_nodes<'a>(nodes: impl IntoIterator<Item = (&'a str, &'a str, &'a str)>) -> Self {
        let mut providers: Vec<ProviderNodes> = Vec::new();
        for (provider, domain, op) in nodes {
            let i = match providers.iter().position(|p| p.provider == provider) {
                Some(i) => i,
                None => {
                    providers.push(ProviderNodes {
                        provider: provider.to_string(),
                        nodes: 0,
                        op_types: BTreeMap::new(),
                    });
                    providers.len() - 1
                }
            };
            let entry = &mut providers[i];
            entry.nodes += 1;
            *entry.op_types.entry(op_name(domain, op)).or_insert(0) += 1;
        }
        Placement { providers }
    }

    /// Every provider that got at least one node.
    pub fn providers(&self) -> &[ProviderNodes] {
        &self.providers
    }

    /// Number of nodes assigned to the provider ONNX Runtime calls `provider`.
    pub fn nodes_on(&self, provider: &str) -> usize {
        self.providers
            .iter()
            .find(|p| p.provider == provider)
            .map_or(0, |p| p.nodes)
    }

    /// Number of nodes in the partitioned graph.
    pub fn total_nodes(&self) -> usize {
        self.providers.iter().map(|p| p.nodes).sum()
    }

    /// The provider with the most nodes (the first reported on a tie); `None` for a graph
    /// without nodes.
    pub fn dominant(&self) -> Option<&ProviderNodes> {
        self.providers
            .iter()
            .rev()
            .max_by_key(|p| p.nodes)
            .filter(|p| p.nodes > 0)
    }

    /// The op types that run on the CPU provider, sorted.
    pub fn cpu_op_types(&self) -> Vec<&str> {
        self.providers
            .iter()
            .find(|p| p.provider == BackendKind::Cpu.ort_name())
            .map(|p| p.op_types.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

/// `CUDAExecutionProvider: 812 nodes, CPUExecutionProvider: 3 nodes (Gather, Shape)`: every
/// provider's count; the CPU provider's op types (at most eight) when it shares the graph.
impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.providers.is_empty() {
            return f.write_str("no nodes");
        }
        const SHOWN: usize = 8;
        for (i, p) in self.providers.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: {} node{}", p.provider, p.nodes, plural(p.nodes))?;
            if p.provider == BackendKind::Cpu.ort_name() && self.providers.len() > 1 {
                let ops: Vec<&str> = p.op_types.keys().take(SHOWN).map(String::as_str).collect();
                let more = p.op_types.len().saturating_sub(SHOWN);
                write!(f, " ({}", ops.join(", "))?;
                if more > 0 {
                    write!(f, ", {more} more")?;
                }
                f.write_str(")")?;
            }
        }
        Ok(())
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn op_name(domain: &str, op: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        op.to_string()
    } else {
        format!("{domain}:{op}")
    }
}

/// Read the placement ONNX Runtime recorded for `session` (created with
/// `session.record_ep_graph_assignment_info = 1`). The error is ONNX Runtime's message.
pub(crate) fn read(session: &ort::session::Session) -> Result<Placement, String> {
    use ort::AsPointer;
    let api = ort::api();
    let status = |s: ort::sys::OrtStatusPtr| -> Result<(), String> {
        // SAFETY: `s` was just returned by an ONNX Runtime API call; this takes ownership.
        unsafe { ort::Error::result_from_status(s) }.map_err(|e| e.to_string())
    };
    let mut subgraphs: *const *const ort::sys::OrtEpAssignedSubgraph = std::ptr::null();
    let mut n_subgraphs = 0usize;
    // SAFETY: the session pointer is valid for `session`'s lifetime; the out-pointers are
    // locals. The returned array and everything reached from it are owned by the session,
    // which outlives this function; every string is copied before returning.
    status(unsafe {
        (api.Session_GetEpGraphAssignmentInfo)(session.ptr(), &mut subgraphs, &mut n_subgraphs)
    })?;
    let mut nodes: Vec<(String, String, String)> = Vec::new();
    for i in 0..n_subgraphs {
        if subgraphs.is_null() {
            return Err(format!(
                "ONNX Runtime reported {n_subgraphs} subgraphs but no array"
            ));
        }
        // SAFETY: `i < n_subgraphs`, the array's length as ONNX Runtime reported it.
        let sub = unsafe { *subgraphs.add(i) };
        let mut name: *const c_char = std::ptr::null();
        status(unsafe { (api.EpAssignedSubgraph_GetEpName)(sub, &mut name) })?;
        let ep = owned(name, "execution provider name")?;
        let mut ep_nodes: *const *const ort::sys::OrtEpAssignedNode = std::ptr::null();
        let mut n_nodes = 0usize;
        status(unsafe { (api.EpAssignedSubgraph_GetNodes)(sub, &mut ep_nodes, &mut n_nodes) })?;
        for j in 0..n_nodes {
            if ep_nodes.is_null() {
                return Err(format!("{ep}: {n_nodes} nodes reported but no array"));
            }
            // SAFETY: `j < n_nodes`, the array's length as ONNX Runtime reported it.
            let node = unsafe { *ep_nodes.add(j) };
            let mut domain: *const c_char = std::ptr::null();
            status(unsafe { (api.EpAssignedNode_GetDomain)(node, &mut domain) })?;
            let mut op: *const c_char = std::ptr::null();
            status(unsafe { (api.EpAssignedNode_GetOperatorType)(node, &mut op) })?;
            nodes.push((
                ep.clone(),
                owned(domain, "node domain").unwrap_or_default(),
                owned(op, "node op type")?,
            ));
        }
    }
    Ok(Placement::from_nodes(
        nodes
            .iter()
            .map(|(e, d, o)| (e.as_str(), d.as_str(), o.as_str())),
    ))
}

/// Copy a NUL-terminated string ONNX Runtime handed out.
fn owned(p: *const c_char, what: &str) -> Result<String, String> {
    if p.is_null() {
        return Err(format!("ONNX Runtime returned no {what}"));
    }
    // SAFETY: non-null and NUL-terminated per the C API contract; valid while the session is.
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nodes_per_provider_and_names_cpu_ops() {
        let p = Placement::from_nodes([
            ("TensorrtExecutionProvider", "", "MatMul"),
            ("TensorrtExecutionProvider", "", "Add"),
            (
                "CUDAExecutionProvider",
                "com.microsoft",
                "MultiHeadAttention",
            ),
            ("CPUExecutionProvider", "", "Shape"),
            ("CPUExecutionProvider", "ai.onnx", "Gather"),
            ("CPUExecutionProvider", "", "Shape"),
            ("TensorrtExecutionProvider", "", "MatMul"),
        ]);
        assert_eq!(p.nodes_on("TensorrtExecutionProvider"), 3);
        assert_eq!(p.nodes_on("CUDAExecutionProvider"), 1);
        assert_eq!(p.nodes_on("CPUExecutionProvider"), 3);
        assert_eq!(p.nodes_on("OpenVINOExecutionProvider"), 0);
        assert_eq!(p.total_nodes(), 7);
        assert_eq!(p.cpu_op_types(), ["Gather", "Shape"]);
        // A tie goes to the first provider reported.
        assert_eq!(
            p.dominant().map(|d| d.provider.as_str()),
            Some("TensorrtExecutionProvider")
        );
        assert_eq!(
            p.providers()[1].op_types.keys().collect::<Vec<_>>(),
            ["com.microsoft:MultiHeadAttention"]
        );
        assert_eq!(
            p.to_string(),
            "TensorrtExecutionProvider: 3 nodes, CUDAExecutionProvider: 1 node, \
             CPUExecutionProvider: 3 nodes (Gather, Shape)"
        );
    }

    #[test]
    fn empty_and_cpu_only_placements() {
        let empty = Placement::default();
        assert_eq!(empty.dominant(), None);
        assert_eq!(empty.to_string(), "no nodes");
        assert!(empty.cpu_op_types().is_empty());
        let cpu = Placement::from_nodes([("CPUExecutionProvider", "", "Add")]);
        // Alone on the graph, the CPU provider's op types are not listed.
        assert_eq!(cpu.to_string(), "CPUExecutionProvider: 1 node");
        let many: Vec<String> = (0..10).map(|i| format!("Op{i}")).collect();
        let p = Placement::from_nodes(
            many.iter()
                .map(|o| ("CPUExecutionProvider", "", o.as_str()))
                .chain([("CUDAExecutionProvider", "", "Conv")]),
        );
        assert!(
            p.to_string()
                .ends_with("Op7, 2 more), CUDAExecutionProvider: 1 node"),
            "{p}"
        );
    }
}
