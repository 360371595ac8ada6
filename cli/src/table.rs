//! The one table writer of the CLI's text output: columns under headers, two
//! spaces apart, each as wide as its widest cell, the last one unpadded; a
//! column may be right-aligned (numbers). Key/value listings (`show`, `host
//! info`) are two-column tables without headers.

use std::io::Write;

/// A table being filled, printed to stdout at the end.
#[derive(Debug)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table::headless(headers.len()).with_row(headers.iter().map(|h| h.to_string()).collect())
    }

    /// A table of `cols` columns without a header line.
    pub fn headless(cols: usize) -> Table {
        Table {
            rows: Vec::new(),
            right: vec![false; cols],
        }
    }

    /// Right-aligns column `col` (its header too). No table of today's output
    /// uses it: their text stays as it was.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn right(mut self, col: usize) -> Table {
        if let Some(r) = self.right.get_mut(col) {
            *r = true;
        }
        self
    }

    fn with_row(mut self, cells: Vec<String>) -> Table {
        self.row(cells);
        self
    }

    /// Adds a row (one cell per column).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as CSV (RFC 4180): the header line, then one line per row;
    /// a cell with a comma, a quote or a line break is quoted.
    pub fn render_csv(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let cells: Vec<String> = row
                .iter()
                .map(|c| {
                    if c.contains([',', '"', '\n', '\r']) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        c.clone()
                    }
                })
                .collect();
            out.push_str(&cells.join(","));
            out.push_str("\r\n");
        }
        out
    }

    /// The table's text, one line per row, each ending in a newline.
    pub fn render(&self) -> String {
        let cols = self.right.len();
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, String::len))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut text = String::new();
        for r in &self.rows {
            let line: Vec<String> = (0..cols)
                .map(|i| {
                    let cell = r.get(i).map_or("", String::as_str);
                    let w = widths[i];
                    if self.right[i] {
                        format!("{cell:>w$}")
                    } else if i + 1 == cols {
                        cell.to_string()
                    } else {
                        format!("{cell:<w$}")
                    }
                })
                .collect();
            text.push_str(&line.join("  "));
            text.push('\n');
        }
        text
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        let _ = std::io::stdout().lock().write_all(self.render().as_bytes());
    }
}

/// Prints `key  value` lines, the values aligned.
pub fn print_pairs(rows: &[(&str, String)]) {
    let mut t = Table::headless(2);
    for (k, v) in rows {
        t.row(vec![k.to_string(), v.clone()]);
    }
    t.print();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_the_last_is_unpadded() {
        let mut t = Table::new(&["ID", "NAME", "STATUS"]);
        t.row(vec!["100".into(), "a".into(), "running".into()]);
        t.row(vec!["7".into(), "longer".into(), "-".into()]);
        assert_eq!(
            t.render(),
            "ID   NAME    STATUS\n100  a       running\n7    longer  -\n"
        );
    }

    #[test]
    fn a_right_aligned_column_pads_on_the_left() {
        let mut t = Table::new(&["NAME", "COUNT"]).right(1);
        t.row(vec!["a".into(), "12".into()]);
        assert_eq!(t.render(), "NAME  COUNT\na        12\n");
    }

    #[test]
    fn pairs_align_their_values() {
        let mut t = Table::headless(2);
        t.row(vec!["pool".into(), "/p".into()]);
        t.row(vec!["disk limits".into(), "none".into()]);
        assert_eq!(t.render(), "pool         /p\ndisk limits  none\n");
    }
}
