//! Plain text tables with aligned columns, the way every listing command prints.

/// A table: a header row, a dashed rule under it, then the rows, columns padded to the widest
/// cell. Trailing spaces are trimmed so the output diffs cleanly.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells print empty, extra cells are dropped.
    pub fn push<I, S>(&mut self, row: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut row: Vec<String> = row.into_iter().map(Into::into).collect();
        row.resize(self.headers.len(), String::new());
        // A newline inside a cell would break the alignment of every column after it.
        for cell in &mut row {
            if cell.contains('\n') {
                *cell = cell.replace('\n', " ");
            }
        }
        self.rows.push(row);
    }

    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| width(&r[i]))
                    .chain(std::iter::once(width(&self.headers[i])))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        for row in std::iter::once(&self.headers)
            .chain(std::iter::once(&rule))
            .chain(self.rows.iter())
        {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push(' ');
                }
                line.push_str(cell);
                line.push_str(&" ".repeat(widths[i] - width(cell)));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn width(s: &str) -> usize {
    s.chars().count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell_and_lines_have_no_trailing_spaces() {
        let mut t = Table::new(["Name", "Description", "Labels"]);
        t.push(["example", "", "env=dev"]);
        t.push(["a-much-longer-name", "main db", ""]);
        let expected = "\
Name               Description Labels
------------------ ----------- -------
example                        env=dev
a-much-longer-name main db
";
        assert_eq!(t.render(), expected);
    }

    #[test]
    fn short_rows_are_padded_and_non_ascii_counts_as_one_column_per_char() {
        let mut t = Table::new(["A", "B"]);
        t.push(["é"]);
        t.push(["xy", "z"]);
        assert_eq!(t.render(), "A  B\n-- -\né\nxy z\n");
    }

    #[test]
    fn empty_table_prints_headers_only() {
        let t = Table::new(["Name"]);
        assert_eq!(t.render(), "Name\n----\n");
    }
}
