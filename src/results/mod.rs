//! Result tables: building them from rows, writing parquet/CSV/Markdown, and
//! answering SQL over them; charts with text ([`plots`]); the HTML report of a
//! pipeline ([`report`]), which asks each stage kind for its figures and so knows
//! nothing of GANs either.

pub mod compare;
pub mod plots;
pub mod query;
pub mod report;
pub mod stats;
pub mod table;

pub use table::{frame_from_rows, write_table, Cell};
