//! Naming the tensors of an unpickled object: state dicts, nested dicts of them and whole
//! pickled modules (`_parameters`, `_buffers`, `_modules`), with a depth limit.

use super::{node_name, Id, Node, PResult, TensorRef, MAX_DEPTH};

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn key_str(nodes: &[Node], k: Id) -> Option<String> {
    match &nodes[k] {
        Node::Str(s) => Some(s.clone()),
        Node::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Walks the pickled object and names every tensor reachable through dicts, lists and module
/// state (`_parameters`, `_buffers`, `_modules` contribute no name part). A container that
/// contains itself (a memo cycle), nesting deeper than [`MAX_DEPTH`], or shared containers that
/// would make the walk visit more than a few times as many nodes as the pickle holds are errors:
/// each would otherwise hang the walk or overflow its stack.
pub(super) fn collect(nodes: &[Node], root: Id) -> PResult<Vec<(String, TensorRef)>> {
    let mut walk = Walk {
        nodes,
        on_path: vec![false; nodes.len()],
        visits: 0,
        max_visits: 4 * nodes.len() as u64 + (1 << 16),
        out: Vec::new(),
    };
    walk.visit(root, "", 0)?;
    Ok(walk.out)
}

struct Walk<'a> {
    nodes: &'a [Node],
    /// Containers on the path from the root to the node being visited.
    on_path: Vec<bool>,
    visits: u64,
    max_visits: u64,
    out: Vec<(String, TensorRef)>,
}

impl Walk<'_> {
    fn visit(&mut self, id: Id, prefix: &str, depth: usize) -> PResult<()> {
        self.visits += 1;
        if self.visits > self.max_visits {
            return Err(format!(
                "the pickled object graph is too large to walk (more than {} visits for {} \
                 objects: shared containers nested inside each other)",
                self.max_visits,
                self.nodes.len()
            ));
        }
        if depth > MAX_DEPTH {
            return Err(format!(
                "objects nested more than {MAX_DEPTH} levels deep (at `{prefix}`)"
            ));
        }
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Tensor(t) => {
                self.out.push((prefix.to_string(), t.clone()));
                return Ok(());
            }
            Node::Dict(_) | Node::List(_) | Node::Tuple(_) | Node::Object { .. } => {}
            _ => return Ok(()),
        }
        if self.on_path[id] {
            let at = if prefix.is_empty() {
                "the root"
            } else {
                prefix
            };
            return Err(format!(
                "a {} contains itself (a reference cycle at `{at}`)",
                node_name(&nodes[id])
            ));
        }
        self.on_path[id] = true;
        let r = self.children(id, prefix, depth);
        self.on_path[id] = false;
        r
    }

    fn items(&mut self, pairs: &[(Id, Id)], prefix: &str, depth: usize) -> PResult<()> {
        for &(k, v) in pairs {
            let Some(k) = key_str(self.nodes, k) else {
                continue;
            };
            if matches!(k.as_str(), "_parameters" | "_buffers" | "_modules") {
                self.visit(v, prefix, depth + 1)?;
            } else if !k.starts_with('_') {
                self.visit(v, &join(prefix, &k), depth + 1)?;
            }
        }
        Ok(())
    }

    fn children(&mut self, id: Id, prefix: &str, depth: usize) -> PResult<()> {
        let nodes = self.nodes;
        match &nodes[id] {
            Node::Dict(pairs) => self.items(pairs, prefix, depth)?,
            Node::List(v) | Node::Tuple(v) => {
                for (i, &x) in v.iter().enumerate() {
                    self.visit(x, &join(prefix, &i.to_string()), depth + 1)?;
                }
            }
            Node::Object {
                state, items: own, ..
            } => {
                self.items(own, prefix, depth)?;
                if let Some(s) = *state {
                    match &nodes[s] {
                        Node::Dict(pairs) => self.items(pairs, prefix, depth)?,
                        // (state, slotstate) tuples
                        Node::Tuple(v) => {
                            for &x in v {
                                if let Node::Dict(pairs) = &nodes[x] {
                                    self.items(pairs, prefix, depth)?;
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
