//! The stage graph of an expanded pipeline as text (`ablate dag`) or Graphviz DOT
//! (`ablate dag --format dot`): one node per stage with its kind and instance count.

use super::expand::Expanded;

impl Expanded {
    /// One line per stage in dependency order: `name (kind) xN  <- needs`.
    ///
    /// ```
    /// use ablate::pipeline::{expand, KindInfo, Pipeline};
    /// struct Kinds;
    /// impl KindInfo for Kinds {
    ///     fn known(&self, _: &str) -> bool { true }
    ///     fn gathers(&self, kind: &str) -> bool { kind == "tabulate" }
    ///     fn names(&self) -> Vec<String> { vec![] }
    /// }
    /// let yaml = "name: p\nstages:\n  a: {kind: data, matrix: {seed: [1, 2]}}\n  \
    ///             t: {kind: tabulate, needs: [a]}\n";
    /// let p = Pipeline::parse("p.yaml".as_ref(), yaml).unwrap();
    /// let ex = expand(p, &Kinds).unwrap();
    /// assert_eq!(ex.dag_text(), "p\n  a (data) x2\n  t (tabulate) x1  <- a\n");
    /// assert!(ex.dag_dot().contains("\"t (tabulate) x1\""));
    /// ```
    pub fn dag_text(&self) -> String {
        let mut out = format!("{}\n", self.pipeline.name);
        for &si in &self.stage_order {
            let s = &self.pipeline.stages[si];
            let n = self.by_stage[si].len();
            let needs = if s.needs.is_empty() {
                String::new()
            } else {
                format!("  <- {}", s.needs.join(", "))
            };
            out.push_str(&format!("  {} ({}) x{n}{needs}\n", s.name, s.kind));
        }
        out
    }

    /// The stage graph in Graphviz DOT, edges from input to user.
    pub fn dag_dot(&self) -> String {
        use petgraph::dot::{Config, Dot};
        let g = self.graph.map(
            |_, &si| {
                let s = &self.pipeline.stages[si];
                format!("{} ({}) x{}", s.name, s.kind, self.by_stage[si].len())
            },
            |_, _| "",
        );
        format!("{}", Dot::with_config(&g, &[Config::EdgeNoLabel]))
    }
}
