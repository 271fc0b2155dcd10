//! Borderless, left-aligned tables in the style of kubectl and crictl, and `Key: value` detail
//! blocks for single objects.

use comfy_table::{ContentArrangement, Table, presets};

/// Creates a table with the given column headers and no borders.
pub fn new(headers: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.to_vec());
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    table
}

/// Renders a table with trailing blanks removed and a final newline.
pub fn render(table: &Table) -> String {
    let mut text = String::new();
    for line in table.lines() {
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// Renders `Key: value` lines with the values aligned, skipping pairs whose value is empty.
pub fn details(pairs: &[(&str, String)]) -> String {
    let width = pairs
        .iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, _)| key.len() + 1)
        .max()
        .unwrap_or(0);

    let mut text = String::new();
    for (key, value) in pairs {
        if value.is_empty() {
            continue;
        }
        let label = format!("{key}:");
        text.push_str(&format!("{label:width$}  {value}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_borderless_and_aligned() {
        let mut table = new(&["NAME", "SIZE"]);
        table.add_row(vec!["llm-cpu", "1.5 KiB"]);
        table.add_row(vec!["x", "0 B"]);
        assert_eq!(
            render(&table),
            "NAME      SIZE\nllm-cpu   1.5 KiB\nx         0 B\n"
        );
    }

    #[test]
    fn details_align_values_and_skip_empty_ones() {
        let text = details(&[
            ("Name", "llm".to_owned()),
            ("Version", String::new()),
            ("Platform", "x86_64-linux".to_owned()),
        ]);
        assert_eq!(text, "Name:      llm\nPlatform:  x86_64-linux\n");
    }
}
