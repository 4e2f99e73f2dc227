//! Source positions for YAML paths.
//!
//! serde gives us values without positions, so we walk the YAML event stream once
//! (yaml-rust2's parser reports a marker for every event) and remember where each
//! key and each value starts, by dotted path (`stages.train.params.gamma`,
//! sequence items by index: `stages.train.needs.0`). Errors found later, on the
//! plain values, ask this index for a line and column.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in the pipeline file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Positions of keys and values by dotted path.
#[derive(Debug, Default, Clone)]
pub struct PosIndex {
    keys: HashMap<String, Pos>,
    values: HashMap<String, Pos>,
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, index: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    index: PosIndex,
}

fn join(path: &str, part: &str) -> String {
    if path.is_empty() {
        part.to_string()
    } else {
        format!("{path}.{part}")
    }
}

impl Walker {
    /// Called for every node start; returns the node's own path.
    fn node(&mut self, scalar: Option<&str>, pos: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, index }) => {
                let p = join(path, &index.to_string());
                *index += 1;
                self.index.values.entry(p.clone()).or_insert(pos);
                Some(p)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                None => {
                    // This node is a key.
                    let k = scalar.unwrap_or("?").to_string();
                    let p = join(path, &k);
                    self.index.keys.entry(p).or_insert(pos);
                    *key = Some(k);
                    None
                }
                Some(k) => {
                    let p = join(path, &k);
                    self.index.values.entry(p.clone()).or_insert(pos);
                    Some(p)
                }
            },
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos {
            line: mark.line(),
            col: mark.col() + 1,
        };
        match ev {
            Event::Scalar(s, ..) => {
                self.node(Some(&s), pos);
            }
            Event::Alias(_) => {
                self.node(None, pos);
            }
            Event::MappingStart(..) => {
                let path = self.node(None, pos).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.node(None, pos).unwrap_or_default();
                self.stack.push(Frame::Seq { path, index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl PosIndex {
    /// Index a YAML document. A document that does not parse gives an empty
    /// index (the serde parser reports that error with its own position).
    pub fn build(source: &str) -> PosIndex {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(source);
        if parser.load(&mut walker, false).is_err() {
            return PosIndex::default();
        }
        walker.index
    }

    /// Where the key at `path` is written, falling back to the nearest ancestor.
    pub fn key(&self, path: &str) -> Option<Pos> {
        self.lookup(path, true)
    }

    /// Where the value at `path` starts, falling back to its key, then ancestors.
    pub fn value(&self, path: &str) -> Option<Pos> {
        self.lookup(path, false)
    }

    fn lookup(&self, path: &str, key_first: bool) -> Option<Pos> {
        let mut p = path.to_string();
        loop {
            let (a, b) = if key_first {
                (&self.keys, &self.values)
            } else {
                (&self.values, &self.keys)
            };
            if let Some(pos) = a.get(&p).or_else(|| b.get(&p)) {
                return Some(*pos);
            }
            match p.rfind('.') {
                Some(i) => p.truncate(i),
                None => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_block_and_flow_positions() {
        let src = "name: x\nstages:\n  data:\n    kind: data\n    params: {source: mnist, seed: 3}\n    needs: [a, b]\n";
        let ix = PosIndex::build(src);
        assert_eq!(ix.key("stages.data.kind"), Some(Pos { line: 4, col: 5 }));
        assert_eq!(ix.value("stages.data.kind"), Some(Pos { line: 4, col: 11 }));
        assert_eq!(
            ix.key("stages.data.params.seed"),
            Some(Pos { line: 5, col: 29 })
        );
        assert_eq!(
            ix.value("stages.data.needs.1"),
            Some(Pos { line: 6, col: 16 })
        );
        // Unknown deeper paths fall back to the nearest ancestor.
        assert_eq!(
            ix.key("stages.data.params.seed.x"),
            Some(Pos { line: 5, col: 29 })
        );
    }
}
